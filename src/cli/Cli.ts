/**
 * The operations command line, `effect-eventually`: read a stream, show the outbox's lag, peek
 * and requeue dead-lettered messages. It reads the same environment variables as the library
 * (`AZURE_STORAGE_CONNECTION_STRING` or `AZURE_STORAGE_ACCOUNT_URL`, `SERVICEBUS_CONNECTION_STRING`
 * or `SERVICEBUS_NAMESPACE`) and never prints them.
 *
 * {@link main} runs it in process, so an application can add commands of its own, such as
 * {@link rebuildCommand} for its projections.
 *
 * @since 0.1.0
 */
import type { Effect } from "effect"
import { Schema } from "effect"
import type { EventCodec } from "../EventCodec.js"
import type { Projection } from "../Projection.js"
import * as internal from "./internal/commands.js"

/**
 * Where the command line writes: `process.stdout` and `process.stderr` fit, and so does a
 * collecting object in tests.
 *
 * @since 0.1.0
 * @category models
 */
export interface Output {
  readonly write: (text: string) => unknown
  /** When true, progress is redrawn in place rather than printed line by line. */
  readonly isTTY?: boolean
}

/**
 * An option of a command: `--name value`, `--name=value`, or a flag `--name`.
 *
 * @since 0.1.0
 * @category models
 */
export interface OptionSpec {
  readonly name: string
  /** `integer` accepts whole numbers of 0 or more; `flag` takes no value and is false when absent. */
  readonly kind: "string" | "integer" | "flag"
  readonly description: string
  /** Shown in help, e.g. `N` in `--max N`. */
  readonly placeholder?: string
  /** Used when the option is absent. */
  readonly default?: string | number
  readonly required?: boolean
}

/**
 * A positional argument of a command; every one is required.
 *
 * @since 0.1.0
 * @category models
 */
export interface ArgumentSpec {
  readonly name: string
  readonly description: string
}

/**
 * What a command is called and what it takes, from which its help and its parser are made.
 *
 * @since 0.1.0
 * @category models
 */
export interface CommandSpec {
  /** The words that name it: `["stream", "read"]`. */
  readonly path: ReadonlyArray<string>
  /** One line, shown in the list of commands and at the top of its help. */
  readonly summary: string
  /** More help text, shown under the summary. */
  readonly details?: string
  readonly args: ReadonlyArray<ArgumentSpec>
  readonly options: ReadonlyArray<OptionSpec>
}

/**
 * Parsed option values by name: numbers for `integer` options, booleans for flags.
 *
 * @since 0.1.0
 * @category models
 */
export type OptionValues = Readonly<Record<string, string | number | boolean | undefined>>

/**
 * What a command receives when it runs.
 *
 * @since 0.1.0
 * @category models
 */
export interface CommandInput {
  /** The positional arguments, in the order of `spec.args`. */
  readonly args: ReadonlyArray<string>
  readonly options: OptionValues
  readonly stdout: Output
  readonly stderr: Output
}

/**
 * A command: its spec and what it does. Its typed failures are printed with their message and
 * make the process exit with code 1. Configuration (`Config`) is read from the environment given
 * to {@link main}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Command {
  readonly spec: CommandSpec
  readonly run: (input: CommandInput) => Effect.Effect<void, unknown>
}

/**
 * A failure of the command line itself: missing configuration, a malformed entity name, an
 * unreadable file.
 *
 * @since 0.1.0
 * @category errors
 */
export class CliError extends Schema.TaggedError<CliError>("effect-eventually/CliError")("CliError", {
  message: Schema.String
}) {}

/**
 * Options of {@link main}.
 *
 * @since 0.1.0
 * @category models
 */
export interface MainOptions {
  /** `process.stdout` by default. */
  readonly stdout?: Output
  /** `process.stderr` by default. */
  readonly stderr?: Output
  /** The environment configuration is read from; `process.env` by default. */
  readonly env?: Readonly<Record<string, string | undefined>>
  /** Commands added to the built-in ones (for example {@link rebuildCommand}). */
  readonly commands?: ReadonlyArray<Command>
  /** The program name shown in help; `effect-eventually` by default. */
  readonly program?: string
}

/**
 * The built-in commands: `stream read`, `outbox lag`, `dlq peek`, `dlq requeue`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const commands: ReadonlyArray<Command> = internal.builtins

/**
 * Runs the command line on `argv` (without the node and script paths) and returns the exit
 * code: 0 on success or help, 1 when the command failed, 2 when the arguments are wrong.
 *
 * @example
 * ```ts
 * import { Cli } from "effect-eventually/cli"
 *
 * const lines: Array<string> = []
 * const code = await Cli.main(["stream", "read", "booking-42", "--from", "3"], {
 *   stdout: { write: (text) => lines.push(text) },
 *   env: { AZURE_STORAGE_CONNECTION_STRING: "UseDevelopmentStorage=true" }
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const main: (argv: ReadonlyArray<string>, options?: MainOptions) => Promise<number> = internal.main

/**
 * A `projection rebuild <name>` command for one projection of the application: it replays the
 * streams listed in a file (one id per line) from the event store into a new projection table,
 * with `Projector.rebuild`, drawing a progress bar. Pass it to {@link main} in the
 * application's own command line.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { EventCodec, Projection } from "effect-eventually"
 * import { Cli } from "effect-eventually/cli"
 *
 * class RoomBooked extends Schema.TaggedClass<RoomBooked>()("RoomBooked", { roomId: Schema.String }) {}
 * const Bookings = Schema.Struct({ count: Schema.Int })
 *
 * const bookingsPerRoom = Projection.make({
 *   name: "bookings-per-room",
 *   initialState: { count: 0 },
 *   evolve: (state: typeof Bookings.Type, _event: RoomBooked) => ({ count: state.count + 1 }),
 *   documentId: (event: RoomBooked) => event.roomId,
 *   state: Bookings
 * })
 *
 * // effect-eventually-app projection rebuild bookings-per-room --streams streams.txt --target-table bookingsV2
 * process.exitCode = await Cli.main(process.argv.slice(2), {
 *   program: "effect-eventually-app",
 *   commands: [Cli.rebuildCommand(bookingsPerRoom, EventCodec.make(RoomBooked))]
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const rebuildCommand: <Event extends { readonly _tag: string }, State>(
  projection: Projection<Event, State>,
  codec: EventCodec<Event>
) => Command = internal.rebuildCommand

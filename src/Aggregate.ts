/**
 * Command handling for event-sourced streams: an `Aggregate` ties a pure `Decider` to the codecs
 * that store its events (and, optionally, snapshots of its state), and `handle` runs one command
 * against one stream of an `EventStore`: load, decide, and append the decision atomically with
 * optimistic concurrency, retrying on conflict.
 *
 * @since 0.1.0
 */
import type { Effect, Schedule, Schema } from "effect"
import type { Decider } from "./Decider.js"
import type { EventCodec, SnapshotCodec } from "./EventCodec.js"
import type { AppendError, EventStore, ReadError, RecordedEvent } from "./EventStore.js"
import type { ConcurrencyConflict } from "./EventStoreError.js"
import * as internal from "./internal/aggregate.js"

/**
 * When to store a snapshot of the state, and how to encode it.
 *
 * @since 0.1.0
 * @category models
 */
export interface SnapshotPolicy<in out State> {
  readonly codec: SnapshotCodec<State>
  /** A snapshot is stored with the first append that leaves this many events or more after the last one. */
  readonly every: number
}

/**
 * An aggregate definition: a decider and how its events and state are stored.
 *
 * @since 0.1.0
 * @category models
 */
export interface Aggregate<
  in out Command extends { readonly _tag: string },
  in out Event extends { readonly _tag: string },
  in out State,
  out Err
> {
  readonly decider: Decider<Command, Event, State, Err>
  readonly events: EventCodec<Event>
  readonly snapshot: SnapshotPolicy<State> | undefined
  /** The id of a command, when it carries one: its events then get deterministic ids. */
  readonly commandId: ((command: Command) => string | undefined) | undefined
}

/**
 * Options of {@link make}.
 *
 * @since 0.1.0
 * @category models
 */
export interface MakeOptions<
  Command extends { readonly _tag: string },
  Event extends { readonly _tag: string },
  State,
  Err,
  StateEncoded
> {
  readonly decider: Decider<Command, Event, State, Err>
  readonly events: EventCodec<Event>
  /** Store a snapshot of the state every `every` events, in the same atomic append as the events. */
  readonly snapshot?: {
    readonly schema: Schema.Schema<State, StateEncoded>
    /** Change it whenever the state's schema changes: snapshots of other versions are ignored. */
    readonly schemaVersion: number
    readonly every: number
  }
  /**
   * Reads the id a command carries (a command id or idempotency key). Its events then get the
   * ids `${commandId}:0`, `${commandId}:1`, ... so that a retried command produces the same
   * event ids and downstream duplicate detection can drop them. `HandleOptions.commandId` wins.
   */
  readonly commandId?: (command: Command) => string | undefined
}

/**
 * Defines an aggregate.
 *
 * @example
 * ```ts
 * import { Either, Schema } from "effect"
 * import { Aggregate, Decider, EventCodec } from "effect-eventually"
 *
 * class Deposit extends Schema.TaggedClass<Deposit>()("Deposit", { amount: Schema.Int }) {}
 * class Deposited extends Schema.TaggedClass<Deposited>()("Deposited", { amount: Schema.Int }) {}
 *
 * const account = Aggregate.make({
 *   decider: Decider.make({
 *     initialState: 0,
 *     evolve: (balance: number, event: Deposited) => balance + event.amount,
 *     decide: (command: Deposit, _balance: number) =>
 *       command.amount > 0 ? Either.right([new Deposited({ amount: command.amount })]) : Either.left("not positive")
 *   }),
 *   events: EventCodec.make(Deposited),
 *   snapshot: { schema: Schema.Int, schemaVersion: 1, every: 100 }
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: <
  Command extends { readonly _tag: string },
  Event extends { readonly _tag: string },
  State,
  Err,
  StateEncoded = State
>(
  options: MakeOptions<Command, Event, State, Err, StateEncoded>
) => Aggregate<Command, Event, State, Err> = internal.make

/**
 * Options of {@link handle}.
 *
 * @since 0.1.0
 * @category models
 */
export interface HandleOptions {
  /** The command's id: events get the deterministic ids `${commandId}:${index}`, and it is their causation id by default. */
  readonly commandId?: string
  /** Stored in every event's metadata. */
  readonly correlationId?: string
  /** Stored in every event's metadata; the command id by default. */
  readonly causationId?: string
  /** Stored in every event's metadata. */
  readonly properties?: Readonly<Record<string, string>>
  /** How to retry after a `ConcurrencyConflict`: reload, decide again, append again. {@link defaultConflictRetry} by default. */
  readonly retry?: Schedule.Schedule<unknown, ConcurrencyConflict>
}

/**
 * What {@link handle} returns.
 *
 * @since 0.1.0
 * @category models
 */
export interface HandleResult<Event, State> {
  readonly streamId: string
  /** The stream's version after the command (unchanged when it produced no events). */
  readonly version: number
  /** The events the command produced, in order; empty when it changed nothing. */
  readonly events: ReadonlyArray<Event>
  /** The same events as stored, with their ids, versions and metadata. */
  readonly recorded: ReadonlyArray<RecordedEvent>
  /** The state after the command. */
  readonly state: State
}

/**
 * What {@link load} returns.
 *
 * @since 0.1.0
 * @category models
 */
export interface LoadResult<State> {
  readonly streamId: string
  /** The stream's version: 0 when it does not exist yet. */
  readonly version: number
  readonly state: State
}

/**
 * The failures of {@link handle} besides the decider's own errors: store failures, an event
 * that cannot be decoded, and a `ConcurrencyConflict` that outlasted the retry schedule.
 *
 * @since 0.1.0
 * @category errors
 */
export type HandleError = ReadError | AppendError

/**
 * Retries after a conflict a few times (8), with jittered exponential backoff from 10 ms,
 * capped at 200 ms: enough for a handful of concurrent writers on one stream. Streams with
 * more contention deserve a longer schedule, or a design that splits them.
 *
 * @since 0.1.0
 * @category constructors
 */
export const defaultConflictRetry: Schedule.Schedule<unknown, unknown> = internal.defaultConflictRetry

/**
 * Loads a stream's state: its snapshot (when the aggregate has a snapshot policy and one with
 * the right schema version exists), then the events after it, decoded and folded. A snapshot
 * that cannot be decoded is logged and ignored, and the whole stream is replayed instead.
 *
 * @since 0.1.0
 * @category constructors
 */
export const load: <
  Command extends { readonly _tag: string },
  Event extends { readonly _tag: string },
  State,
  Err
>(
  aggregate: Aggregate<Command, Event, State, Err>,
  streamId: string
) => Effect.Effect<LoadResult<State>, ReadError, EventStore> = internal.load

/**
 * Handles one command on one stream: loads the state, decides, and appends the events with the
 * version it loaded as the expected version, with a snapshot when one is due, in one atomic
 * write. On `ConcurrencyConflict` it reloads and decides again under `options.retry`. A domain
 * error fails the effect as it is and writes nothing; so does a command that produces no events
 * (it succeeds with no events).
 *
 * Event metadata: the timestamp comes from the `Clock` (so `TestClock` drives it), the
 * correlation and causation ids and properties from the options.
 *
 * @example
 * ```ts
 * import { Effect, Either, Schema } from "effect"
 * import { Aggregate, Decider, EventCodec, EventStore } from "effect-eventually"
 *
 * class Deposit extends Schema.TaggedClass<Deposit>()("Deposit", { amount: Schema.Int }) {}
 * class Deposited extends Schema.TaggedClass<Deposited>()("Deposited", { amount: Schema.Int }) {}
 *
 * const account = Aggregate.make({
 *   decider: Decider.make({
 *     initialState: 0,
 *     evolve: (balance: number, event: Deposited) => balance + event.amount,
 *     decide: (command: Deposit, _balance: number) => Either.right([new Deposited({ amount: command.amount })])
 *   }),
 *   events: EventCodec.make(Deposited)
 * })
 *
 * const program = Aggregate.handle(account, "account-1", new Deposit({ amount: 10 }), { commandId: "cmd-1" }).pipe(
 *   Effect.tap(({ state, version }) => Effect.log(`balance ${state} at version ${version}`)),
 *   Effect.provide(EventStore.layerMemory)
 * )
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const handle: <
  Command extends { readonly _tag: string },
  Event extends { readonly _tag: string },
  State,
  Err
>(
  aggregate: Aggregate<Command, Event, State, Err>,
  streamId: string,
  command: Command,
  options?: HandleOptions
) => Effect.Effect<HandleResult<Event, State>, Err | HandleError, EventStore> = internal.handle

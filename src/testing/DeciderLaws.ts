/**
 * Property-based laws every decider should obey, checked with `FastCheck` over arbitraries
 * derived from the command and event schemas:
 *
 * - `decide` never throws, returns an `Either`, and is deterministic (the same command in the
 *   same state gives the same decision: no clock, no randomness);
 * - the events it accepts fold with `evolve` without throwing;
 * - `evolve` never throws on any history, even one today's rules would not produce (old
 *   streams), and `decide` never throws on the states it leads to;
 * - a user-given invariant holds after every accepted command of generated command sequences
 *   (refused commands are skipped);
 * - every event round-trips through the event codec: encode, JSON, decode gives an equal event.
 *
 * @since 0.1.0
 */
import type { Schema } from "effect"
import { Arbitrary, Either, FastCheck } from "effect"
import * as Decider from "../Decider.js"
import type { EncodeOptions } from "../EventCodec.js"
import type { EventData, RecordedEvent } from "../EventStore.js"
import type { DecodeError } from "../EventStoreError.js"
import * as Structural from "../internal/structural.js"

/**
 * Where values come from: a schema (its arbitrary is derived with `Arbitrary.make`) or an
 * arbitrary.
 *
 * @since 0.1.0
 * @category testing
 */
export type Source<A, I> = Schema.Schema<A, I> | FastCheck.Arbitrary<A>

/**
 * The part of an `EventCodec` the round-trip law uses.
 *
 * @since 0.1.0
 * @category testing
 */
export interface RoundTripCodec<Event> {
  readonly encode: (event: Event, options: EncodeOptions) => EventData
  readonly decodeEither: (recorded: RecordedEvent) => Either.Either<Event, DecodeError>
}

/**
 * FastCheck run parameters.
 *
 * @since 0.1.0
 * @category testing
 */
export interface Parameters {
  /** Runs per law; 100 by default. */
  readonly numRuns?: number
  /** Replays a failing run, with `path`. */
  readonly seed?: number
  readonly path?: string
  readonly verbose?: boolean
}

/**
 * What the laws check.
 *
 * @since 0.1.0
 * @category testing
 */
export interface Options<Command, Event, State, Err, CommandEncoded, EventEncoded> {
  readonly decider: Decider.Decider<Command, Event, State, Err>
  /** The commands to generate. */
  readonly commands: Source<Command, CommandEncoded>
  /** The events to generate; without them, `evolve` and the codec are not checked on arbitrary events. */
  readonly events?: Source<Event, EventEncoded>
  /** Checked after every accepted command: true when `state`, reached from `previous`, is valid. */
  readonly invariant?: (state: State, previous: State) => boolean
  /** When given (with `events`), every generated event must round-trip through it. */
  readonly codec?: RoundTripCodec<Event>
  /** The longest generated command sequence; 30 by default. */
  readonly maxCommands?: number
  /** The longest generated history; 30 by default. */
  readonly maxEvents?: number
  readonly parameters?: Parameters
}

/**
 * One law, ready to run.
 *
 * @since 0.1.0
 * @category testing
 */
export interface Law {
  readonly name: string
  /** Runs the law with `FastCheck.assert`; throws with a counterexample when it does not hold. */
  readonly check: (parameters?: Parameters) => void
}

/**
 * Thrown when a law does not hold. The message names the law and carries FastCheck's report:
 * the counterexample, shrunk, and the seed and path that replay it.
 *
 * @since 0.1.0
 * @category errors
 */
export class DeciderLawViolation extends Error {
  override readonly name = "DeciderLawViolation"
  constructor(
    /** The name of the law that does not hold. */
    readonly law: string,
    report: string,
    options?: ErrorOptions
  ) {
    super(`The decider law "${law}" does not hold.\n${report}`, options)
  }
}

const toArbitrary = <A, I>(source: Source<A, I>): FastCheck.Arbitrary<A> =>
  source instanceof FastCheck.Arbitrary ? source : Arbitrary.make(source)

const thrown = (cause: unknown): string =>
  cause instanceof Error ? `${cause.name}: ${cause.message}` : Structural.show(cause)

// Thrown inside a property; FastCheck reports its message with the counterexample.
const violation = (message: string, details: Record<string, unknown>): Error =>
  new Error(
    `${message}\n${
      Object.entries(details).map(([key, value]) =>
        Array.isArray(value) ? `${key}:\n${Structural.list(value)}` : `${key}: ${Structural.show(value)}`
      ).join("\n")
    }`
  )

const fastCheckParameters = <Ts>(parameters: Parameters | undefined): FastCheck.Parameters<Ts> => ({
  ...(parameters?.numRuns === undefined ? {} : { numRuns: parameters.numRuns }),
  ...(parameters?.seed === undefined ? {} : { seed: parameters.seed }),
  ...(parameters?.path === undefined ? {} : { path: parameters.path }),
  ...(parameters?.verbose === undefined ? {} : { verbose: parameters.verbose })
})

/**
 * The laws that apply to these options, to run one by one or to register as tests.
 *
 * @since 0.1.0
 * @category testing
 */
export const laws = <Command, Event, State, Err, CommandEncoded, EventEncoded>(
  options: Options<Command, Event, State, Err, CommandEncoded, EventEncoded>
): ReadonlyArray<Law> => {
  const { decider } = options
  const commands = FastCheck.array(toArbitrary(options.commands), { maxLength: options.maxCommands ?? 30 })
  const command = toArbitrary(options.commands)
  const event = options.events === undefined ? undefined : toArbitrary(options.events)
  if (options.codec !== undefined && event === undefined) {
    throw new TypeError("DeciderLaws: the codec round-trip law needs `events` to generate events from")
  }

  const decide = (command: Command, state: State, context: Record<string, unknown>) => {
    let decision: unknown
    try {
      decision = decider.decide(command, state)
    } catch (cause) {
      throw violation(`decide threw ${thrown(cause)}`, { ...context, command, state })
    }
    if (!Either.isEither(decision)) {
      throw violation("decide did not return an Either", { ...context, command, state, returned: decision })
    }
    return decision as Either.Either<ReadonlyArray<Event>, Err>
  }

  const fold = (events: ReadonlyArray<Event>, state: State, context: Record<string, unknown>): State => {
    try {
      return Decider.fold(decider, events, state)
    } catch (cause) {
      throw violation(`evolve threw ${thrown(cause)}`, { ...context, state, events })
    }
  }

  // Runs a command sequence from the initial state, skipping refused commands.
  const replay = (
    sequence: ReadonlyArray<Command>,
    onStep: (
      step: {
        readonly index: number
        readonly command: Command
        readonly previous: State
        readonly state: State
        readonly events: ReadonlyArray<Event>
      }
    ) => void
  ): void => {
    let state = decider.initialState
    sequence.forEach((command, index) => {
      const decision = decide(command, state, { step: index })
      if (Either.isLeft(decision)) return
      const next = fold(decision.right, state, { step: index, command, decided: decision.right })
      onStep({ index, command, previous: state, state: next, events: decision.right })
      state = next
    })
  }

  const make = <Ts>(name: string, property: FastCheck.IRawProperty<Ts>): Law => ({
    name,
    check: (parameters) => {
      try {
        FastCheck.assert(property, fastCheckParameters({ ...options.parameters, ...parameters }))
      } catch (error) {
        throw new DeciderLawViolation(name, error instanceof Error ? error.message : String(error), { cause: error })
      }
    }
  })

  const result: Array<Law> = [
    make(
      "decide never throws, is deterministic, and its events fold",
      FastCheck.property(commands, (sequence) => {
        let state = decider.initialState
        sequence.forEach((command, index) => {
          const decision = decide(command, state, { step: index })
          const again = decide(command, state, { step: index })
          if (!Structural.equals(decision, again)) {
            throw violation("decide is not deterministic: the same command in the same state decided twice differs", {
              step: index,
              command,
              state,
              first: Either.isRight(decision) ? decision.right : { error: decision.left },
              second: Either.isRight(again) ? again.right : { error: again.left }
            })
          }
          if (Either.isRight(decision)) {
            state = fold(decision.right, state, { step: index, command, decided: decision.right })
          }
        })
      })
    )
  ]

  if (event !== undefined) {
    result.push(make(
      "evolve and decide never throw, on any history",
      FastCheck.property(
        FastCheck.array(event, { maxLength: options.maxEvents ?? 30 }),
        command,
        (history, command) => {
          const state = fold(history, decider.initialState, { history })
          decide(command, state, { history })
        }
      )
    ))
  }

  const invariant = options.invariant
  if (invariant !== undefined) {
    result.push(make(
      "the invariant holds after every accepted command",
      FastCheck.property(commands, (sequence) => {
        replay(sequence, ({ command, events, index, previous, state }) => {
          let holds: boolean
          try {
            holds = invariant(state, previous)
          } catch (cause) {
            throw violation(`the invariant threw ${thrown(cause)}`, { step: index, previous, command, events, state })
          }
          if (holds !== true) {
            throw violation("the invariant does not hold", {
              step: index,
              commands: sequence.slice(0, index + 1),
              previous,
              command,
              events,
              state
            })
          }
        })
      })
    ))
  }

  const codec = options.codec
  if (codec !== undefined && event !== undefined) {
    result.push(make(
      "events round-trip through the codec",
      FastCheck.property(event, (event) => {
        const data = codec.encode(event, {
          eventId: "law-event",
          metadata: { timestamp: new Date(0).toISOString() }
        })
        // Through JSON, as every store keeps it.
        const stored = JSON.parse(JSON.stringify({ ...data, streamId: "law-stream", version: 1 })) as RecordedEvent
        const decoded = codec.decodeEither(stored)
        if (Either.isLeft(decoded)) {
          throw violation(`the encoded event does not decode: ${decoded.left.reason}`, { event, stored })
        }
        if (!Structural.equals(decoded.right, event)) {
          throw violation("the decoded event differs", { event, stored, decoded: decoded.right })
        }
      })
    ))
  }

  return result
}

/**
 * Checks every law that applies, throwing at the first one that does not hold (with FastCheck's
 * counterexample and seed).
 *
 * @example
 * ```ts
 * import { Either, Schema } from "effect"
 * import { Decider } from "effect-eventually"
 * import { DeciderLaws } from "effect-eventually/testing"
 *
 * class Add extends Schema.TaggedClass<Add>()("Add", { n: Schema.Int.pipe(Schema.between(0, 10)) }) {}
 * class Added extends Schema.TaggedClass<Added>()("Added", { n: Schema.Int }) {}
 *
 * const capped = Decider.make({
 *   initialState: 0,
 *   evolve: (total: number, event: Added) => total + event.n,
 *   decide: (command: Add, total: number) =>
 *     total + command.n > 100 ? Either.left("over 100") : Either.right([new Added({ n: command.n })])
 * })
 *
 * DeciderLaws.check({ decider: capped, commands: Add, events: Added, invariant: (total) => total <= 100 })
 * ```
 *
 * @since 0.1.0
 * @category testing
 */
export const check = <Command, Event, State, Err, CommandEncoded, EventEncoded>(
  options: Options<Command, Event, State, Err, CommandEncoded, EventEncoded>
): void => {
  for (const law of laws(options)) law.check()
}

/**
 * Registers each law as a test with the runner's `it` / `test` function (Vitest, Jest,
 * `node:test`, ...), so each is reported on its own.
 *
 * @example
 * ```ts
 * import { describe, it } from "@effect/vitest"
 * import { Either, Schema } from "effect"
 * import { Decider } from "effect-eventually"
 * import { DeciderLaws } from "effect-eventually/testing"
 *
 * class Add extends Schema.TaggedClass<Add>()("Add", { n: Schema.Int }) {}
 * class Added extends Schema.TaggedClass<Added>()("Added", { n: Schema.Int }) {}
 *
 * const adder = Decider.make({
 *   initialState: 0,
 *   evolve: (total: number, event: Added) => total + event.n,
 *   decide: (command: Add, _total: number) => Either.right([new Added({ n: command.n })])
 * })
 *
 * describe("adder laws", () => {
 *   DeciderLaws.register(it, { decider: adder, commands: Add, events: Added })
 * })
 * ```
 *
 * @since 0.1.0
 * @category testing
 */
export const register = <Command, Event, State, Err, CommandEncoded, EventEncoded>(
  test: (name: string, body: () => void) => unknown,
  options: Options<Command, Event, State, Err, CommandEncoded, EventEncoded>
): void => {
  for (const law of laws(options)) test(law.name, () => law.check())
}

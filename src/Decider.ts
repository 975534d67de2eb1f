/**
 * A decider is the pure heart of an event-sourced aggregate: `decide` turns a command and the
 * current state into the events that record the decision (or a domain error), and `evolve` folds
 * one event into the state. Neither reads a clock, generates ids nor calls a service: what a
 * decision needs comes in with the command, so the same history and command always give the
 * same decision, in production, in a test, and in a replay.
 *
 * @since 0.1.0
 */
import { Either } from "effect"

/**
 * The three parts of a decider.
 *
 * @example
 * ```ts
 * import { Either, Schema } from "effect"
 * import { Decider } from "effect-eventually"
 *
 * class Increment extends Schema.TaggedClass<Increment>()("Increment", { by: Schema.Int }) {}
 * class Incremented extends Schema.TaggedClass<Incremented>()("Incremented", { by: Schema.Int }) {}
 *
 * const counter: Decider.Decider<Increment, Incremented, number, string> = {
 *   initialState: 0,
 *   evolve: (state, event) => state + event.by,
 *   decide: (command, state) =>
 *     state + command.by > 10 ? Either.left("too much") : Either.right([new Incremented({ by: command.by })])
 * }
 * ```
 *
 * @since 0.1.0
 * @category models
 */
export interface Decider<in Command, in out Event, in out State, out Err = never> {
  /** The state of a stream with no events. */
  readonly initialState: State
  /** Applies one event. Must be total: it also runs on old histories that today's rules would not produce. */
  readonly evolve: (state: State, event: Event) => State
  /** Decides which events a command produces in a state, or why it is refused. An empty array changes nothing. */
  readonly decide: (command: Command, state: State) => Either.Either<ReadonlyArray<Event>, Err>
}

/**
 * Type-level helpers to extract the parameters of a decider.
 *
 * @since 0.1.0
 * @category models
 */
export declare namespace Decider {
  /**
   * @since 0.1.0
   * @category models
   */
  export type Command<D> = D extends Decider<infer C, infer _E, infer _S, infer _Err> ? C : never
  /**
   * @since 0.1.0
   * @category models
   */
  export type Event<D> = D extends Decider<infer _C, infer E, infer _S, infer _Err> ? E : never
  /**
   * @since 0.1.0
   * @category models
   */
  export type State<D> = D extends Decider<infer _C, infer _E, infer S, infer _Err> ? S : never
  /**
   * @since 0.1.0
   * @category models
   */
  export type Error<D> = D extends Decider<infer _C, infer _E, infer _S, infer Err> ? Err : never
}

/**
 * Defines a decider. It returns its argument: it exists so that the types of `initialState`,
 * `evolve` and `decide` are checked against each other and inferred once.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { Decider } from "effect-eventually"
 *
 * class Add extends Schema.TaggedClass<Add>()("Add", { item: Schema.String }) {}
 * class Added extends Schema.TaggedClass<Added>()("Added", { item: Schema.String }) {}
 *
 * export const cart = Decider.make({
 *   initialState: [] as ReadonlyArray<string>,
 *   evolve: (items: ReadonlyArray<string>, event: Added) => [...items, event.item],
 *   decide: (command: Add, items: ReadonlyArray<string>) =>
 *     items.includes(command.item)
 *       ? Decider.accept()
 *       : items.length >= 3
 *       ? Decider.reject("cart full")
 *       : Decider.accept(new Added({ item: command.item }))
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <Command, Event, State, Err = never>(
  decider: Decider<Command, Event, State, Err>
): Decider<Command, Event, State, Err> => decider

/**
 * A decision that records these events (none: the command changes nothing).
 *
 * @since 0.1.0
 * @category constructors
 */
export const accept = <Event = never>(...events: ReadonlyArray<Event>): Either.Either<ReadonlyArray<Event>, never> =>
  Either.right(events)

/**
 * A decision that refuses the command with a domain error.
 *
 * @since 0.1.0
 * @category constructors
 */
export const reject = <Err>(error: Err): Either.Either<never, Err> => Either.left(error)

/**
 * Folds events into a state, starting from `state` (the decider's initial state by default).
 *
 * @since 0.1.0
 * @category constructors
 */
export const fold = <Command, Event, State, Err>(
  decider: Decider<Command, Event, State, Err>,
  events: Iterable<NoInfer<Event>>,
  state: NoInfer<State> = decider.initialState
): State => {
  const evolve = decider.evolve
  // An indexed loop over arrays: folding long histories is the hot path of every load.
  if (Array.isArray(events)) {
    const array: ReadonlyArray<Event> = events
    for (let i = 0; i < array.length; i++) state = evolve(state, array[i])
    return state
  }
  for (const event of events) state = evolve(state, event)
  return state
}

/**
 * Folds a history, then decides: the events a command produces after these events.
 *
 * @since 0.1.0
 * @category constructors
 */
export const decideFrom = <Command, Event, State, Err>(
  decider: Decider<Command, Event, State, Err>,
  history: Iterable<NoInfer<Event>>,
  command: NoInfer<Command>
): Either.Either<ReadonlyArray<Event>, Err> => decider.decide(command, fold(decider, history))

/**
 * The outcome of running a command against a state.
 *
 * @since 0.1.0
 * @category models
 */
export interface Decision<Event, State> {
  /** The events the command produced. */
  readonly events: ReadonlyArray<Event>
  /** The state after those events. */
  readonly state: State
}

/**
 * Runs a command purely from a history: folds the history, decides, and folds the new events
 * into the resulting state.
 *
 * @example
 * ```ts
 * import { Either } from "effect"
 * import { Decider } from "effect-eventually"
 *
 * const toggle = Decider.make({
 *   initialState: false,
 *   evolve: (_on: boolean, event: "on" | "off") => event === "on",
 *   decide: (_command: "flip", on: boolean) => Decider.accept(on ? "off" as const : "on" as const)
 * })
 *
 * const result = Decider.run(toggle, ["on"], "flip")
 * // Either.right({ events: ["off"], state: false })
 * console.log(Either.isRight(result))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const run = <Command, Event, State, Err>(
  decider: Decider<Command, Event, State, Err>,
  history: Iterable<NoInfer<Event>>,
  command: NoInfer<Command>
): Either.Either<Decision<Event, State>, Err> => runFrom(decider, fold(decider, history), command)

/**
 * Runs a command against a state already folded: decides, and folds the new events into it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const runFrom = <Command, Event, State, Err>(
  decider: Decider<Command, Event, State, Err>,
  state: NoInfer<State>,
  command: NoInfer<Command>
): Either.Either<Decision<Event, State>, Err> =>
  Either.map(decider.decide(command, state), (events) => ({ events, state: fold(decider, events, state) }))

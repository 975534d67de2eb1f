/**
 * Given / when / then specifications for deciders: given a history of events, when a command is
 * decided, then these events are produced (or the command fails, or nothing happens). A failing
 * specification throws an assertion error that shows the history, the command, and the expected
 * and actual outcomes, and carries `expected` / `actual` so that test runners can diff them.
 * It works in any test runner.
 *
 * @since 0.1.0
 */
import { Either } from "effect"
import * as Decider from "../Decider.js"
import * as Structural from "../internal/structural.js"

/**
 * Thrown when a specification does not hold.
 *
 * @since 0.1.0
 * @category errors
 */
export class DeciderSpecError extends Error {
  /** Test runners and assertion libraries recognise this name. */
  override readonly name = "AssertionError"
  /** Asks runners that support it (Vitest, Mocha) to show a diff of `expected` and `actual`. */
  readonly showDiff = true
  constructor(
    message: string,
    /** The actual outcome, as plain JSON-like data. */
    readonly actual: unknown,
    /** The expected outcome, as plain JSON-like data. */
    readonly expected: unknown
  ) {
    super(message)
  }
}

/**
 * The last step of a specification: what the decision should be.
 *
 * @since 0.1.0
 * @category testing
 */
export interface When<Event, Err> {
  /** The command produces exactly these events (compared structurally), and they fold without throwing. */
  readonly then: (expected: ReadonlyArray<Event>) => void
  /**
   * The command is refused: with any error when called without an argument, with an error
   * structurally equal to `expected`, or with one for which the predicate returns true.
   */
  readonly thenFails: (expected?: Err | ((error: Err) => boolean)) => void
  /** The command is accepted and produces no events. */
  readonly thenNothing: () => void
}

/**
 * A specification with its history: choose the command.
 *
 * @since 0.1.0
 * @category testing
 */
export interface Given<Command, Event, Err> {
  readonly when: (command: Command) => When<Event, Err>
}

/**
 * A specification of one decider: choose the history.
 *
 * @since 0.1.0
 * @category testing
 */
export interface DeciderSpecification<Command, Event, Err> {
  /** The events already in the stream, oldest first; none by default. */
  readonly given: (events?: ReadonlyArray<Event>) => Given<Command, Event, Err>
}

const describe = Structural.show
const list = (values: ReadonlyArray<unknown>): string => Structural.list(values)

const errorText = (error: unknown): string => {
  const message = error instanceof Error ? `: ${error.message}` : ""
  return `${describe(error)}${message}`
}

const make = <Command, Event, State, Err>(
  decider: Decider.Decider<Command, Event, State, Err>
): DeciderSpecification<Command, Event, Err> => ({
  given: (history = []) => ({
    when: (command) => {
      const context = `Given:\n${list(history)}\nWhen:\n  ${describe(command)}`
      const fail = (problem: string, details: string, actual: unknown, expected: unknown): never => {
        throw new DeciderSpecError(
          `Decider specification failed: ${problem}\n${context}\n${details}`,
          Structural.toPlain(actual),
          Structural.toPlain(expected)
        )
      }
      // Runs lazily, at the assertion, so a throwing decider is reported as a failed specification.
      const decideOnce = (): Either.Either<ReadonlyArray<Event>, Err> => {
        let state: State
        try {
          state = Decider.fold(decider, history)
        } catch (cause) {
          return fail("evolve threw while folding the history.", `Thrown:\n  ${errorText(cause)}`, cause, history)
        }
        try {
          return decider.decide(command, state)
        } catch (cause) {
          return fail("decide threw.", `Thrown:\n  ${errorText(cause)}`, cause, undefined)
        }
      }
      const accepted = (expected: ReadonlyArray<Event>, events: ReadonlyArray<Event>): void => {
        if (!Structural.equals(events, expected)) {
          fail(
            "the command produced other events.",
            `Expected events:\n${list(expected)}\nActual events:\n${list(events)}`,
            events,
            expected
          )
        }
        try {
          Decider.fold(decider, events, Decider.fold(decider, history))
        } catch (cause) {
          fail("evolve threw on the events the command produced.", `Thrown:\n  ${errorText(cause)}`, cause, undefined)
        }
      }
      return {
        then: (expected) => {
          if (!Array.isArray(expected)) {
            // An object with a `then` method is a thenable: awaiting a specification that was
            // never finished calls it with a function.
            throw new TypeError(
              "DeciderSpec: then() takes the expected events; did you forget to finish a specification with then, thenFails or thenNothing?"
            )
          }
          const decision = decideOnce()
          if (Either.isLeft(decision)) {
            fail(
              "the command was refused.",
              `Expected events:\n${list(expected)}\nActual: refused with\n  ${errorText(decision.left)}`,
              { error: decision.left },
              expected
            )
          } else {
            accepted(expected, decision.right)
          }
        },
        thenNothing: () => {
          const decision = decideOnce()
          if (Either.isLeft(decision)) {
            fail(
              "the command was refused.",
              `Expected: no events\nActual: refused with\n  ${errorText(decision.left)}`,
              { error: decision.left },
              []
            )
          } else {
            accepted([], decision.right)
          }
        },
        thenFails: (...args: ReadonlyArray<Err | ((error: Err) => boolean) | undefined>) => {
          const decision = decideOnce()
          const wanted = args.length === 0
            ? "any error"
            : typeof args[0] === "function"
            ? "an error matching the predicate"
            : errorText(args[0])
          if (Either.isRight(decision)) {
            fail(
              "the command was accepted.",
              `Expected: refused with ${wanted}\nActual events:\n${list(decision.right)}`,
              decision.right,
              args.length === 0 || typeof args[0] === "function" ? { error: wanted } : { error: args[0] }
            )
            return
          }
          const error = decision.left
          if (args.length === 0) return
          const expected = args[0]
          const matches = typeof expected === "function"
            ? (expected as (error: Err) => boolean)(error)
            : Structural.equals(error, expected)
          if (!matches) {
            fail(
              "the command was refused with another error.",
              `Expected: refused with ${wanted}\nActual: refused with\n  ${errorText(error)}`,
              { error },
              typeof expected === "function" ? { error: wanted } : { error: expected }
            )
          }
        }
      }
    }
  })
})

export {
  /**
   * Starts a specification of a decider.
   *
   * @example
   * ```ts
   * import { Either } from "effect"
   * import { Decider } from "effect-eventually"
   * import { DeciderSpec } from "effect-eventually/testing"
   *
   * const counter = Decider.make({
   *   initialState: 0,
   *   evolve: (count: number, event: "added") => event === "added" ? count + 1 : count,
   *   decide: (_command: "add", count: number) => count < 2 ? Either.right(["added" as const]) : Either.left("full")
   * })
   *
   * const spec = DeciderSpec.for(counter)
   * spec.given([]).when("add").then(["added"])
   * spec.given(["added", "added"]).when("add").thenFails("full")
   * ```
   *
   * @since 0.1.0
   * @category testing
   */
  make as for
}

// Retries only transient failures under a schedule that sees only transient failures: a
// permanent failure leaves at once, so a schedule inspecting its input (longer pauses for
// `ServerBusy`, say) is never fed an error it was not written for. The happy path is the effect
// alone: the schedule's driver is made only after a first transient failure, since sends and
// settlements are frequent and almost always succeed.
import { Effect, Schedule } from "effect"
import type { TransientError } from "../ServiceBusError.js"
import { isTransient } from "../ServiceBusError.js"

export const retryTransient = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  schedule: Schedule.Schedule<unknown, TransientError>
): Effect.Effect<A, E, R> => {
  const transient = (error: E): boolean => isTransient(error)
  return Effect.catchIf(effect, transient, (first) =>
    Effect.flatMap(Schedule.driver(schedule), (driver) => {
      const retry = (error: E): Effect.Effect<A, E, R> =>
        driver.next(error as E & TransientError).pipe(
          Effect.matchEffect({
            // The schedule is done: the last failure stands.
            onFailure: () => Effect.fail(error),
            onSuccess: () => Effect.catchIf(effect, transient, retry)
          })
        )
      return retry(first)
    }))
}

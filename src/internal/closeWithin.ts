// Closing within a time limit, from anywhere: finalizers run uninterruptibly, so a plain
// `Effect.timeout` there waits for the effect it gives up on (the loser of the race is
// interrupted and awaited), and so does `Effect.disconnect` (its join is restored to the
// finalizer's uninterruptible region). Here the close runs on a fiber of its own and only the
// wait for it is interruptible: when the time is up the wait ends, and the close is interrupted
// in the background.
import type { Duration } from "effect"
import { Effect, Fiber } from "effect"

export const closeWithin = <A, E>(
  close: Effect.Effect<A, E>,
  limit: Duration.DurationInput,
  what: string
): Effect.Effect<void> =>
  Effect.flatMap(
    Effect.forkDaemon(Effect.interruptible(close)),
    (fiber) =>
      Effect.interruptible(Fiber.join(fiber)).pipe(
        Effect.timeout(limit),
        Effect.catchAllCause((cause) =>
          Effect.zipRight(
            Effect.logDebug(`${what} did not close cleanly in time`, cause),
            Fiber.interruptFork(fiber)
          )
        ),
        Effect.asVoid
      )
  )

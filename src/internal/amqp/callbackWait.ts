/**
 * Waiting for an AMQP answer as callbacks: one `Effect.async` that registers rhea listeners, a
 * timer and (optionally) a connection-lost listener, and resumes once. Wrapping the same wait in
 * `Effect.timeoutFail` and `Effect.raceFirst` forks several fibers per operation, which costs more
 * CPU than the AMQP work itself when many small operations run at once.
 */
import { Clock, Duration, Effect, Either } from "effect"

/**
 * Starts an operation: writes what it needs, listens for the answer and calls `finish` once.
 * Returns a function that stops listening (called once the wait ends, whatever ends it).
 */
export type Start<A, E> = (finish: (result: Either.Either<A, E>) => void) => () => void

/** Registers a listener for the loss of the connection; returns a function that removes it. */
export type OnLost<E> = (f: (error: E) => void) => () => void

export interface CallbackWaitOptions<E2, E3> {
  readonly timeout: Duration.DurationInput
  readonly onTimeout: () => E2
  readonly onLost?: OnLost<E3>
}

const defaultClock = Clock.make().constructor
// setTimeout fires at once for delays above this.
const maxTimerMillis = 2_147_483_647

const untimed = <A, E, E3>(start: Start<A, E>, onLost: OnLost<E3> | undefined, timer?: {
  readonly millis: number
  readonly onTimeout: () => unknown
}): Effect.Effect<A, E | E3> =>
  Effect.async<A, E | E3>((resume) => {
    let done = false
    let stop: (() => void) | undefined = undefined
    let stopLost: (() => void) | undefined
    let handle: ReturnType<typeof setTimeout> | undefined
    const end = () => {
      done = true
      if (handle !== undefined) clearTimeout(handle)
      stopLost?.()
      stop?.()
    }
    const finish = (result: Either.Either<A, E | E3>) => {
      if (done) return
      end()
      resume(result)
    }
    if (onLost !== undefined) stopLost = onLost((error) => finish(Either.left(error)))
    if (done) return
    if (timer !== undefined) {
      handle = setTimeout(() => finish(Either.left(timer.onTimeout() as E)), timer.millis)
    }
    stop = start(finish)
    if (done) stop()
    return Effect.sync(() => {
      if (!done) end()
    })
  })

/**
 * Runs `start` and waits for its answer, failing with `onTimeout()` after `timeout` and with the
 * connection's error once `onLost` reports it. Interruption stops listening. Under a clock other
 * than the default one (a `TestClock`), the timeout is Effect's, so tests can move time.
 */
export const awaitCallback = <A, E, E2, E3 = never>(
  start: Start<A, E>,
  options: CallbackWaitOptions<E2, E3>
): Effect.Effect<A, E | E2 | E3> => {
  const duration = Duration.decode(options.timeout)
  return Effect.clockWith((clock) =>
    clock.constructor === defaultClock && Duration.toMillis(duration) <= maxTimerMillis
      ? untimed<A, E | E2, E3>(start, options.onLost, {
        millis: Duration.toMillis(duration),
        onTimeout: options.onTimeout
      })
      : Effect.timeoutFail(untimed(start, options.onLost), { duration, onTimeout: options.onTimeout })
  )
}

/**
 * Runs a promise-returning call as one callback wait (see {@link awaitCallback}): bounded by
 * `timeout`, with one timer and no fiber forked. When the wait ends before the promise settles
 * (timeout, interruption), the signal given to `f` aborts. `Effect.timeoutFail` around
 * `Effect.tryPromise` does the same with a race of two fibers, which adds a measurable share of
 * a millisecond to every call.
 */
export const boundedPromise = <A, E, E2, E3 = never>(
  f: (signal: AbortSignal) => Promise<A>,
  onError: (cause: unknown) => E,
  options: CallbackWaitOptions<E2, E3>
): Effect.Effect<A, E | E2 | E3> => {
  // Ended by the loss of the connection: the SDK's links are gone, and aborting a call on them
  // can make the SDK throw from its abort listener. The promise is left to settle on its own.
  let lost = false
  const onLost = options.onLost
  const waitOptions: CallbackWaitOptions<E2, E3> = onLost === undefined ? options : {
    ...options,
    onLost: (f) =>
      onLost((error) => {
        lost = true
        f(error)
      })
  }
  return awaitCallback<A, E, E2, E3>((finish) => {
    // A new attempt (the effect run again): only its own loss counts.
    lost = false
    const controller = new AbortController()
    let settled = false
    let promise: Promise<A>
    try {
      promise = f(controller.signal)
    } catch (cause) {
      settled = true
      finish(Either.left(onError(cause)))
      return () => undefined
    }
    promise.then(
      (value) => {
        settled = true
        finish(Either.right(value))
      },
      (cause) => {
        settled = true
        finish(Either.left(onError(cause)))
      }
    )
    return () => {
      if (!settled && !lost) controller.abort()
    }
  }, waitOptions)
}

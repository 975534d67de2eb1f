import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Either, Exit, Fiber, TestClock } from "effect"
import { awaitCallback, boundedPromise, type Start } from "../../src/internal/amqp/callbackWait.js"

// A start function whose answer is given by the test; counts how often listening stopped.
const manual = <A, E>() => {
  const state = { finish: undefined as ((result: Either.Either<A, E>) => void) | undefined, stopped: 0 }
  const start: Start<A, E> = (finish) => {
    state.finish = finish
    return () => {
      state.stopped++
    }
  }
  return { state, start }
}

describe("awaitCallback", () => {
  it.live("resumes with the answer and stops listening once", () =>
    Effect.gen(function*() {
      const { start, state } = manual<number, string>()
      const fiber = yield* Effect.fork(awaitCallback(start, { timeout: "1 minute", onTimeout: () => "timeout" }))
      yield* Effect.yieldNow()
      state.finish!(Either.right(1))
      state.finish!(Either.right(2))
      assert.strictEqual(yield* Fiber.join(fiber), 1)
      assert.strictEqual(state.stopped, 1)
    }))

  it.live("an answer given while starting ends the wait at once", () =>
    Effect.gen(function*() {
      let stopped = 0
      const result = yield* awaitCallback<string, never, string>((finish) => {
        finish(Either.right("now"))
        return () => {
          stopped++
        }
      }, { timeout: "1 minute", onTimeout: () => "timeout" })
      assert.strictEqual(result, "now")
      assert.strictEqual(stopped, 1)
    }))

  it.live("fails with the connection's error, and at once when it is already lost", () =>
    Effect.gen(function*() {
      const listeners = new Set<(error: string) => void>()
      const onLost = (f: (error: string) => void) => {
        listeners.add(f)
        return () => listeners.delete(f)
      }
      const { start, state } = manual<number, string>()
      const fiber = yield* Effect.fork(
        awaitCallback(start, { timeout: "1 minute", onTimeout: () => "timeout", onLost })
      )
      yield* Effect.yieldNow()
      for (const f of listeners) f("lost")
      assert.deepStrictEqual(yield* Effect.flip(Fiber.join(fiber)), "lost")
      assert.strictEqual(state.stopped, 1)
      assert.strictEqual(listeners.size, 0)

      let started = false
      const lostAlready = yield* awaitCallback(
        (() => {
          started = true
          return () => undefined
        }) as Start<never, never>,
        {
          timeout: "1 minute",
          onTimeout: () => "timeout",
          onLost: (f: (error: string) => void) => {
            f("gone")
            return () => undefined
          }
        }
      ).pipe(Effect.flip)
      assert.strictEqual(lostAlready, "gone")
      assert.isFalse(started)
    }))

  it.live("times out on a real timer", () =>
    Effect.gen(function*() {
      const { start, state } = manual<number, string>()
      const error = yield* Effect.flip(awaitCallback(start, { timeout: "10 millis", onTimeout: () => "timeout" }))
      assert.strictEqual(error, "timeout")
      assert.strictEqual(state.stopped, 1)
    }))

  it.effect("times out on the test clock", () =>
    Effect.gen(function*() {
      const { start, state } = manual<number, string>()
      const fiber = yield* Effect.fork(awaitCallback(start, { timeout: "5 seconds", onTimeout: () => "timeout" }))
      yield* TestClock.adjust(Duration.seconds(5))
      assert.strictEqual(yield* Effect.flip(Fiber.join(fiber)), "timeout")
      assert.strictEqual(state.stopped, 1)
    }))

  it.live("interruption stops listening", () =>
    Effect.gen(function*() {
      const { start, state } = manual<number, string>()
      const fiber = yield* Effect.fork(awaitCallback(start, { timeout: "1 minute", onTimeout: () => "timeout" }))
      yield* Effect.yieldNow()
      const exit = yield* Fiber.interrupt(fiber)
      assert.isTrue(Exit.isInterrupted(exit))
      assert.strictEqual(state.stopped, 1)
    }))
})

describe("boundedPromise", () => {
  it.live("resolves with the promise's value, and leaves its signal alone", () =>
    Effect.gen(function*() {
      let signal: AbortSignal | undefined
      const value = yield* boundedPromise(
        (s) => {
          signal = s
          return Promise.resolve(7)
        },
        String,
        { timeout: "1 minute", onTimeout: () => "timeout" }
      )
      assert.strictEqual(value, 7)
      assert.isFalse(signal!.aborted)
    }))

  it.live("maps a rejection, and a throw before any promise", () =>
    Effect.gen(function*() {
      const rejected = yield* boundedPromise(() => Promise.reject(new Error("no")), (e) => `mapped ${String(e)}`, {
        timeout: "1 minute",
        onTimeout: () => "timeout"
      }).pipe(Effect.flip)
      assert.strictEqual(rejected, "mapped Error: no")
      const thrown = yield* boundedPromise(() => {
        throw new Error("sync")
      }, (e) =>
        `mapped ${String(e)}`, {
        timeout: "1 minute",
        onTimeout: () =>
          "timeout"
      }).pipe(Effect.flip)
      assert.strictEqual(thrown, "mapped Error: sync")
    }))

  it.effect("times out, aborting the call (under the test clock)", () =>
    Effect.gen(function*() {
      let signal: AbortSignal | undefined
      const fiber = yield* Effect.fork(boundedPromise(
        (s) => {
          signal = s
          return new Promise<number>(() => undefined)
        },
        String,
        { timeout: "5 seconds", onTimeout: () => "timeout" }
      ))
      yield* TestClock.adjust(Duration.seconds(5))
      const exit = yield* Fiber.await(fiber)
      assert.deepStrictEqual(exit, Exit.fail("timeout"))
      assert.isTrue(signal!.aborted)
    }))

  it.live("interruption aborts the call", () =>
    Effect.gen(function*() {
      let signal: AbortSignal | undefined
      const fiber = yield* Effect.fork(boundedPromise(
        (s) => {
          signal = s
          return new Promise<number>(() => undefined)
        },
        String,
        { timeout: "1 minute", onTimeout: () => "timeout" }
      ))
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(fiber)
      assert.isTrue(signal!.aborted)
    }))
})

import type { ServiceBusReceivedMessage } from "@azure/service-bus"
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Schedule } from "effect"
import { bodies, client, emulator, receiveAll, run } from "./support.js"

describe("ServiceBusEmulator topics and subscriptions", () => {
  it.scopedLive("routes messages to subscriptions by true, SQL and correlation filters", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({
        topics: [{
          name: "events",
          subscriptions: [
            { name: "all" },
            { name: "eu-created", filter: { sql: "sys.label = 'created' AND user.region = 'eu'" } },
            { name: "us-or-deleted", filter: { sql: "region = 'us' OR sys.Label = 'deleted'" } },
            { name: "kind-x", filter: { correlation: { applicationProperties: { kind: "x" } } } },
            {
              name: "two-rules",
              rules: [
                { name: "big", filter: { sql: "user.amount > 100" } },
                { name: "by-id", filter: { correlation: { correlationId: "c-7" } } }
              ]
            },
            { name: "none", filter: false }
          ]
        }]
      })
      const sb = yield* client(emu)
      yield* run(() =>
        sb.createSender("events").sendMessages([
          { body: 1, subject: "created", applicationProperties: { region: "eu", kind: "x", amount: 5 } },
          { body: 2, subject: "created", applicationProperties: { region: "us", amount: 500 } },
          { body: 3, subject: "deleted", applicationProperties: { region: "eu" }, correlationId: "c-7" },
          { body: 4, subject: "updated", applicationProperties: { kind: "y" } }
        ])
      )
      const received = (name: string, expected: number) =>
        Effect.gen(function*() {
          const receiver = sb.createReceiver("events", name, { receiveMode: "receiveAndDelete" })
          const messages = yield* receiveAll((n) => receiver.receiveMessages(n, { maxWaitTimeInMs: 300 }), expected + 1)
          return bodies(messages)
        })
      assert.deepStrictEqual(yield* received("all", 4), [1, 2, 3, 4])
      assert.deepStrictEqual(yield* received("eu-created", 1), [1])
      assert.deepStrictEqual(yield* received("us-or-deleted", 2), [2, 3])
      assert.deepStrictEqual(yield* received("kind-x", 1), [1])
      assert.deepStrictEqual(yield* received("two-rules", 2), [2, 3])
      assert.deepStrictEqual(yield* received("none", 0), [])
    }))

  it.scopedLive("dead-letters on a subscription path", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ topics: [{ name: "events", subscriptions: [{ name: "audit" }] }] })
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("events").sendMessages({ body: "bad" }))
      const receiver = sb.createReceiver("events", "audit")
      const [message] = yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 2000 }))
      yield* run(() =>
        receiver.deadLetterMessage(message, { deadLetterReason: "Nope", deadLetterErrorDescription: "not wanted" })
      )
      const dlq = sb.createReceiver("events", "audit", { subQueueType: "deadLetter" })
      const [dead] = yield* run(() => dlq.receiveMessages(1, { maxWaitTimeInMs: 2000 }))
      assert.strictEqual(dead.body, "bad")
      assert.strictEqual(dead.deadLetterReason, "Nope")
      assert.strictEqual(dead.deadLetterSource, "events/Subscriptions/audit")
      yield* run(() => dlq.completeMessage(dead))
      assert.strictEqual((yield* emu.admin.counts("events/Subscriptions/audit")).deadLettered, 0)
    }))

  it.scopedLive("subscribe() with maxConcurrentCalls completes every message exactly once", () =>
    Effect.gen(function*() {
      const total = 60
      const emu = yield* emulator({ topics: [{ name: "events", subscriptions: [{ name: "worker" }] }] })
      const sb = yield* client(emu)
      yield* run(() =>
        sb.createSender("events").sendMessages(
          Array.from({ length: total }, (_, i) => ({ body: i, messageId: `m-${i}` }))
        )
      )
      const done = yield* Deferred.make<void>()
      const seen = new Map<number, number>()
      let inFlight = 0
      let maxInFlight = 0
      const receiver = sb.createReceiver("events", "worker")
      const subscription = receiver.subscribe({
        processMessage: async (message: ServiceBusReceivedMessage) => {
          inFlight++
          maxInFlight = Math.max(maxInFlight, inFlight)
          await new Promise((resolve) => setTimeout(resolve, 5))
          seen.set(message.body as number, (seen.get(message.body as number) ?? 0) + 1)
          inFlight--
          if (seen.size === total) Effect.runSync(Deferred.succeed(done, undefined))
        },
        processError: async (args) => {
          throw args.error
        }
      }, { maxConcurrentCalls: 4 })
      yield* Deferred.await(done).pipe(Effect.timeout("20 seconds"))
      yield* run(() => subscription.close())
      assert.strictEqual(seen.size, total)
      assert.isTrue([...seen.values()].every((n) => n === 1))
      assert.isAbove(maxInFlight, 1)
      assert.isAtMost(maxInFlight, 4)
      // The last completion may still be on the wire when the handler has run.
      const counts = yield* emu.admin.counts("events/Subscriptions/worker").pipe(
        Effect.filterOrFail((c) => c.locked === 0, () => "still locked"),
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("3 seconds")))
      )
      assert.deepStrictEqual(counts, { active: 0, locked: 0, deferred: 0, scheduled: 0, deadLettered: 0 })
    }))
})

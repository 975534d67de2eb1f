// The outbox on the memory layers: the conformance suite, and the sweep's schedule driven by
// TestClock.
import { assert, describe, it } from "@effect/vitest"
import type { Duration } from "effect"
import { Context, Effect, Layer, Schedule, TestClock } from "effect"
import { EventStore } from "../src/EventStore.js"
import * as MemoryStore from "../src/internal/memoryEventStore.js"
import * as MessageSender from "../src/MessageSender.js"
import * as Outbox from "../src/Outbox.js"
import { OutboxStore } from "../src/OutboxStore.js"
import { ServerBusy } from "../src/ServiceBusError.js"
import { Arrivals, outboxSuite, queues } from "./conformance/OutboxSuite.js"

const stores = (bucketSize: Duration.DurationInput) =>
  Layer.effectContext(
    Effect.map(
      MemoryStore.makeStoresWith({ pendingBucketSize: bucketSize }),
      (stores) => Context.make(EventStore, stores.eventStore).pipe(Context.add(OutboxStore, stores.outboxStore))
    )
  )

// Under TestClock nothing sleeps for real: let the woken fibers run, then look.
const settled = <A, E, R>(effect: Effect.Effect<A, E, R>, done: (value: A) => boolean) =>
  Effect.gen(function*() {
    for (let round = 0; round < 1_000; round++) {
      const value = yield* effect
      if (done(value)) return value
      yield* Effect.yieldNow()
    }
    return yield* Effect.dieMessage("not settled")
  })

const broker = MessageSender.layerMemory({
  queues: Object.values(queues).map((name) => ({ name, requiresDuplicateDetection: true }))
})

const arrivals = Layer.effect(
  Arrivals,
  Effect.map(MessageSender.MemoryBroker, (broker) => ({
    messages: (destination: string) => Effect.orDie(broker.sent(destination))
  }))
)

outboxSuite("Outbox (memory)", {
  layer: Layer.mergeAll(stores("1 second"), arrivals.pipe(Layer.provideMerge(broker))),
  bucketSize: "1 second"
})

describe("Outbox (memory, TestClock)", () => {
  it.scoped("the sweep runs on its schedule and finds what no commit notification announced", () =>
    Effect.gen(function*() {
      const store = yield* EventStore
      const broker = yield* MessageSender.MemoryBroker
      // Committed before the pump starts: no notification will ever come for it.
      yield* store.append("order-early", 0, [{
        eventId: "early-1",
        type: "OrderPlaced",
        schemaVersion: 1,
        data: {},
        metadata: { timestamp: "1970-01-01T00:00:00.000Z" }
      }])
      yield* Outbox.make({
        route: () => queues.orders,
        sweep: Schedule.spaced("1 minute"),
        gracePeriod: "5 minutes"
      })
      // The first sweep runs at start; the bucket is too young.
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* broker.sent(queues.orders)).length, 0)
      // Six minutes later the bucket (1 minute) is older than the grace period.
      yield* TestClock.adjust("6 minutes")
      const sent = yield* settled(broker.sent(queues.orders), (sent) => sent.length === 1)
      assert.strictEqual(sent[0].messageId, "early-1")
      const outboxStore = yield* OutboxStore
      yield* TestClock.adjust("1 minute")
      assert.deepStrictEqual(yield* outboxStore.pending({ endedBefore: Number.MAX_SAFE_INTEGER, fromBucket: 0 }), [])
    }).pipe(Effect.provide(Layer.merge(stores("1 minute"), broker))))

  it.scoped("the in-process wake-up dispatches without waiting for the sweep", () =>
    Effect.gen(function*() {
      const store = yield* EventStore
      const broker = yield* MessageSender.MemoryBroker
      yield* Outbox.make({ route: () => queues.orders, sweep: Schedule.spaced("1 hour") })
      yield* store.append("order-fast", 0, [{
        eventId: "fast-1",
        type: "OrderPlaced",
        schemaVersion: 1,
        data: {},
        metadata: { timestamp: "1970-01-01T00:00:00.000Z" }
      }])
      // No time passes: only the commit notification can have triggered the send.
      const sent = yield* settled(broker.sent(queues.orders), (sent) => sent.length === 1)
      assert.strictEqual(sent[0].messageId, "fast-1")
    }).pipe(Effect.provide(Layer.merge(stores("1 minute"), broker))))

  it.scoped("transient send failures are retried; nothing is skipped", () =>
    Effect.gen(function*() {
      const store = yield* EventStore
      const broker = yield* MessageSender.MemoryBroker
      yield* Outbox.make({
        route: () => queues.orders,
        sweep: Schedule.spaced("1 hour"),
        retry: Schedule.spaced("10 millis")
      })
      yield* broker.failNext("send", new ServerBusy({ operation: "send", entity: queues.orders, reason: "test" }), 3)
      yield* store.append(
        "order-busy",
        0,
        [1, 2, 3].map((n) => ({
          eventId: `busy-${n}`,
          type: "OrderPlaced",
          schemaVersion: 1,
          data: { n },
          metadata: { timestamp: "1970-01-01T00:00:00.000Z" }
        }))
      )
      // The sender's own retries back off too (200 ms and more): a minute covers them.
      for (let second = 0; second < 60; second++) yield* TestClock.adjust("1 second")
      const sent = yield* settled(broker.sent(queues.orders), (sent) => sent.length === 3)
      assert.deepStrictEqual(sent.map((message) => message.messageId), ["busy-1", "busy-2", "busy-3"])
    }).pipe(Effect.provide(Layer.merge(stores("1 minute"), broker))))
})

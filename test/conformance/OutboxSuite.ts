// The outbox contract, run on the memory layers and on Azurite with the Service Bus emulator. Each
// test gets fresh layers from the harness and uses stream ids of its own, so a harness over a
// shared table and a shared broker works too. Destinations may hold other tests' messages:
// arrivals are filtered by stream id.
import { assert, describe, it } from "@effect/vitest"
import type { Layer, Scope } from "effect"
import { Array as Arr, Clock, Context, Duration, Effect, Schedule } from "effect"
import type { EventData } from "../../src/EventStore.js"
import { EventStore } from "../../src/EventStore.js"
import type { OutgoingMessage } from "../../src/Message.js"
import { idFromEvent } from "../../src/Message.js"
import type { MessageSender } from "../../src/MessageSender.js"
import * as Outbox from "../../src/Outbox.js"
import { OutboxStore } from "../../src/OutboxStore.js"

/** The queues a harness must provide, with duplicate detection on. */
export const queues = { orders: "outbox-orders", payments: "outbox-payments", audit: "outbox-audit" } as const

/** What arrived at a destination, in the order it was enqueued. */
export class Arrivals extends Context.Tag("test/OutboxSuite/Arrivals")<Arrivals, {
  readonly messages: (
    destination: string
  ) => Effect.Effect<
    ReadonlyArray<
      Pick<OutgoingMessage, Exclude<keyof OutgoingMessage, "messageId">> & {
        readonly messageId?: string | undefined
      }
    >
  >
}>() {}

export interface Harness<E> {
  /** Fresh layers for one test: the stores (same streams), a sender and what arrived. */
  readonly layer: Layer.Layer<EventStore | OutboxStore | MessageSender | Arrivals, E>
  /** Pending bucket size the stores were built with (the sweep test waits for buckets to end). */
  readonly bucketSize: Duration.DurationInput
}

type Env = EventStore | OutboxStore | MessageSender | Arrivals

const run = Math.random().toString(36).slice(2, 8)
let counter = 0
const newStreamId = (category: string) => `${category}-${run}${++counter}`

const event = (eventId: string, type = "OrderPlaced", data: unknown = { eventId }): EventData => ({
  eventId,
  type,
  schemaVersion: 2,
  data,
  metadata: { timestamp: "2024-05-01T10:00:00.000Z", correlationId: `corr-${eventId}`, causationId: `cmd-${eventId}` }
})

const events = (prefix: string, count: number, type?: string) =>
  Arr.makeBy(count, (index) => event(`${prefix}-${index + 1}`, type))

const route = Outbox.byCategory({ order: queues.orders, payment: queues.payments })

/** The messages of these streams at a destination. */
export const arrived = (destination: string, streamIds: ReadonlyArray<string>) =>
  Effect.flatMap(Arrivals, (arrivals) => arrivals.messages(destination)).pipe(
    Effect.map((messages) =>
      messages.filter((message) => streamIds.includes(String(message.applicationProperties?.streamId)))
    )
  )

/** Polls until `count` messages of these streams arrived (live clock), then returns them. */
export const waitForArrivals = (destination: string, streamIds: ReadonlyArray<string>, count: number) =>
  Effect.gen(function*() {
    const start = yield* Clock.currentTimeMillis
    while (true) {
      const messages = yield* arrived(destination, streamIds)
      if (messages.length >= count) return messages
      if ((yield* Clock.currentTimeMillis) - start > 20_000) {
        return yield* Effect.dieMessage(`only ${messages.length} of ${count} messages arrived at ${destination}`)
      }
      yield* Effect.sleep("20 millis")
    }
  })

/** Polls `effect` (live clock) until `done` holds, and returns that value. */
export const poll = <A, E, R>(effect: Effect.Effect<A, E, R>, done: (value: A) => boolean) =>
  Effect.gen(function*() {
    const start = yield* Clock.currentTimeMillis
    while (true) {
      const value = yield* effect
      if (done(value)) return value
      if ((yield* Clock.currentTimeMillis) - start > 20_000) {
        return yield* Effect.dieMessage("condition not met in 20 s")
      }
      yield* Effect.sleep("20 millis")
    }
  })

const startOutbox = (options: Partial<Outbox.Options> = {}) =>
  Outbox.make({ route, sweep: Schedule.spaced("200 millis"), ...options })

const versionsOf = (
  messages: ReadonlyArray<{ readonly applicationProperties?: Record<string, unknown> | undefined }>
) => messages.map((message) => message.applicationProperties?.streamVersion)

export const outboxSuite = <E>(name: string, harness: Harness<E>): void => {
  const test = (title: string, body: () => Effect.Effect<void, unknown, Env | Scope.Scope>) =>
    it.live(title, () => Effect.scoped(body()).pipe(Effect.provide(harness.layer)), 30_000)

  describe(name, () => {
    test("an appended event arrives with its id, subject, correlation and properties", () =>
      Effect.gen(function*() {
        yield* startOutbox()
        const store = yield* EventStore
        const streamId = newStreamId("order")
        const [appended] = events(`${streamId}-e`, 1)
        yield* store.append(streamId, 0, [{ ...appended, data: { total: 42, lines: ["a", "b"] } }])
        const [message] = yield* waitForArrivals(queues.orders, [streamId], 1)
        assert.strictEqual(message.messageId, idFromEvent(appended.eventId))
        assert.strictEqual(message.subject, "OrderPlaced")
        assert.strictEqual(message.correlationId, appended.metadata.correlationId)
        assert.strictEqual(message.causationId, appended.metadata.causationId)
        assert.deepStrictEqual(message.body, { total: 42, lines: ["a", "b"] })
        assert.deepInclude(message.applicationProperties, {
          streamId,
          streamVersion: 1,
          eventType: "OrderPlaced",
          schemaVersion: 2
        })
        // The position is recorded after the send.
        const outboxStore = yield* OutboxStore
        const progress = yield* poll(outboxStore.progress(streamId), (progress) => progress.dispatched === 1)
        assert.strictEqual(progress.version, 1)
      }))

    test("events arrive in order per stream, across several streams and appends", () =>
      Effect.gen(function*() {
        yield* startOutbox({ concurrency: 4, batchSize: 3 })
        const store = yield* EventStore
        const streamIds = Arr.makeBy(6, () => newStreamId("order"))
        yield* Effect.forEach(streamIds, (streamId) =>
          Effect.forEach([0, 2, 4], (version) =>
            store.append(streamId, version, events(`${streamId}-${version}`, 2)), { discard: true }), {
          concurrency: "unbounded",
          discard: true
        })
        const messages = yield* waitForArrivals(queues.orders, streamIds, 36)
        assert.strictEqual(messages.length, 36)
        for (const streamId of streamIds) {
          const ofStream = messages.filter((message) =>
            message.applicationProperties?.streamId === streamId
          )
          assert.deepStrictEqual(versionsOf(ofStream), [1, 2, 3, 4, 5, 6])
          assert.deepStrictEqual(
            ofStream.map((message) =>
              message.messageId
            ),
            [0, 2, 4].flatMap((version) => events(`${streamId}-${version}`, 2).map((e) => idFromEvent(e.eventId)))
          )
        }
      }))

    test("routes by category and by event type, and skips what no route claims", () =>
      Effect.gen(function*() {
        const byType = Outbox.byEventType({ PaymentRefunded: queues.audit })
        yield* startOutbox({ route: (event) => byType(event) ?? route(event) })
        const store = yield* EventStore
        const order = newStreamId("order")
        const payment = newStreamId("payment")
        const unrouted = newStreamId("shipment")
        yield* store.append(order, 0, events(`${order}-e`, 2))
        yield* store.append(payment, 0, [
          event(`${payment}-1`, "PaymentTaken"),
          event(`${payment}-2`, "PaymentRefunded"),
          event(`${payment}-3`, "PaymentTaken")
        ])
        yield* store.append(unrouted, 0, events(`${unrouted}-e`, 2))
        const all = [order, payment, unrouted]
        assert.deepStrictEqual(versionsOf(yield* waitForArrivals(queues.orders, all, 2)), [1, 2])
        assert.deepStrictEqual(versionsOf(yield* waitForArrivals(queues.payments, all, 2)), [1, 3])
        assert.deepStrictEqual(versionsOf(yield* waitForArrivals(queues.audit, all, 1)), [2])
        // The unrouted stream's position moves past its events.
        const outboxStore = yield* OutboxStore
        yield* poll(outboxStore.progress(unrouted), (progress) => progress.dispatched === 2)
      }))

    test("the sweep dispatches streams committed while no pump ran, then clears their index entries", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const outboxStore = yield* OutboxStore
        const streamIds = Arr.makeBy(3, () => newStreamId("order"))
        for (const streamId of streamIds) yield* store.append(streamId, 0, events(`${streamId}-e`, 2))
        const now = yield* Clock.currentTimeMillis
        const pendingOf = (endedBefore: number) =>
          outboxStore.pending({ endedBefore, fromBucket: 0 }).pipe(
            Effect.map((entries) => entries.filter((entry) => streamIds.includes(entry.streamId)))
          )
        // Listed in the index, in the bucket of the append.
        assert.strictEqual((yield* pendingOf(now + Duration.toMillis(Duration.decode(harness.bucketSize)))).length, 3)
        // A pump started now has no commit notification for these streams: the sweep finds them.
        yield* startOutbox({ gracePeriod: "1 millis" })
        const messages = yield* waitForArrivals(queues.orders, streamIds, 6)
        assert.strictEqual(messages.length, 6)
        // A later sweep finds them dispatched and removes their entries.
        yield* poll(pendingOf(Number.MAX_SAFE_INTEGER), (entries) => entries.length === 0)
      }))

    test("several pumps at once lose nothing, and duplicate detection keeps one copy", () =>
      Effect.gen(function*() {
        yield* startOutbox({ concurrency: 2 })
        yield* startOutbox({ concurrency: 2 })
        const store = yield* EventStore
        const outboxStore = yield* OutboxStore
        const streamIds = Arr.makeBy(5, () => newStreamId("payment"))
        yield* Effect.forEach(streamIds, (streamId) =>
          Effect.forEach([0, 3], (version) =>
            store.append(streamId, version, events(`${streamId}-${version}`, 3)), { discard: true }), {
          concurrency: "unbounded",
          discard: true
        })
        const messages = yield* waitForArrivals(queues.payments, streamIds, 30)
        for (const streamId of streamIds) {
          const progress = yield* poll(outboxStore.progress(streamId), (progress) =>
            progress.dispatched === 6)
          assert.strictEqual(progress.version, 6)
        }
        const ids = messages.map((message) =>
          message.messageId
        )
        assert.strictEqual(new Set(ids).size, 30)
        assert.strictEqual(ids.length, 30)
      }))

    test("a dispatch requested by hand after the position moved elsewhere sends nothing again", () =>
      Effect.gen(function*() {
        const outbox = yield* startOutbox()
        const store = yield* EventStore
        const streamId = newStreamId("order")
        yield* store.append(streamId, 0, events(`${streamId}-e`, 3))
        yield* waitForArrivals(queues.orders, [streamId], 3)
        yield* outbox.dispatch(streamId)
        const outboxStore = yield* OutboxStore
        // Another instance's view: the position is known and current.
        const progress = yield* outboxStore.progress(streamId, { fromVersion: 1 })
        assert.strictEqual(progress.dispatched, 3)
        assert.strictEqual(progress.events.length, 3)
        assert.strictEqual((yield* arrived(queues.orders, [streamId])).length, 3)
        // A stale token loses the conditional write.
        assert.isUndefined(yield* outboxStore.recordDispatched(streamId, undefined, 3))
      }))
  })
}

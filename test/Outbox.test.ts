// The outbox on Azurite and the Service Bus emulator: the conformance suite, then transient
// failures injected in Service Bus (server busy, dropped connections) and in Table Storage (503
// and lost answers through a proxy): everything still arrives, in order, once.
import { assert, describe, it } from "@effect/vitest"
import { Array as Arr, Effect, Layer, Redacted, Schedule } from "effect"
import { afterAll, inject } from "vitest"
import * as AzureTableEventStore from "../src/AzureTableEventStore.js"
import { ServiceBusEmulator } from "../src/emulator/index.js"
import type { EventData } from "../src/EventStore.js"
import { EventStore } from "../src/EventStore.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import * as MessageSender from "../src/MessageSender.js"
import * as Outbox from "../src/Outbox.js"
import { OutboxStore } from "../src/OutboxStore.js"
import * as ServiceBusClient from "../src/ServiceBusClient.js"
import { Arrivals, outboxSuite, poll, queues, waitForArrivals } from "./conformance/OutboxSuite.js"
import { isPositionWrite, isQuery, serverBusy, startProxy } from "./outbox/tableProxy.js"

const azurite = inject("azurite")
const tableName = `outbox${Math.random().toString(36).slice(2, 8)}`

const emulator = await ServiceBusEmulator.start({
  queues: [...Object.values(queues), "outbox-faults"].map((name) => ({ name, requiresDuplicateDetection: true }))
})
afterAll(() => emulator.close())

// Short buckets and a short append window, so the sweep test waits seconds, not minutes.
export const storeOptions = {
  tableName,
  pendingBucketSize: "1 second",
  maxAppendDuration: "1 second",
  timeout: "2 seconds"
} as const

const stores = (connectionString: Redacted.Redacted<string>) =>
  AzureTableEventStore.layer({ ...storeOptions, connectionString })

const messaging = Layer.mergeAll(
  MessageSender.layerServiceBus(),
  Layer.effect(
    Arrivals,
    Effect.map(MessageReceiver.MessageReceiver, (receiver) => ({
      messages: (destination: string) =>
        Effect.orDie(receiver.peek(MessageReceiver.queue(destination), { maxMessages: 1_000 }))
    }))
  ).pipe(Layer.provide(MessageReceiver.layerServiceBus()))
).pipe(
  Layer.provideMerge(
    ServiceBusClient.layer({
      connectionString: emulator.connectionString,
      operationTimeout: "5 seconds",
      retry: Schedule.spaced("50 millis").pipe(Schedule.intersect(Schedule.recurs(20)), Schedule.asVoid)
    })
  )
)

outboxSuite("Outbox (Azurite and the Service Bus emulator)", {
  layer: Layer.merge(stores(Redacted.make(azurite.connectionString)), messaging),
  bucketSize: storeOptions.pendingBucketSize
})

let counter = 0
const events = (streamId: string, from: number, count: number): Array<EventData> =>
  Arr.makeBy(count, (index) => ({
    eventId: `${streamId}-${from + index}`,
    type: "FaultTested",
    schemaVersion: 1,
    data: { n: from + index },
    metadata: { timestamp: new Date().toISOString() }
  }))

describe("Outbox under faults", () => {
  const destination = "outbox-faults"
  const fastRetry = Schedule.spaced("20 millis").pipe(Schedule.intersect(Schedule.recurs(20)), Schedule.asVoid)
  const outbox = Outbox.make({ route: () => destination, retry: fastRetry, sweep: Schedule.spaced("500 millis") })

  const appendAll = (streamIds: ReadonlyArray<string>, from: number, count: number) =>
    Effect.flatMap(
      EventStore,
      (store) =>
        Effect.forEach(streamIds, (streamId) => store.append(streamId, from, events(streamId, from + 1, count)), {
          concurrency: "unbounded",
          discard: true
        })
    )

  const expectAll = (streamIds: ReadonlyArray<string>, total: number) =>
    Effect.gen(function*() {
      const messages = yield* waitForArrivals(destination, streamIds, streamIds.length * total)
      for (const streamId of streamIds) {
        const ofStream = messages.filter((message) => message.applicationProperties?.streamId === streamId)
        assert.deepStrictEqual(
          ofStream.map((message) => message.messageId),
          Arr.makeBy(total, (index) => `${streamId}-${index + 1}`),
          "every event once, in order"
        )
      }
      const outboxStore = yield* OutboxStore
      for (const streamId of streamIds) {
        yield* poll(outboxStore.progress(streamId), (progress) => progress.dispatched === total)
      }
    })

  const newStreams = (label: string, count: number) => Arr.makeBy(count, () => `fault-${label}${tableName}${++counter}`)

  it.live("Service Bus busy: sends are retried and every event arrives once", () =>
    Effect.gen(function*() {
      yield* outbox
      const streamIds = newStreams("busy", 3)
      yield* appendAll(streamIds, 0, 2)
      yield* expectAll(streamIds, 2)
      yield* Effect.promise(() => Effect.runPromise(emulator.faults.refuseNext(4)))
      yield* appendAll(streamIds, 2, 3)
      yield* expectAll(streamIds, 5)
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(stores(Redacted.make(azurite.connectionString)), messaging))))

  it.live("dropped connections: the sender reconnects and nothing is skipped", () =>
    Effect.gen(function*() {
      yield* outbox
      const streamIds = newStreams("drop", 3)
      yield* appendAll(streamIds, 0, 2)
      yield* expectAll(streamIds, 2)
      yield* emulator.faults.closeConnections({ abrupt: true })
      yield* appendAll(streamIds, 2, 2)
      yield* emulator.faults.closeConnections()
      yield* appendAll(streamIds, 4, 2)
      yield* expectAll(streamIds, 6)
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(stores(Redacted.make(azurite.connectionString)), messaging))))

  it.live("Table Storage 503s and lost answers on reads and position writes: nothing is skipped", () =>
    Effect.gen(function*() {
      const proxy = yield* startProxy(azurite.tableEndpoint)
      yield* Effect.gen(function*() {
        // A store with retries turned down to one attempt, so failures reach the outbox's retry.
        yield* outbox
        const streamIds = newStreams("table", 3)
        proxy.inject(isQuery, serverBusy, serverBusy)
        proxy.inject(isPositionWrite, serverBusy, { kind: "resetAfter" }, serverBusy)
        yield* appendAll(streamIds, 0, 2)
        yield* expectAll(streamIds, 2)
        proxy.inject(isPositionWrite, { kind: "resetAfter" }, { kind: "resetAfter" }, serverBusy)
        proxy.inject(isQuery, serverBusy)
        yield* appendAll(streamIds, 2, 3)
        yield* expectAll(streamIds, 5)
        assert.isAtLeast(proxy.faults.length, 6, "the faults were met")
      }).pipe(
        Effect.provide(Layer.merge(
          AzureTableEventStore.layer({
            ...storeOptions,
            connectionString: proxy.connectionString,
            retry: Schedule.recurs(0)
          }),
          messaging
        ))
      )
    }).pipe(Effect.scoped))
})

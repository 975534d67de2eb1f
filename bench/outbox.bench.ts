// Events per second from append to arrival at the Service Bus emulator, through the outbox
// (AzureTableEventStore + Outbox + MessageSender, woken in process after each commit), against a
// hand-written loop with the raw SDKs doing the same work per append: the entity group
// transaction, a read of the events after the recorded position, one batch send, and a
// conditional write of the position. 2,000 events over 50 streams (10 appends of 4 events each),
// streams in parallel. Same in-process Azurite and emulator; the raw loop runs first. The raw loop
// dispatches inline after each append (the simplest correct loop); the outbox dispatches from its
// own fibers, so appends and dispatches of a stream overlap.
import type { TableEntity } from "@azure/data-tables"
import { odata, TableClient } from "@azure/data-tables"
import { ServiceBusClient as SdkClient } from "@azure/service-bus"
import { Effect, Layer, Redacted, Schedule } from "effect"
import { performance } from "node:perf_hooks"
import * as AzureTableEventStore from "../src/AzureTableEventStore.js"
import { ServiceBusEmulator } from "../src/emulator/index.js"
import type { EventData } from "../src/EventStore.js"
import { EventStore } from "../src/EventStore.js"
import * as MessageSender from "../src/MessageSender.js"
import * as Outbox from "../src/Outbox.js"
import * as ServiceBusClient from "../src/ServiceBusClient.js"
import { startTables } from "../src/testing/Azurite.js"
import { median, quantile, report } from "./util.js"

const streams = 50
const appendsPerStream = 10
const eventsPerAppend = 4
const total = streams * appendsPerStream * eventsPerAppend

const tables = await startTables()
const emulator = await ServiceBusEmulator.start({
  queues: [
    { name: "ours", requiresDuplicateDetection: true },
    { name: "raw", requiresDuplicateDetection: true }
  ]
})

const event = (streamId: string, n: number): EventData => ({
  eventId: `${streamId}-${n}`,
  type: "BookingPlaced",
  schemaVersion: 1,
  data: { bookingId: `${streamId}`, n, roomType: "double", nights: 3, price: { amount: 42900, currency: "EUR" } },
  metadata: { correlationId: "b6a0f6a8-2f4e-4c55-8f5e-0a5d3c1e9b77", timestamp: "2024-05-01T10:00:00.000Z" }
})

const waitForQueue = async (name: string) => {
  while ((await Effect.runPromise(emulator.admin.counts(name))).active < total) {
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

const raw = async (): Promise<number> => {
  const client = TableClient.fromConnectionString(Redacted.value(tables.connectionString), "rawoutbox", {
    allowInsecureConnection: true,
    retryOptions: { maxRetries: 0 }
  })
  await client.createTable()
  const bus = new SdkClient(Redacted.value(emulator.connectionString))
  const sender = bus.createSender("raw")
  await sender.sendMessages({ body: "warm-up", messageId: "warm-up" })
  const start = performance.now()
  await Promise.all(Array.from({ length: streams }, async (_, s) => {
    const streamId = `raw-${s}`
    let version = 0
    let headEtag: string | undefined
    let position = 0
    let positionEtag: string | undefined
    for (let a = 0; a < appendsPerStream; a++) {
      // The append: event rows and the head, one transaction.
      const events = Array.from({ length: eventsPerAppend }, (_, i) => event(streamId, version + i + 1))
      const head: TableEntity = { partitionKey: streamId, rowKey: "~head", Version: version + events.length }
      const rows = events.map((e, i): TableEntity => ({
        partitionKey: streamId,
        rowKey: String(version + i + 1).padStart(10, "0"),
        EventId: e.eventId,
        Type: e.type,
        SchemaVersion: e.schemaVersion,
        Data: JSON.stringify(e.data),
        Metadata: JSON.stringify(e.metadata)
      }))
      const answer = await client.submitTransaction([
        headEtag === undefined ? ["create", head] : ["update", head, "Merge", { etag: headEtag }],
        ...rows.map((row): ["create", TableEntity] => ["create", row])
      ])
      headEtag = answer.subResponses[0].etag
      version += events.length
      // The dispatch: read after the position, send, record the position.
      const read: Array<Record<string, unknown>> = []
      const from = String(position + 1).padStart(10, "0")
      for await (
        const row of client.listEntities<Record<string, unknown>>({
          queryOptions: { filter: odata`PartitionKey eq ${streamId} and RowKey ge ${from}` }
        })
      ) read.push(row)
      const messages = read.filter((row) => /^[0-9]{10}$/.test(String(row.rowKey))).map((row) => ({
        messageId: String(row.EventId),
        subject: String(row.Type),
        body: JSON.parse(String(row.Data)) as unknown,
        applicationProperties: { streamId, streamVersion: Number(row.rowKey) }
      }))
      await sender.sendMessages(messages)
      position = version
      const entity = { partitionKey: streamId, rowKey: "~outbox", Dispatched: position }
      positionEtag = positionEtag === undefined
        ? (await client.createEntity(entity)).etag
        : (await client.updateEntity(entity, "Replace", { etag: positionEtag })).etag
    }
  }))
  await waitForQueue("raw")
  const elapsed = performance.now() - start
  await sender.close()
  await bus.close()
  return elapsed
}

const ours = async (): Promise<{ readonly elapsed: number; readonly latencies: Array<number> }> => {
  const committedAt = new Map<string, number>()
  const latencies: Array<number> = []
  // Measures from the end of each append to the end of the send carrying its events.
  const timedSender = Layer.effect(
    MessageSender.MessageSender,
    Effect.map(MessageSender.MessageSender, (sender): MessageSender.MessageSenderService => ({
      send: (destination, messages, options) =>
        Effect.tap(sender.send(destination, messages, options), () =>
          Effect.sync(() => {
            const now = performance.now()
            for (const message of Array.isArray(messages) ? messages : [messages]) {
              const at = committedAt.get(message.messageId)
              if (at !== undefined) latencies.push(now - at)
            }
          }))
    }))
  ).pipe(Layer.provide(MessageSender.layerServiceBus()))
  const program = Effect.gen(function*() {
    const sender = yield* MessageSender.MessageSender
    yield* sender.send("ours", { body: "warm-up", messageId: "warm-up" })
    yield* Outbox.make({ route: () => "ours", concurrency: 16, sweep: Schedule.spaced("1 hour") })
    const store = yield* EventStore
    const start = performance.now()
    yield* Effect.forEach(Array.from({ length: streams }, (_, s) => `ours-${s}`), (streamId) =>
      Effect.gen(function*() {
        for (let a = 0; a < appendsPerStream; a++) {
          const version = a * eventsPerAppend
          const events = Array.from({ length: eventsPerAppend }, (_, i) => event(streamId, version + i + 1))
          yield* store.append(streamId, version, events)
          const now = performance.now()
          for (const e of events) committedAt.set(e.eventId, now)
        }
      }), { concurrency: "unbounded", discard: true })
    yield* Effect.promise(() => waitForQueue("ours"))
    return performance.now() - start
  }).pipe(
    Effect.scoped,
    Effect.provide(Layer.mergeAll(
      AzureTableEventStore.layer({ connectionString: tables.connectionString, tableName: "oursoutbox" }),
      timedSender.pipe(
        Layer.provide(ServiceBusClient.layer({ connectionString: emulator.connectionString }))
      )
    ))
  )
  const elapsed = await Effect.runPromise(program)
  return { elapsed, latencies }
}

try {
  // Each run has its own table, queue and streams; the raw loop goes first, so the servers'
  // warm-up does not favour ours.
  const rawMs = await raw()
  const { elapsed: oursMs, latencies } = await ours()
  const oursRate = total / (oursMs / 1000)
  const rawRate = total / (rawMs / 1000)
  report(
    "outbox",
    oursRate / rawRate,
    ">=",
    0.85,
    `ours ${oursRate.toFixed(0)} events/s, raw ${
      rawRate.toFixed(0)
    } events/s (${total} events, ${streams} streams); commit to send ours: median ${
      median(latencies).toFixed(2)
    } ms, p99 ${quantile(latencies, 0.99).toFixed(2)} ms (${latencies.length} events)`
  )
} finally {
  await emulator.close()
  await tables.close()
}

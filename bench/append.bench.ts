// One append of one event through AzureTableEventStore, against the same entity group
// transaction (event row insert + head row update with If-Match) sent with the raw
// @azure/data-tables client. Same in-process Azurite, sequential appends to one stream each,
// the adapter's head cache warm, rounds alternated.
import { TableClient } from "@azure/data-tables"
import type { TableEntity } from "@azure/data-tables"
import { Effect, Redacted } from "effect"
import * as AzureTableEventStore from "../src/AzureTableEventStore.js"
import type { EventData } from "../src/EventStore.js"
import { startTables } from "../src/testing/Azurite.js"
import { compare, median, quantile, report } from "./util.js"

const tables = await startTables()
const tableName = "bench"

const event = (n: number): EventData => ({
  eventId: `3f1c9a52-7d4e-4b8a-9c61-${n.toString(16).padStart(12, "0")}`,
  type: "BookingPlaced",
  schemaVersion: 1,
  data: {
    bookingId: "booking-20240501-0042",
    guestId: "guest-7781",
    roomType: "double",
    nights: 3,
    checkIn: "2024-06-12",
    checkOut: "2024-06-15",
    price: { amount: 42900, currency: "EUR" },
    notes: "Late arrival, around 22:30. Quiet room if possible."
  },
  metadata: {
    correlationId: "b6a0f6a8-2f4e-4c55-8f5e-0a5d3c1e9b77",
    causationId: "cmd-5c2d8e91",
    timestamp: "2024-05-01T10:00:00.000Z",
    properties: { tenant: "hotel-lyon" }
  }
})

try {
  // Ours: the library, as an application would use it.
  const store = await Effect.runPromise(
    AzureTableEventStore.make({ connectionString: tables.connectionString, tableName })
  )
  const ourStream = "booking-ours"
  let ourVersion = 0
  const ours = async () => {
    const result = await Effect.runPromise(store.append(ourStream, ourVersion, [event(ourVersion)]))
    ourVersion = result.version
  }

  // Raw: the same rows, built and sent by hand.
  const client = TableClient.fromConnectionString(
    Redacted.value(tables.connectionString),
    tableName,
    { allowInsecureConnection: true, retryOptions: { maxRetries: 0 } }
  )
  const rawStream = "booking-raw"
  let rawVersion = 0
  let rawEtag: string | undefined
  const raw = async () => {
    const e = event(rawVersion)
    const version = rawVersion + 1
    const head: TableEntity = { partitionKey: rawStream, rowKey: "~head", Version: version }
    const row: TableEntity = {
      partitionKey: rawStream,
      rowKey: version.toString().padStart(10, "0"),
      EventId: e.eventId,
      Type: e.type,
      SchemaVersion: e.schemaVersion,
      Data: JSON.stringify(e.data),
      Metadata: JSON.stringify(e.metadata)
    }
    const response = await client.submitTransaction([
      rawEtag === undefined ? ["create", head] : ["update", head, "Merge", { etag: rawEtag }],
      ["create", row]
    ])
    rawEtag = response.subResponses[0].etag
    rawVersion = version
  }

  const { ours: oursTimes, theirs: rawTimes } = await compare(ours, raw, { iterations: 3000, rounds: 30, warmup: 200 })
  const ratio = median(oursTimes) / median(rawTimes)
  report(
    "append",
    ratio,
    "<=",
    1.15,
    `median ours ${median(oursTimes).toFixed(3)} ms, raw ${median(rawTimes).toFixed(3)} ms; p90 ours ${
      quantile(oursTimes, 0.9).toFixed(3)
    } ms, raw ${quantile(rawTimes, 0.9).toFixed(3)} ms; ${oursTimes.length} appends each`
  )
} finally {
  await tables.close()
}

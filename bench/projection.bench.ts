// One projection update through Projector.project on AzureTableProjectionStore (decode the event,
// fold, conditional write with the positions), against the same work sent with the raw
// @azure/data-tables client and a hand-written fold. Same in-process Azurite, sequential updates
// of one document each, events of one stream in order, rounds alternated. The ratio is
// throughput, ours / raw.
//
// Fair baseline: the projector keeps the documents it last read or wrote (ETag, state,
// positions), so in steady state an update is one conditional replace with If-Match and no read.
// The raw loop keeps the same cache by hand and sends the same requests: a point read only when it
// has nothing cached (the first update) or after a 412, then the conditional write. Both sides
// check for duplicates and gaps with the positions before writing, and neither reads back after
// a write (the write's ETag is the next expected revision).
//
// Ours runs as a message handler does: in a runtime that already has the store (a layer provided
// once), not with the store provided anew on every call.
import type { TableEntity } from "@azure/data-tables"
import { TableClient } from "@azure/data-tables"
import { Effect, Redacted, Runtime, Schema } from "effect"
import * as AzureTableProjectionStore from "../src/AzureTableProjectionStore.js"
import * as EventCodec from "../src/EventCodec.js"
import type { RecordedEvent } from "../src/EventStore.js"
import * as Projection from "../src/Projection.js"
import { ProjectionStore } from "../src/ProjectionStore.js"
import * as Projector from "../src/Projector.js"
import { startTables } from "../src/testing/Azurite.js"
import { compare, median, quantile, report } from "./util.js"

class BookingPlaced extends Schema.TaggedClass<BookingPlaced>()("BookingPlaced", {
  roomId: Schema.String,
  nights: Schema.Int,
  price: Schema.Int
}) {}

const codec = EventCodec.make(BookingPlaced)

const Occupancy = Schema.Struct({ bookings: Schema.Int, nights: Schema.Int, revenue: Schema.Int })
type Occupancy = typeof Occupancy.Type

const evolve = (state: Occupancy, event: BookingPlaced): Occupancy => ({
  bookings: state.bookings + 1,
  nights: state.nights + event.nights,
  revenue: state.revenue + event.price
})

const occupancy = Projection.make({
  name: "occupancy",
  initialState: { bookings: 0, nights: 0, revenue: 0 },
  evolve,
  documentId: (event: BookingPlaced) => event.roomId,
  state: Occupancy
})

const recorded = (streamId: string, roomId: string, version: number): RecordedEvent => ({
  ...codec.encode(new BookingPlaced({ roomId, nights: 1 + (version % 5), price: 9900 + version }), {
    eventId: `${streamId}:${version}`,
    metadata: { timestamp: "2024-05-01T10:00:00.000Z", correlationId: "b6a0f6a8-2f4e-4c55-8f5e-0a5d3c1e9b77" }
  }),
  streamId,
  version
})

const tables = await startTables()
const tableName = "benchprojections"

try {
  // Ours: the library, as a message handler would use it.
  const store = await Effect.runPromise(
    AzureTableProjectionStore.make({ connectionString: tables.connectionString, tableName })
  )
  const runtime = await Effect.runPromise(
    Effect.provideService(Effect.runtime<ProjectionStore>(), ProjectionStore, store)
  )
  const run = Runtime.runPromise(runtime)
  let ourVersion = 0
  const ours = async () => {
    const event = recorded("rooms-ours", "room-ours", ++ourVersion)
    const result = await run(Projector.project(occupancy, codec, event))
    if (result._tag !== "Updated") throw new Error(`unexpected ${result._tag}`)
  }

  // Raw: the same read and conditional write, built by hand.
  const client = TableClient.fromConnectionString(Redacted.value(tables.connectionString), tableName, {
    allowInsecureConnection: true,
    retryOptions: { maxRetries: 0 }
  })
  let rawVersion = 0
  const partitionKey = "occupancy:room-raw"
  let cached: { etag: string; state: Occupancy; positions: Record<string, number> } | undefined
  const read = async () => {
    try {
      const row = await client.getEntity<{ State: string; Positions: string }>(partitionKey, "doc")
      cached = {
        etag: row.etag,
        state: JSON.parse(row.State) as Occupancy,
        positions: JSON.parse(row.Positions) as Record<string, number>
      }
    } catch (error) {
      if ((error as { statusCode?: number }).statusCode !== 404) throw error
      cached = undefined
    }
  }
  const raw = async () => {
    const version = ++rawVersion
    const streamId = "rooms-raw"
    const event = recorded(streamId, "room-raw", version)
    const data = event.data as { readonly nights: number; readonly price: number }
    for (let attempt = 0;; attempt++) {
      // Like the projector: a duplicate or a gap is only decided on a fresh read.
      if (cached === undefined || attempt > 0 || (cached.positions[streamId] ?? 0) !== version - 1) await read()
      const state = cached?.state ?? { bookings: 0, nights: 0, revenue: 0 }
      const positions = cached?.positions ?? {}
      if ((positions[streamId] ?? 0) >= version) return
      const next = {
        bookings: state.bookings + 1,
        nights: state.nights + data.nights,
        revenue: state.revenue + data.price
      }
      const nextPositions = { ...positions, [streamId]: version }
      const entity: TableEntity = {
        partitionKey,
        rowKey: "doc",
        State: JSON.stringify(next),
        Positions: JSON.stringify(nextPositions)
      }
      try {
        const written = await (cached === undefined
          ? client.createEntity(entity)
          : client.updateEntity(entity, "Replace", { etag: cached.etag }))
        cached = { etag: written.etag!, state: next, positions: nextPositions }
        return
      } catch (error) {
        const status = (error as { statusCode?: number }).statusCode
        if (status !== 409 && status !== 412) throw error
        cached = undefined
      }
    }
  }

  const { ours: oursTimes, theirs: rawTimes } = await compare(ours, raw, { iterations: 3000, rounds: 30, warmup: 300 })
  const ratio = median(rawTimes) / median(oursTimes)
  report(
    "projection",
    ratio,
    ">=",
    0.8,
    `throughput ours ${(1000 / median(oursTimes)).toFixed(0)}/s, raw ${(1000 / median(rawTimes)).toFixed(0)}/s; ` +
      `median ours ${median(oursTimes).toFixed(3)} ms, raw ${median(rawTimes).toFixed(3)} ms; p90 ours ${
        quantile(oursTimes, 0.9).toFixed(3)
      } ms, raw ${
        quantile(rawTimes, 0.9).toFixed(3)
      } ms; ${oursTimes.length} updates each (1 conditional write, the document cached)`
  )
} finally {
  await tables.close()
}

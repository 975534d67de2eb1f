// Transient failures between the projection store and Table Storage, injected by the proxy of
// `test/support/tableProxy.ts` in front of Azurite: error answers retried under the store's
// schedule, a write committed whose answer is lost (the retry meets a conflict, the projector
// reads again and finds the event applied), and a schedule that runs out.
import { TableClient } from "@azure/data-tables"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Schedule, Schema } from "effect"
import { inject } from "vitest"
import * as AzureTableProjectionStore from "../src/AzureTableProjectionStore.js"
import * as EventCodec from "../src/EventCodec.js"
import type { RecordedEvent } from "../src/EventStore.js"
import * as Projection from "../src/Projection.js"
import { ProjectionStoreUnavailable } from "../src/ProjectionError.js"
import { ProjectionStore } from "../src/ProjectionStore.js"
import * as Projector from "../src/Projector.js"
import { isGet, isInsert, isReplace, serverBusy, startProxy } from "./support/tableProxy.js"

const azurite = inject("azurite")
const table = `projfaults${Math.random().toString(36).slice(2, 8)}`
let counter = 0
const newRoomId = (label: string) => `${label}-${++counter}`

class BookingPlaced extends Schema.TaggedClass<BookingPlaced>()("BookingPlaced", {
  roomId: Schema.String,
  nights: Schema.Int
}) {}

const codec = EventCodec.make(BookingPlaced)

const Occupancy = Schema.Struct({ bookings: Schema.Int, nights: Schema.Int })

const occupancy = Projection.make({
  name: "occupancy",
  initialState: { bookings: 0, nights: 0 },
  evolve: (state: typeof Occupancy.Type, event: BookingPlaced) => ({
    bookings: state.bookings + 1,
    nights: state.nights + event.nights
  }),
  documentId: (event: BookingPlaced) => event.roomId,
  state: Occupancy
})

const recorded = (roomId: string, version: number): RecordedEvent => ({
  ...codec.encode(new BookingPlaced({ roomId, nights: version }), {
    eventId: `${roomId}:${version}`,
    metadata: { timestamp: "2024-05-01T10:00:00.000Z" }
  }),
  streamId: `bookings-${roomId}`,
  version
})

// Fast and bounded: three retries a few milliseconds apart, for the store and for conflicts.
const retry = Schedule.spaced("5 millis").pipe(Schedule.intersect(Schedule.recurs(3)))
const timeout = "300 millis"

const setup = Effect.gen(function*() {
  const proxy = yield* startProxy(azurite.tableEndpoint)
  const store = yield* AzureTableProjectionStore.make({
    connectionString: proxy.connectionString,
    tableName: table,
    retry,
    timeout
  })
  proxy.log.length = 0
  const project = (roomId: string, version: number) =>
    Projector.project(occupancy, codec, recorded(roomId, version), { retry }).pipe(
      Effect.provideService(ProjectionStore, store)
    )
  return { proxy, store, project }
})

// Reads the document straight from Azurite, past the proxy.
const direct = TableClient.fromConnectionString(azurite.connectionString, table, {
  allowInsecureConnection: true,
  retryOptions: { maxRetries: 0 }
})

const stored = (roomId: string) =>
  Effect.promise(() => direct.getEntity<{ State: string; Positions: string }>(`occupancy:${roomId}`, "doc")).pipe(
    Effect.map((row) => ({ state: JSON.parse(row.State) as unknown, positions: JSON.parse(row.Positions) as unknown }))
  )

describe("AzureTableProjectionStore under faults", () => {
  it.scopedLive("retries error answers to reads and writes, then succeeds", () =>
    Effect.gen(function*() {
      const { project, proxy } = yield* setup
      const roomId = newRoomId("busy")
      proxy.inject(isGet, serverBusy)
      proxy.inject(isInsert, serverBusy, { kind: "status", status: 500, code: "InternalError" })
      const first = yield* project(roomId, 1)
      assert.strictEqual(first._tag, "Updated")
      assert.deepStrictEqual(proxy.log, ["GET status", "GET ok", "POST status", "POST status", "POST ok"])

      // The document is cached now: the next update is a conditional replace, without a read.
      proxy.log.length = 0
      proxy.inject(isReplace, serverBusy, { kind: "reset" })
      const second = yield* project(roomId, 2)
      assert.strictEqual(second._tag, "Updated")
      assert.deepStrictEqual(proxy.log, ["PUT status", "PUT reset", "PUT ok"])
      assert.deepStrictEqual(yield* stored(roomId), {
        state: { bookings: 2, nights: 3 },
        positions: { [`bookings-${roomId}`]: 2 }
      })
    }))

  it.scopedLive("retries a request held past the timeout", () =>
    Effect.gen(function*() {
      const { project, proxy } = yield* setup
      const roomId = newRoomId("hang")
      proxy.inject(isGet, { kind: "hang" })
      const result = yield* project(roomId, 1)
      assert.strictEqual(result._tag, "Updated")
      assert.deepStrictEqual(proxy.log, ["GET hang", "GET ok", "POST ok"])
    }))

  it.scopedLive("a replace committed whose answer is lost is applied once", () =>
    Effect.gen(function*() {
      const { project, proxy } = yield* setup
      const roomId = newRoomId("lost-replace")
      yield* project(roomId, 1)
      proxy.log.length = 0
      // The replace lands, its answer does not; the store sends it again with the same If-Match,
      // which now fails (412): a conflict. The projector reads, and the positions say the event
      // is applied.
      proxy.inject(isReplace, { kind: "resetAfter" })
      const result = yield* project(roomId, 2)
      assert.deepStrictEqual(result, { _tag: "Skipped", documentId: roomId, lastApplied: 2 })
      assert.deepStrictEqual(proxy.log, ["PUT resetAfter", "PUT ok", "GET ok"])
      assert.deepStrictEqual(yield* stored(roomId), {
        state: { bookings: 2, nights: 3 },
        positions: { [`bookings-${roomId}`]: 2 }
      })

      // The read refreshed the cache: the next update is one write again.
      proxy.log.length = 0
      const third = yield* project(roomId, 3)
      assert.strictEqual(third._tag, "Updated")
      assert.deepStrictEqual(proxy.log, ["PUT ok"])
      assert.deepStrictEqual(yield* stored(roomId), {
        state: { bookings: 3, nights: 6 },
        positions: { [`bookings-${roomId}`]: 3 }
      })
    }))

  it.scopedLive("an insert committed whose answer is lost is applied once", () =>
    Effect.gen(function*() {
      const { project, proxy } = yield* setup
      const roomId = newRoomId("lost-insert")
      // The insert lands, its answer is a reset; sent again, it finds the entity (409).
      proxy.inject(isInsert, { kind: "resetAfter" })
      const result = yield* project(roomId, 1)
      assert.deepStrictEqual(result, { _tag: "Skipped", documentId: roomId, lastApplied: 1 })
      assert.deepStrictEqual(proxy.log, ["GET ok", "POST resetAfter", "POST ok", "GET ok"])
      assert.deepStrictEqual(yield* stored(roomId), {
        state: { bookings: 1, nights: 1 },
        positions: { [`bookings-${roomId}`]: 1 }
      })
    }))

  it.scopedLive("fails with ProjectionStoreUnavailable when the schedule runs out", () =>
    Effect.gen(function*() {
      const { project, proxy } = yield* setup
      const roomId = newRoomId("exhausted")
      yield* project(roomId, 1)
      proxy.log.length = 0
      proxy.inject(isReplace, serverBusy, serverBusy, serverBusy, serverBusy)
      const error = yield* Effect.flip(project(roomId, 2))
      assert.instanceOf(error, ProjectionStoreUnavailable)
      if (error instanceof ProjectionStoreUnavailable) {
        assert.deepStrictEqual(
          { operation: error.operation, documentId: error.documentId, code: error.code },
          { operation: "put", documentId: roomId, code: "ServerBusy" }
        )
      }
      assert.deepStrictEqual(proxy.log, ["PUT status", "PUT status", "PUT status", "PUT status"])
      // Nothing was written; the next delivery applies the event (after a read: the failed write
      // may have landed, so the cache forgot the document).
      proxy.log.length = 0
      const retried = yield* project(roomId, 2)
      assert.strictEqual(retried._tag, "Updated")
      assert.deepStrictEqual(proxy.log, ["GET ok", "PUT ok"])
      assert.deepStrictEqual(yield* stored(roomId), {
        state: { bookings: 2, nights: 3 },
        positions: { [`bookings-${roomId}`]: 2 }
      })
    }))
})

// `Aggregate.handle` on streams of 10, 100 and 1,000 events, with and without snapshots, on
// AzureTableEventStore over Azurite in process. Each measured command appends one event, so the
// append is part of the time. With a snapshot every 10 events a handle reads the head row and at
// most 9 events whatever the stream's length, so its time should barely grow: the ratio is the
// time at 1,000 events over the time at 10, with snapshots.
import { Effect, ManagedRuntime } from "effect"
import * as Booking from "../examples/booking/Booking.js"
import * as Aggregate from "../src/Aggregate.js"
import * as AzureTableEventStore from "../src/AzureTableEventStore.js"
import type { EventData } from "../src/EventStore.js"
import { EventStore, limits } from "../src/EventStore.js"
import { startTables } from "../src/testing/Azurite.js"
import { median, report, sample } from "./util.js"

const sizes = [10, 100, 1000] as const
const snapshotEvery = 10
const iterations = 64
const rounds = 8

const plain = Aggregate.make({ decider: Booking.decider, events: Booking.events })
const withSnapshots = Aggregate.make({
  decider: Booking.decider,
  events: Booking.events,
  snapshot: { schema: Booking.State, schemaVersion: 1, every: snapshotEvery }
})

const day = (n: number) => new Date(Date.UTC(2030, 0, n))
// Alternating dates, so every command records an event.
const move = (n: number) => new Booking.ChangeDates({ checkIn: day(1 + (n % 2)), checkOut: day(5) })

const tables = await startTables()
const runtime = ManagedRuntime.make(
  AzureTableEventStore.layer({ connectionString: tables.connectionString, tableName: "snapshotbench" })
)

// A booking stream of exactly `size` events: placed with one guest, then date changes, appended
// in batches as large as one atomic write allows.
const seed = (streamId: string, size: number) =>
  Effect.gen(function*() {
    const store = yield* EventStore
    yield* Aggregate.handle(
      plain,
      streamId,
      new Booking.PlaceBooking({
        roomId: "101",
        capacity: 2,
        checkIn: day(1),
        checkOut: day(5),
        guests: ["Ada"],
        placedAt: day(1)
      })
    )
    let version = 2
    while (version < size) {
      const batch: Array<EventData> = []
      while (batch.length < limits.maxEventsPerAppend && version + batch.length < size) {
        const n = version + batch.length
        batch.push(Booking.events.encode(new Booking.DatesChanged({ checkIn: day(1 + (n % 2)), checkOut: day(5) }), {
          eventId: `${streamId}-${n}`,
          metadata: { timestamp: new Date(0).toISOString() }
        }))
      }
      version = (yield* store.append(streamId, version, batch)).version
    }
  })

interface Case {
  readonly size: number
  readonly snapshots: boolean
  readonly streamId: string
  readonly times: Array<number>
  n: number
}

const run = Date.now().toString(36)
const cases: Array<Case> = []
for (const size of sizes) {
  for (const snapshots of [true, false]) {
    const streamId = `bench-${run}-${size}-${snapshots ? "snap" : "full"}`
    await runtime.runPromise(seed(streamId, size))
    cases.push({ size, snapshots, streamId, times: [], n: 0 })
  }
}

const handleOnce = (c: Case) =>
  runtime.runPromise(Aggregate.handle(c.snapshots ? withSnapshots : plain, c.streamId, move(++c.n)))

// Warms up the code paths and the connection on a stream of its own before anything is timed.
const warmup: Case = { size: 10, snapshots: true, streamId: `bench-${run}-warmup`, times: [], n: 0 }
await runtime.runPromise(seed(warmup.streamId, warmup.size))
for (let i = 0; i < 20; i++) await handleOnce(warmup)

// Rounds over every case, so drift in the machine's load affects all of them alike. The first
// round's warm-up also writes the first snapshot of the snapshotted streams.
for (let round = 0; round < rounds; round++) {
  for (const c of cases) {
    c.times.push(
      ...(await sample(() => handleOnce(c), { iterations: iterations / rounds, warmup: round === 0 ? 3 : 0 }))
    )
  }
}

await runtime.dispose()
await tables.close()

const medianOf = (size: number, snapshots: boolean) =>
  median(cases.find((c) => c.size === size && c.snapshots === snapshots)!.times)

report(
  "snapshot-load",
  medianOf(1000, true) / medianOf(10, true),
  "<=",
  1.5,
  `AzureTableEventStore on Azurite, median ms per handle (snapshot every ${snapshotEvery} / none): ${
    sizes.map((size) => `${size} events ${medianOf(size, true).toFixed(2)} / ${medianOf(size, false).toFixed(2)}`)
      .join(", ")
  }`
)

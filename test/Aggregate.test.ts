import { assert, describe, it } from "@effect/vitest"
import type { Layer } from "effect"
import {
  Array as Arr,
  Effect,
  Either,
  Exit,
  Fiber,
  Logger,
  Option,
  Redacted,
  Schedule,
  Schema,
  TestClock
} from "effect"
import { inject } from "vitest"
import * as Booking from "../examples/booking/Booking.js"
import * as Aggregate from "../src/Aggregate.js"
import * as AzureTableEventStore from "../src/AzureTableEventStore.js"
import * as Decider from "../src/Decider.js"
import * as EventCodec from "../src/EventCodec.js"
import type { AppendOptions, EventData, EventStoreService, LoadedStream } from "../src/EventStore.js"
import { EventStore, layerMemory } from "../src/EventStore.js"

const run = Math.random().toString(36).slice(2, 8)
let counter = 0
const newStream = () => Booking.streamId(`${run}-${++counter}`)

const day = (n: number) => new Date(Date.UTC(2030, 6, n, 14))
const now = Date.UTC(2030, 5, 1, 9, 30)

const place = (guests: Booking.PlaceBooking["guests"] = ["Ada"], capacity = 3) =>
  new Booking.PlaceBooking({ roomId: "101", capacity, checkIn: day(10), checkOut: day(12), guests, placedAt: day(1) })
const confirm = new Booking.ConfirmBooking({ confirmedAt: day(2) })
const cancel = new Booking.CancelBooking({ reason: "plans changed", cancelledAt: day(3) })
const changeDates = (checkIn: number, checkOut: number) =>
  new Booking.ChangeDates({ checkIn: day(checkIn), checkOut: day(checkOut) })
const addGuest = (name: string) => new Booking.AddGuest({ name })

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

// The Booking aggregate without snapshots, and with one every few events.
const bookings = Aggregate.make({ decider: Booking.decider, events: Booking.events })
const snapshotted = (every: number, schemaVersion = 1) =>
  Aggregate.make({
    decider: Booking.decider,
    events: Booking.events,
    snapshot: { schema: Booking.State, schemaVersion, every }
  })

interface Spy {
  readonly loads: Array<LoadedStream>
  readonly appends: Array<{ readonly expectedVersion: number; readonly events: ReadonlyArray<EventData> }>
  conflicts: number
}

// Wraps the store in the context, recording what goes through it. `interleave` yields after each
// load so that concurrent fibers really read the same version before appending, even in memory;
// `competitor` runs before each append, to play another writer.
const spying = <R>(
  options: {
    readonly interleave?: boolean
    readonly competitor?: (streamId: string) => Effect.Effect<void, never, R>
  } = {}
) =>
  Effect.gen(function*() {
    const store = yield* EventStore
    const spy: Spy = { loads: [], appends: [], conflicts: 0 }
    const service: EventStoreService = {
      read: store.read,
      load: (streamId, loadOptions) =>
        store.load(streamId, loadOptions).pipe(
          Effect.tap((loaded) => spy.loads.push(loaded)),
          Effect.zipLeft(options.interleave === true ? Effect.yieldNow() : Effect.void)
        ),
      append: (streamId, expectedVersion, events, appendOptions?: AppendOptions) =>
        Effect.suspend(() => options.competitor?.(streamId) ?? Effect.void).pipe(
          Effect.zipRight(store.append(streamId, expectedVersion, events, appendOptions)),
          Effect.tap(() => spy.appends.push({ expectedVersion, events })),
          Effect.tapErrorTag("ConcurrencyConflict", () => Effect.sync(() => spy.conflicts++))
        ) as Effect.Effect<never>
    }
    return { spy, service }
  })

// The state a sequential replay of everything stored gives, decoded with the codec.
const replayAll = (streamId: string) =>
  Effect.gen(function*() {
    const store = yield* EventStore
    const recorded = yield* store.read(streamId)
    const events = yield* Effect.forEach(recorded, Booking.events.decode)
    return { recorded, events, state: Decider.fold(Booking.decider, events) }
  })

const suite = <E>(backend: string, storeLayer: Layer.Layer<EventStore, E>) => {
  describe(`Aggregate on ${backend}`, () => {
    it.effect("handles a command on a new stream, with deterministic ids and metadata", () =>
      Effect.gen(function*() {
        yield* TestClock.setTime(now)
        const streamId = newStream()
        const result = yield* Aggregate.handle(bookings, streamId, place(["Ada", "Grace"]), {
          commandId: "cmd-1",
          correlationId: "request-7",
          properties: { tenant: "acme" }
        })
        assert.strictEqual(result.streamId, streamId)
        assert.strictEqual(result.version, 3)
        assert.deepStrictEqual(result.events.map((event) => event._tag), ["BookingPlaced", "GuestAdded", "GuestAdded"])
        assert.deepStrictEqual(result.state, Decider.fold(Booking.decider, result.events))
        const stored = yield* replayAll(streamId)
        assert.deepStrictEqual(stored.events, result.events)
        assert.deepStrictEqual(stored.recorded.map((event) => event.eventId), ["cmd-1:0", "cmd-1:1", "cmd-1:2"])
        assert.deepStrictEqual(result.recorded.map((event) => event.version), [1, 2, 3])
        for (const event of stored.recorded) {
          assert.deepStrictEqual(event.metadata, {
            timestamp: new Date(now).toISOString(),
            correlationId: "request-7",
            causationId: "cmd-1",
            properties: { tenant: "acme" }
          })
        }
      }).pipe(Effect.provide(storeLayer)))

    it.effect("handles a command on an existing stream at its version", () =>
      Effect.gen(function*() {
        const streamId = newStream()
        yield* Aggregate.handle(bookings, streamId, place())
        const { service, spy } = yield* spying()
        const result = yield* Aggregate.handle(bookings, streamId, confirm).pipe(
          Effect.provideService(EventStore, service)
        )
        assert.strictEqual(result.version, 3)
        assert.deepStrictEqual(result.events, [new Booking.BookingConfirmed({ confirmedAt: day(2) })])
        assert.strictEqual(result.state._tag === "Booking" && result.state.status, "Confirmed")
        assert.deepStrictEqual(spy.appends.map((append) => append.expectedVersion), [2])
        const loaded = yield* Aggregate.load(bookings, streamId)
        assert.deepStrictEqual(loaded, { streamId, version: 3, state: result.state })
      }).pipe(Effect.provide(storeLayer)))

    it.effect("gives events random UUIDs without a command id, and uses the aggregate's command id reader", () =>
      Effect.gen(function*() {
        const first = yield* Aggregate.handle(bookings, newStream(), place(["Ada", "Grace"]))
        const ids = first.recorded.map((event) => event.eventId)
        assert.isTrue(ids.every((id) => uuid.test(id)))
        assert.strictEqual(new Set(ids).size, 3)
        assert.isUndefined(first.recorded[0].metadata.causationId)

        const keyed = Aggregate.make({
          decider: Booking.decider,
          events: Booking.events,
          commandId: (command) => command._tag === "PlaceBooking" ? `place-${command.roomId}` : undefined
        })
        const second = yield* Aggregate.handle(keyed, newStream(), place())
        assert.deepStrictEqual(second.recorded.map((event) => event.eventId), ["place-101:0", "place-101:1"])
      }).pipe(Effect.provide(storeLayer)))

    it.effect("passes domain errors through, typed, writing nothing and without retrying", () =>
      Effect.gen(function*() {
        const streamId = newStream()
        yield* Aggregate.handle(bookings, streamId, place())
        yield* Aggregate.handle(bookings, streamId, cancel)
        const { service, spy } = yield* spying()
        const error = yield* Aggregate.handle(bookings, streamId, confirm).pipe(
          Effect.provideService(EventStore, service),
          Effect.flip
        )
        assert.instanceOf(error, Booking.BookingIsCancelled)
        assert.strictEqual(spy.loads.length, 1)
        assert.strictEqual(spy.appends.length, 0)
        assert.strictEqual((yield* replayAll(streamId)).recorded.length, 3)
      }).pipe(Effect.provide(storeLayer)))

    it.effect("a command that produces no events writes nothing", () =>
      Effect.gen(function*() {
        const streamId = newStream()
        yield* Aggregate.handle(bookings, streamId, place())
        const { service, spy } = yield* spying()
        const result = yield* Aggregate.handle(bookings, streamId, addGuest("Ada")).pipe(
          Effect.provideService(EventStore, service)
        )
        assert.deepStrictEqual(result.events, [])
        assert.deepStrictEqual(result.recorded, [])
        assert.strictEqual(result.version, 2)
        assert.strictEqual(spy.appends.length, 0)
        assert.strictEqual((yield* replayAll(streamId)).recorded.length, 2)
      }).pipe(Effect.provide(storeLayer)))

    it.effect("a stored event that cannot be decoded fails with a DecodeError, not a crash", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStream()
        yield* Aggregate.handle(bookings, streamId, place())
        yield* store.append(streamId, 2, [{
          eventId: "foreign-1",
          type: "RoomUpgraded",
          schemaVersion: 1,
          data: { to: "suite" },
          metadata: { timestamp: new Date(0).toISOString() }
        }])
        const error = yield* Effect.flip(Aggregate.handle(bookings, streamId, confirm))
        assert.strictEqual(error._tag, "DecodeError")
        if (error._tag === "DecodeError") {
          assert.strictEqual(error.streamId, streamId)
          assert.strictEqual(error.version, 3)
          assert.strictEqual(error.type, "RoomUpgraded")
        }
      }).pipe(Effect.provide(storeLayer)))

    describe("snapshots", () => {
      it.effect("are stored with the append every N events, and loads read only newer events", () =>
        Effect.gen(function*() {
          const store = yield* EventStore
          const aggregate = snapshotted(5)
          const streamId = newStream()
          yield* Aggregate.handle(aggregate, streamId, place(["Ada", "Grace"])) // versions 1-3
          yield* Aggregate.handle(aggregate, streamId, changeDates(11, 13)) // 4
          const none = yield* store.load(streamId, { snapshotSchemaVersion: 1 })
          assert.isTrue(Option.isNone(none.snapshot))

          const fifth = yield* Aggregate.handle(aggregate, streamId, addGuest("Alan")) // 5: snapshot
          const atFive = yield* store.load(streamId, { snapshotSchemaVersion: 1 })
          assert.strictEqual(atFive.version, 5)
          assert.deepStrictEqual(atFive.events, [])
          assert.isTrue(Option.isSome(atFive.snapshot))
          const snapshot = Option.getOrThrow(atFive.snapshot)
          assert.strictEqual(snapshot.version, 5)
          assert.strictEqual(snapshot.schemaVersion, 1)
          assert.deepStrictEqual(yield* Schema.decodeUnknown(Booking.State)(snapshot.state), fifth.state)

          yield* Aggregate.handle(aggregate, streamId, confirm) // 6
          const { service, spy } = yield* spying()
          const seventh = yield* Aggregate.handle(aggregate, streamId, changeDates(12, 14)).pipe(
            Effect.provideService(EventStore, service)
          ) // 7
          // The handle started from the snapshot at 5 and read only event 6.
          assert.strictEqual(spy.loads.length, 1)
          assert.deepStrictEqual(Option.map(spy.loads[0].snapshot, (snapshot) => snapshot.version), Option.some(5))
          assert.deepStrictEqual(spy.loads[0].events.map((event) => event.version), [6])
          // And the snapshot path agrees with a full replay.
          assert.deepStrictEqual(seventh.state, (yield* replayAll(streamId)).state)
          assert.deepStrictEqual((yield* Aggregate.load(aggregate, streamId)).state, seventh.state)
        }).pipe(Effect.provide(storeLayer)))

      it.effect("a snapshot of another schema version is ignored, and replaced once N events are due", () =>
        Effect.gen(function*() {
          const store = yield* EventStore
          const streamId = newStream()
          yield* Aggregate.handle(snapshotted(2), streamId, place(["Ada", "Grace"])) // snapshot v1 at 3
          const upgraded = snapshotted(2, 2)
          const loaded = yield* Aggregate.load(upgraded, streamId)
          assert.deepStrictEqual(loaded.state, (yield* replayAll(streamId)).state)
          yield* Aggregate.handle(upgraded, streamId, confirm) // 4 events since no usable snapshot
          const stored = yield* store.load(streamId, { snapshotSchemaVersion: 2 })
          assert.deepStrictEqual(Option.map(stored.snapshot, (snapshot) => snapshot.version), Option.some(4))
        }).pipe(Effect.provide(storeLayer)))

      it.effect("a snapshot that cannot be decoded is skipped: the stream is replayed", () =>
        Effect.gen(function*() {
          const store = yield* EventStore
          const streamId = newStream()
          yield* Aggregate.handle(bookings, streamId, place(["Ada"]))
          // A snapshot written by a bug: right schema version, wrong shape.
          yield* store.append(
            streamId,
            2,
            [Booking.events.encode(new Booking.GuestAdded({ name: "Grace" }), {
              eventId: "g",
              metadata: { timestamp: "x" }
            })],
            { snapshot: { version: 3, schemaVersion: 1, state: { _tag: "Booking", guests: 7 } } }
          )
          const logs: Array<string> = []
          const logger = Logger.make(({ message }) => logs.push(String(message)))
          const loaded = yield* Aggregate.load(snapshotted(10), streamId).pipe(
            Effect.provide(Logger.replace(Logger.defaultLogger, logger))
          )
          assert.strictEqual(loaded.version, 3)
          assert.deepStrictEqual(loaded.state, (yield* replayAll(streamId)).state)
          assert.isTrue(logs.some((line) => line.includes("snapshot that cannot be decoded")))
        }).pipe(Effect.provide(storeLayer)))

      it.effect("a snapshot too large to store is left out, and the events are still appended", () =>
        Effect.gen(function*() {
          const store = yield* EventStore
          class Write extends Schema.TaggedClass<Write>()("Write", { pages: Schema.Int }) {}
          class Written extends Schema.TaggedClass<Written>()("Written", { text: Schema.String }) {}
          const page = "x".repeat(30_000)
          const notebook = Aggregate.make({
            decider: Decider.make({
              initialState: [] as ReadonlyArray<string>,
              evolve: (pages: ReadonlyArray<string>, event: Written) => [...pages, event.text],
              decide: (command: Write, _pages: ReadonlyArray<string>) =>
                Either.right(Arr.makeBy(command.pages, () => new Written({ text: page })))
            }),
            events: EventCodec.make(Written),
            snapshot: { schema: Schema.Array(Schema.String), schemaVersion: 1, every: 1 }
          })
          const streamId = `notebook-${run}-${++counter}`
          const result = yield* Aggregate.handle(notebook, streamId, new Write({ pages: 40 }))
          assert.strictEqual(result.version, 40)
          const stored = yield* store.load(streamId, { snapshotSchemaVersion: 1 })
          assert.isTrue(Option.isNone(stored.snapshot))
          assert.strictEqual(stored.events.length, 40)
        }).pipe(Effect.provide(storeLayer)))
    })

    describe("concurrency", () => {
      it.live("concurrent commands on one stream all succeed or fail with domain errors, and nothing is lost", () =>
        Effect.gen(function*() {
          const streamId = newStream()
          const capacity = 8
          yield* Aggregate.handle(bookings, streamId, place(["Guest 0"], capacity))
          const { service, spy } = yield* spying({ interleave: true })
          const retry = Schedule.exponential("5 millis").pipe(
            Schedule.union(Schedule.spaced("50 millis")),
            Schedule.jittered,
            Schedule.intersect(Schedule.recurs(100))
          )
          const fibers = 20
          const outcomes = yield* Effect.forEach(
            Arr.range(1, fibers),
            (n) =>
              Aggregate.handle(bookings, streamId, addGuest(`Guest ${n}`), { commandId: `add-${n}`, retry }).pipe(
                Effect.either
              ),
            { concurrency: "unbounded" }
          ).pipe(Effect.provideService(EventStore, service))

          const accepted = outcomes.filter(Either.isRight)
          const refused = outcomes.filter(Either.isLeft).map((outcome) => outcome.left)
          // The room sleeps 8 and already has one guest: exactly 7 get in, the others are refused.
          assert.strictEqual(accepted.length, capacity - 1)
          assert.deepStrictEqual(
            refused.map((error): string => error._tag),
            Arr.replicate("CapacityExceeded", fibers - capacity + 1)
          )
          assert.isAbove(spy.conflicts, 0, "the fibers should have collided")

          const stored = yield* replayAll(streamId)
          assert.strictEqual(stored.recorded.length, 1 + capacity)
          assert.deepStrictEqual(stored.recorded.map((event) => event.version), Arr.range(1, 1 + capacity))
          const added = stored.recorded.filter((event) => event.type === "GuestAdded").map((event) => event.eventId)
          assert.deepStrictEqual(
            added.slice(1).sort(),
            accepted.map((outcome) => outcome.right.recorded[0].eventId).sort()
          )
          const final = yield* Aggregate.load(bookings, streamId)
          assert.deepStrictEqual(final.state, stored.state)
          assert.strictEqual(final.version, stored.recorded.length)
          assert.strictEqual(final.state._tag === "Booking" && final.state.guests.length, capacity)
        }).pipe(Effect.provide(storeLayer)))

      it.effect("gives up with ConcurrencyConflict when conflicts outlast the retry schedule", () =>
        Effect.gen(function*() {
          const store = yield* EventStore
          const streamId = newStream()
          yield* Aggregate.handle(bookings, streamId, place())
          // Another writer gets in between every load and append.
          let competitor = 0
          const { service, spy } = yield* spying({
            competitor: (id) =>
              Effect.orDie(
                Effect.flatMap(store.load(id), ({ version }) =>
                  store.append(id, version, [
                    Booking.events.encode(new Booking.GuestAdded({ name: "Ada" }), {
                      eventId: `competitor-${++competitor}`,
                      metadata: { timestamp: new Date(0).toISOString() }
                    })
                  ]))
              )
          })
          const error = yield* Aggregate.handle(bookings, streamId, confirm, { retry: Schedule.recurs(3) }).pipe(
            Effect.provideService(EventStore, service),
            Effect.flip
          )
          assert.strictEqual(error._tag, "ConcurrencyConflict")
          if (error._tag === "ConcurrencyConflict") assert.strictEqual(error.streamId, streamId)
          assert.strictEqual(spy.loads.length, 4)
          assert.strictEqual(spy.conflicts, 4)
          assert.strictEqual(competitor, 4)
        }).pipe(Effect.provide(storeLayer)))
    })
  })
}

suite("the memory store", layerMemory)
suite(
  "AzureTableEventStore (Azurite)",
  AzureTableEventStore.layer({
    connectionString: Redacted.make(inject("azurite").connectionString),
    tableName: `aggregate${run}`
  })
)

describe("Aggregate", () => {
  it("make refuses a snapshot interval that is not a positive integer", () => {
    assert.throws(
      () =>
        Aggregate.make({
          decider: Booking.decider,
          events: Booking.events,
          snapshot: { schema: Booking.State, schemaVersion: 1, every: 0 }
        }),
      /positive integer/
    )
  })

  it.effect("the default conflict retry makes 8 more attempts with growing, capped backoff, on the Clock", () =>
    Effect.gen(function*() {
      const store = yield* EventStore
      const streamId = newStream()
      yield* Aggregate.handle(bookings, streamId, place())
      let version = 2
      const { service, spy } = yield* spying({
        competitor: (id) =>
          Effect.orDie(store.append(id, version++, [
            Booking.events.encode(new Booking.GuestAdded({ name: "Ada" }), {
              eventId: `competitor-${version}`,
              metadata: { timestamp: new Date(0).toISOString() }
            })
          ]))
      })
      const fiber = yield* Aggregate.handle(bookings, streamId, confirm).pipe(
        Effect.provideService(EventStore, service),
        Effect.fork
      )
      // Nothing happens until the clock moves: every retry waits.
      yield* Effect.yieldNow()
      assert.strictEqual(spy.loads.length, 1)
      let elapsed = 0
      while (Option.isNone(yield* Fiber.poll(fiber))) {
        yield* TestClock.adjust("10 millis")
        elapsed += 10
      }
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit))
      assert.strictEqual(spy.loads.length, 9)
      assert.strictEqual(spy.conflicts, 9)
      // 10, 20, 40, 80, 160 then 200 ms three times, each jittered by up to 20%.
      assert.isAtLeast(elapsed, 0.8 * 910)
      assert.isAtMost(elapsed, 1.2 * 910 + 10 * 9)
    }).pipe(Effect.provide(layerMemory)))
})

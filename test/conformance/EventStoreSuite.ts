// The contract every event store passes: registered once per implementation, so the memory store
// and the Azure adapter are held to the same semantics. Each test builds its store from the layer
// and uses stream ids of its own, so a layer over a shared table works too.
import { assert, describe, it } from "@effect/vitest"
import type { Layer } from "effect"
import { Array as Arr, Effect, Either, Metric, MetricState, Option } from "effect"
import type { EventData, EventMetadata, RecordedEvent } from "../../src/EventStore.js"
import { EventStore, limits } from "../../src/EventStore.js"

const metadata: EventMetadata = { timestamp: "2024-05-01T10:00:00.000Z" }

const event = (eventId: string, data: unknown = { n: eventId }, type = "Deposited"): EventData => ({
  eventId,
  type,
  schemaVersion: 1,
  data,
  metadata
})

const events = (prefix: string, count: number): Array<EventData> =>
  Arr.makeBy(count, (index) => event(`${prefix}-${index + 1}`, { index }))

const versions = (recorded: ReadonlyArray<RecordedEvent>): Array<number> => recorded.map((event) => event.version)

const ids = (recorded: ReadonlyArray<{ readonly eventId: string }>): Array<string> =>
  recorded.map((event) => event.eventId)

const sameEvent = (recorded: RecordedEvent, expected: EventData, streamId: string, version: number) => {
  assert.strictEqual(recorded.streamId, streamId)
  assert.strictEqual(recorded.version, version)
  assert.strictEqual(recorded.eventId, expected.eventId)
  assert.strictEqual(recorded.type, expected.type)
  assert.strictEqual(recorded.schemaVersion, expected.schemaVersion)
  assert.deepStrictEqual(recorded.data, expected.data)
  assert.deepStrictEqual(recorded.metadata, expected.metadata)
}

/**
 * Registers the event store contract tests under `name`, against the store the layer provides.
 */
export const eventStoreSuite = <E>(name: string, storeLayer: Layer.Layer<EventStore, E>): void => {
  const run = Math.random().toString(36).slice(2, 8)
  let counter = 0
  const newStreamId = (label: string) => `${label}-${run}-${++counter}`

  // Live services: stores may retry transient failures on a schedule and time out requests.
  const test = <A, E2>(title: string, body: () => Effect.Effect<A, E2, EventStore>) =>
    it.live(title, () => Effect.provide(body(), storeLayer))

  describe(name, () => {
    test("appends to a new stream and reads the events back in order", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("order")
        const appended = events("e", 3)
        const result = yield* store.append(streamId, 0, appended)
        assert.strictEqual(result.streamId, streamId)
        assert.strictEqual(result.version, 3)
        assert.deepStrictEqual(versions(result.events), [1, 2, 3])
        const read = yield* store.read(streamId)
        assert.strictEqual(read.length, 3)
        read.forEach((recorded, index) => sameEvent(recorded, appended[index], streamId, index + 1))
        assert.deepStrictEqual(result.events, read)
      }))

    test("an unknown stream reads as empty and loads at version 0", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("unknown")
        assert.deepStrictEqual(yield* store.read(streamId), [])
        const loaded = yield* store.load(streamId)
        assert.deepStrictEqual(loaded, { streamId, version: 0, snapshot: Option.none(), events: [] })
        const withSnapshot = yield* store.load(streamId, { snapshotSchemaVersion: 1 })
        assert.deepStrictEqual(withSnapshot, { streamId, version: 0, snapshot: Option.none(), events: [] })
      }))

    test("versions are contiguous across appends", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("versions")
        assert.strictEqual((yield* store.append(streamId, 0, events("a", 2))).version, 2)
        const second = yield* store.append(streamId, 2, events("b", 3))
        assert.strictEqual(second.version, 5)
        assert.deepStrictEqual(versions(second.events), [3, 4, 5])
        assert.strictEqual((yield* store.append(streamId, 5, events("c", 1))).version, 6)
        const read = yield* store.read(streamId)
        assert.deepStrictEqual(versions(read), [1, 2, 3, 4, 5, 6])
        assert.deepStrictEqual(ids(read), ["a-1", "a-2", "b-1", "b-2", "b-3", "c-1"])
        const loaded = yield* store.load(streamId)
        assert.strictEqual(loaded.version, 6)
        assert.deepStrictEqual(loaded.events, read)
      }))

    test("a stale expected version fails with the actual version and writes nothing", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("conflict")
        yield* store.append(streamId, 0, events("a", 2))

        const stale = yield* Effect.flip(store.append(streamId, 1, events("b", 1)))
        assert.strictEqual(stale._tag, "ConcurrencyConflict")
        assert.deepInclude(stale, { streamId, expectedVersion: 1, actualVersion: 2 })

        const recreate = yield* Effect.flip(store.append(streamId, 0, events("c", 1)))
        assert.deepInclude(recreate, { _tag: "ConcurrencyConflict", expectedVersion: 0, actualVersion: 2 })

        const ahead = yield* Effect.flip(store.append(streamId, 7, events("d", 1)))
        assert.deepInclude(ahead, { _tag: "ConcurrencyConflict", expectedVersion: 7, actualVersion: 2 })

        const missing = yield* Effect.flip(store.append(newStreamId("missing"), 3, events("e", 1)))
        assert.deepInclude(missing, { _tag: "ConcurrencyConflict", expectedVersion: 3, actualVersion: 0 })

        assert.deepStrictEqual(ids(yield* store.read(streamId)), ["a-1", "a-2"])
      }))

    test("reads ranges of versions", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("range")
        yield* store.append(streamId, 0, events("e", 10))
        assert.deepStrictEqual(versions(yield* store.read(streamId, { fromVersion: 4 })), [4, 5, 6, 7, 8, 9, 10])
        assert.deepStrictEqual(versions(yield* store.read(streamId, { toVersion: 3 })), [1, 2, 3])
        assert.deepStrictEqual(versions(yield* store.read(streamId, { fromVersion: 5, toVersion: 7 })), [5, 6, 7])
        assert.deepStrictEqual(versions(yield* store.read(streamId, { fromVersion: 10, toVersion: 10 })), [10])
        assert.deepStrictEqual(versions(yield* store.read(streamId, { fromVersion: 0, toVersion: 2 })), [1, 2])
        assert.deepStrictEqual(yield* store.read(streamId, { fromVersion: 11 }), [])
        assert.deepStrictEqual(yield* store.read(streamId, { fromVersion: 6, toVersion: 5 }), [])
        assert.deepStrictEqual(versions(yield* store.read(streamId, { toVersion: 99 })), Arr.range(1, 10))
      }))

    test("of concurrent appenders exactly one wins each round, and nothing is half-written", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("race")
        const fibers = 6
        const rounds = 4
        const perAppend = 3
        const winners: Array<number> = []
        for (let round = 0; round < rounds; round++) {
          const expectedVersion = round * perAppend
          const results = yield* Effect.all(
            Arr.makeBy(
              fibers,
              (fiber) =>
                Effect.either(store.append(streamId, expectedVersion, events(`r${round}-f${fiber}`, perAppend)))
            ),
            { concurrency: "unbounded" }
          )
          const won = results.flatMap((result, fiber) => Either.isRight(result) ? [fiber] : [])
          assert.strictEqual(won.length, 1, `round ${round}: exactly one winner`)
          winners.push(won[0])
          for (const result of results) {
            if (Either.isLeft(result)) {
              assert.deepInclude(result.left, {
                _tag: "ConcurrencyConflict",
                expectedVersion,
                actualVersion: expectedVersion + perAppend
              })
            } else {
              assert.strictEqual(result.right.version, expectedVersion + perAppend)
            }
          }
        }
        const read = yield* store.read(streamId)
        assert.deepStrictEqual(versions(read), Arr.range(1, rounds * perAppend))
        assert.deepStrictEqual(
          ids(read),
          winners.flatMap((fiber, round) => ids(events(`r${round}-f${fiber}`, perAppend)))
        )
      }))

    test("stores a snapshot with its append and loads it with the newer events", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("snapshot")
        yield* store.append(streamId, 0, events("a", 3), {
          snapshot: { version: 3, schemaVersion: 1, state: { balance: 30, owners: ["ann"] } }
        })
        yield* store.append(streamId, 3, events("b", 2))

        const loaded = yield* store.load(streamId, { snapshotSchemaVersion: 1 })
        assert.strictEqual(loaded.version, 5)
        assert.deepStrictEqual(
          loaded.snapshot,
          Option.some({ version: 3, schemaVersion: 1, state: { balance: 30, owners: ["ann"] } })
        )
        assert.deepStrictEqual(ids(loaded.events), ["b-1", "b-2"])
        assert.deepStrictEqual(versions(loaded.events), [4, 5])

        // Another schema version: the snapshot is ignored and every event is returned.
        const otherSchema = yield* store.load(streamId, { snapshotSchemaVersion: 2 })
        assert.isTrue(Option.isNone(otherSchema.snapshot))
        assert.deepStrictEqual(versions(otherSchema.events), [1, 2, 3, 4, 5])
        assert.strictEqual(otherSchema.version, 5)

        // Not asked for: no snapshot.
        const plain = yield* store.load(streamId)
        assert.isTrue(Option.isNone(plain.snapshot))
        assert.deepStrictEqual(versions(plain.events), [1, 2, 3, 4, 5])
      }))

    test("a snapshot at the current version loads with no events, and a newer one replaces it", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("snapshot-current")
        yield* store.append(streamId, 0, events("a", 2), {
          snapshot: { version: 2, schemaVersion: 1, state: { long: "x".repeat(500), list: [1, 2, 3] } }
        })
        const first = yield* store.load(streamId, { snapshotSchemaVersion: 1 })
        assert.strictEqual(first.version, 2)
        assert.deepStrictEqual(first.events, [])
        yield* store.append(streamId, 2, events("b", 1), { snapshot: { version: 3, schemaVersion: 1, state: 3 } })
        const second = yield* store.load(streamId, { snapshotSchemaVersion: 1 })
        assert.deepStrictEqual(second.snapshot, Option.some({ version: 3, schemaVersion: 1, state: 3 }))
        assert.deepStrictEqual(second.events, [])
      }))

    test("a snapshot is stored atomically with its append: a refused append stores none", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("snapshot-atomic")
        yield* store.append(streamId, 0, events("a", 1), { snapshot: { version: 1, schemaVersion: 1, state: "one" } })
        yield* store.append(streamId, 1, events("b", 1))
        const refused = yield* Effect.flip(
          store.append(streamId, 1, events("c", 1), { snapshot: { version: 2, schemaVersion: 1, state: "lost" } })
        )
        assert.strictEqual(refused._tag, "ConcurrencyConflict")
        const loaded = yield* store.load(streamId, { snapshotSchemaVersion: 1 })
        assert.deepStrictEqual(loaded.snapshot, Option.some({ version: 1, schemaVersion: 1, state: "one" }))
        assert.deepStrictEqual(ids(loaded.events), ["b-1"])
      }))

    test("accepts 99 events in one append and refuses 100 without writing", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        assert.strictEqual(limits.maxEventsPerAppend, 99)
        const full = newStreamId("limit-count")
        const result = yield* store.append(full, 0, events("e", 99))
        assert.strictEqual(result.version, 99)
        assert.strictEqual((yield* store.read(full)).length, 99)

        const tooMany = newStreamId("limit-count")
        const error = yield* Effect.flip(store.append(tooMany, 0, events("e", 100)))
        assert.deepInclude(error, { _tag: "AppendTooLarge", streamId: tooMany, eventCount: 100, maxEvents: 99 })
        assert.deepStrictEqual(yield* store.read(tooMany), [])
        assert.strictEqual((yield* store.load(tooMany)).version, 0)
      }))

    test("stores events larger than one string property and refuses one over 1 MiB", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("limit-size")
        // 200K characters: more than six 64 KiB string properties, less than 1 MiB in all.
        const large = event("large", { text: "ü".repeat(100_000) + "😀".repeat(50_000) })
        yield* store.append(streamId, 0, [large])
        const [read] = yield* store.read(streamId)
        sameEvent(read, large, streamId, 1)

        const huge = event("huge", { text: "x".repeat(600_000) })
        const error = yield* Effect.flip(store.append(streamId, 1, [event("small"), huge]))
        assert.deepInclude(error, { _tag: "EventTooLarge", streamId, index: 1, type: "Deposited" })
        assert.isTrue(error._tag === "EventTooLarge" && error.bytes > limits.maxEntityBytes)
        assert.deepStrictEqual(ids(yield* store.read(streamId)), ["large"])

        const longId = yield* Effect.flip(store.append(streamId, 1, [event("i".repeat(40_000))]))
        assert.deepInclude(longId, { _tag: "EventTooLarge", index: 0 })

        const snapshot = yield* Effect.flip(
          store.append(streamId, 1, [event("s")], {
            snapshot: { version: 2, schemaVersion: 1, state: "x".repeat(600_000) }
          })
        )
        assert.deepInclude(snapshot, { _tag: "EventTooLarge", index: -1, type: "$snapshot" })
        assert.strictEqual((yield* store.load(streamId)).version, 1)
      }))

    test("refuses an append over 4 MiB in all, accepts one just under", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        // Each event is close to 1 MiB as stored (UTF-16) and about 450 KB on the wire.
        const bulky = (prefix: string, count: number) =>
          Arr.makeBy(count, (index) => event(`${prefix}-${index}`, { text: "x".repeat(450_000) }))
        const tooMuch = newStreamId("limit-total")
        const error = yield* Effect.flip(store.append(tooMuch, 0, bulky("e", 10)))
        assert.deepInclude(error, { _tag: "AppendTooLarge", eventCount: 10, maxBytes: limits.maxAppendBytes })
        assert.isTrue(error._tag === "AppendTooLarge" && (error.bytes ?? 0) > limits.maxAppendBytes)
        assert.deepStrictEqual(yield* store.read(tooMuch), [])

        const fits = newStreamId("limit-total")
        assert.strictEqual((yield* store.append(fits, 0, bulky("e", 9))).version, 9)
        assert.strictEqual((yield* store.load(fits)).events.length, 9)
      }))

    test("refuses invalid stream ids everywhere", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        for (const streamId of ["", "a/b", "a\\b", "a#b", "a?b", "a\tb", "x".repeat(1025)]) {
          const onAppend = yield* Effect.flip(store.append(streamId, 0, events("e", 1)))
          assert.deepInclude(onAppend, { _tag: "InvalidStreamId", streamId })
          const onRead = yield* Effect.flip(store.read(streamId))
          assert.deepInclude(onRead, { _tag: "InvalidStreamId", streamId })
          const onLoad = yield* Effect.flip(store.load(streamId))
          assert.deepInclude(onLoad, { _tag: "InvalidStreamId", streamId })
        }
      }))

    test("accepts ids with any other characters", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("odd 'quoted' \"ids\" ü 日本 %20 + & = ~ $ : ;")
        yield* store.append(streamId, 0, events("e", 2), { snapshot: { version: 2, schemaVersion: 1, state: 2 } })
        yield* store.append(streamId, 2, events("f", 1))
        assert.deepStrictEqual(versions(yield* store.read(streamId, { fromVersion: 2 })), [2, 3])
        const loaded = yield* store.load(streamId, { snapshotSchemaVersion: 1 })
        assert.deepStrictEqual(ids(loaded.events), ["f-1"])
      }))

    test("round-trips data and metadata as JSON", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("json")
        const data = {
          text: "quotes \" ' and \\ backslashes, newlines\n\ttabs, unicode ü 日本 😀",
          numbers: [0, -1, 1.5, 1e21, Number.MAX_SAFE_INTEGER],
          nested: { deep: { deeper: [null, true, false, { empty: {} }] } },
          empty: ""
        }
        const withMetadata: EventData = {
          eventId: "rich",
          type: "Renamed",
          schemaVersion: 3,
          data,
          metadata: {
            correlationId: "corr-1",
            causationId: "cmd-1",
            timestamp: "2024-05-01T10:00:00.123Z",
            properties: { tenant: "t-1", "trace-parent": "00-abc-def-01" }
          }
        }
        const scalars = [event("string", "just a string"), event("number", 42), event("null", null)]
        const result = yield* store.append(streamId, 0, [withMetadata, ...scalars])
        const read = yield* store.read(streamId)
        sameEvent(read[0], withMetadata, streamId, 1)
        scalars.forEach((scalar, index) => sameEvent(read[index + 1], scalar, streamId, index + 2))
        assert.deepStrictEqual(result.events, read)
      }))

    test("an empty append writes nothing and checks the version", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("empty")
        assert.deepStrictEqual(yield* store.append(streamId, 0, []), { streamId, version: 0, events: [] })
        assert.strictEqual((yield* store.load(streamId)).version, 0)
        const onNew = yield* Effect.flip(store.append(streamId, 2, []))
        assert.deepInclude(onNew, { _tag: "ConcurrencyConflict", expectedVersion: 2, actualVersion: 0 })

        yield* store.append(streamId, 0, events("e", 2))
        assert.deepStrictEqual(yield* store.append(streamId, 2, []), { streamId, version: 2, events: [] })
        const stale = yield* Effect.flip(store.append(streamId, 1, []))
        assert.deepInclude(stale, { _tag: "ConcurrencyConflict", expectedVersion: 1, actualVersion: 2 })
        assert.deepStrictEqual(versions(yield* store.read(streamId)), [1, 2])
      }))

    test("repeating an append that was stored succeeds without writing it twice", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("idempotent")
        const first = yield* store.append(streamId, 0, events("a", 2))
        const again = yield* store.append(streamId, 0, events("a", 2))
        assert.deepStrictEqual(again, first)
        yield* store.append(streamId, 2, events("b", 1))
        // Still recognised once the stream has moved on.
        assert.strictEqual((yield* store.append(streamId, 0, events("a", 2))).version, 2)
        assert.deepStrictEqual(ids(yield* store.read(streamId)), ["a-1", "a-2", "b-1"])

        // Other events at those versions, or only some of them: a real conflict.
        const other = yield* Effect.flip(store.append(streamId, 0, events("z", 2)))
        assert.deepInclude(other, { _tag: "ConcurrencyConflict", expectedVersion: 0, actualVersion: 3 })
        const partial = yield* Effect.flip(store.append(streamId, 1, [event("a-2"), event("a-3")]))
        assert.deepInclude(partial, { _tag: "ConcurrencyConflict", expectedVersion: 1, actualVersion: 3 })
        assert.deepStrictEqual(ids(yield* store.read(streamId)), ["a-1", "a-2", "b-1"])
      }))

    test("counts committed appends, their events and conflicts", () =>
      Effect.gen(function*() {
        const store = yield* EventStore
        const streamId = newStreamId("metrics")
        const before = yield* appendCounts
        yield* store.append(streamId, 0, events("m", 3))
        yield* store.append(streamId, 3, [])
        yield* Effect.flip(store.append(streamId, 1, events("x", 1)))
        yield* store.append(streamId, 3, events("n", 1))
        const after = yield* appendCounts
        assert.deepStrictEqual({
          appends: after.appends - before.appends,
          events: after.events - before.events,
          conflicts: after.conflicts - before.conflicts
        }, { appends: 2, events: 4, conflicts: 1 })
      }))
  })
}

// The event store counters summed over their tags (each store tags them with its kind).
const appendCounts = Effect.map(Metric.snapshot, (pairs) => {
  const sum = (name: string) =>
    pairs.reduce(
      (total, pair) =>
        pair.metricKey.name === name && MetricState.isCounterState(pair.metricState)
          ? total + Number(pair.metricState.count)
          : total,
      0
    )
  return {
    appends: sum("effect_eventually_event_store_appends"),
    events: sum("effect_eventually_event_store_events_appended"),
    conflicts: sum("effect_eventually_event_store_conflicts")
  }
})

import { TableClient } from "@azure/data-tables"
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Exit, Fiber, Layer, Option, Redacted, TestClock } from "effect"
import { inject } from "vitest"
import * as AzureTableEventStore from "../src/AzureTableEventStore.js"
import type { EventData } from "../src/EventStore.js"
import { EventStore } from "../src/EventStore.js"
import { EventStoreUnavailable } from "../src/EventStoreError.js"
import * as Layout from "../src/internal/tableLayout.js"
import { eventStoreSuite } from "./conformance/EventStoreSuite.js"

const connectionString = inject("azurite").connectionString
const suffix = Math.random().toString(36).slice(2, 8)
const table = `conformance${suffix}`
const rawTable = `layout${suffix}`

const rawClient = (
  tableName: string,
  onRequest?: (request: { readonly method: string; readonly url: string }) => void
) => {
  const client = TableClient.fromConnectionString(connectionString, tableName, {
    allowInsecureConnection: true,
    retryOptions: { maxRetries: 0 }
  })
  if (onRequest !== undefined) {
    client.pipeline.addPolicy({
      name: "recordRequests",
      sendRequest: (request, next) => {
        onRequest(request)
        return next(request)
      }
    })
  }
  return client
}

const rowsOf = (client: TableClient, streamId: string) =>
  Effect.promise(async () => {
    const rows: Array<Record<string, unknown>> = []
    for await (const row of client.listEntities({ queryOptions: { filter: `PartitionKey eq '${streamId}'` } })) {
      rows.push(row)
    }
    return rows
  })

const event = (eventId: string, data: unknown = { eventId }): EventData => ({
  eventId,
  type: "Deposited",
  schemaVersion: 1,
  data,
  metadata: { timestamp: "2024-05-01T10:00:00.000Z", correlationId: "c-1" }
})

eventStoreSuite(
  "AzureTableEventStore conformance",
  AzureTableEventStore.layer({ connectionString: Redacted.make(connectionString), tableName: table })
)

describe("AzureTableEventStore", () => {
  // A store whose client records its requests ("METHOD path").
  const recordingStore = (tableName: string) =>
    Effect.gen(function*() {
      const requests: Array<string> = []
      const client = rawClient(tableName, (request) => {
        const url = new URL(request.url)
        requests.push(`${request.method} ${decodeURIComponent(url.pathname)}`)
      })
      // Day-long pending buckets: the outbox's index entry is written once per stream and store.
      const store = yield* AzureTableEventStore.fromClient(client, { pendingBucketSize: "1 day" })
      requests.length = 0 // forget the table creation
      return { store, requests, client }
    })

  it.live("stores one row per event and a head row, as documented", () =>
    Effect.gen(function*() {
      const { store } = yield* recordingStore(rawTable)
      const streamId = `layout-${suffix}`
      yield* store.append(streamId, 0, [event("e-1"), event("e-2", { text: "x".repeat(70_000) })], {
        snapshot: { version: 2, schemaVersion: 4, state: { total: 2 } }
      })
      const rows = yield* rowsOf(rawClient(rawTable), streamId)
      assert.deepStrictEqual(rows.map((row) => row.rowKey), ["0000000001", "0000000002", "~head"])
      const [first, second, head] = rows
      assert.deepInclude(first, {
        partitionKey: streamId,
        EventId: "e-1",
        Type: "Deposited",
        SchemaVersion: 1,
        Data: "{\"eventId\":\"e-1\"}",
        Metadata: "{\"timestamp\":\"2024-05-01T10:00:00.000Z\",\"correlationId\":\"c-1\"}"
      })
      // 70,011 characters of JSON: three string columns.
      assert.strictEqual(String(second.Data).length, Layout.maxStringChars)
      assert.strictEqual(String(second.Data_1).length, Layout.maxStringChars)
      assert.strictEqual(String(second.Data_2).length, 70_011 - 2 * Layout.maxStringChars)
      assert.notProperty(second, "Data_3")
      assert.deepInclude(head, {
        Version: 2,
        SnapshotVersion: 2,
        SnapshotSchemaVersion: 4,
        Snapshot: "{\"total\":2}"
      })
    }))

  it.live("costs: an append with a warm cache is one request, a load one or two", () =>
    Effect.gen(function*() {
      const { requests, store } = yield* recordingStore(table)
      const streamId = `cost-${suffix}`
      const count = <A, E>(effect: Effect.Effect<A, E>) =>
        Effect.gen(function*() {
          const before = requests.length
          yield* effect
          return requests.slice(before)
        })
      // The first append of a stream also writes its pending index entry (the outbox's).
      assert.strictEqual((yield* count(store.append(streamId, 0, [event("a")]))).length, 2)
      assert.strictEqual((yield* count(store.append(streamId, 1, [event("b")]))).length, 1)
      assert.strictEqual(
        (yield* count(
          store.append(streamId, 2, [event("c")], { snapshot: { version: 3, schemaVersion: 1, state: 3 } })
        )).length,
        1
      )
      assert.strictEqual((yield* count(store.load(streamId))).length, 1)
      // The snapshot is at the head's version: the point read is all.
      assert.strictEqual((yield* count(store.load(streamId, { snapshotSchemaVersion: 1 }))).length, 1)
      yield* store.append(streamId, 3, [event("d")])
      const load = yield* count(store.load(streamId, { snapshotSchemaVersion: 1 }))
      assert.strictEqual(load.length, 2)

      // Another process's store does not know the head: it reads it once, then its cache is warm.
      const { requests: otherRequests, store: other } = yield* recordingStore(table)
      yield* other.append(streamId, 4, [event("e")])
      assert.strictEqual(otherRequests.length, 3)
      yield* other.append(streamId, 5, [event("f")])
      assert.strictEqual(otherRequests.length, 4)

      // A load, or a read to the end, warms the cache too.
      const { requests: warmRequests, store: warm } = yield* recordingStore(table)
      yield* warm.load(streamId)
      assert.strictEqual(warmRequests.length, 1)
      yield* warm.append(streamId, 6, [event("f2")])
      assert.strictEqual(warmRequests.length, 3)
      yield* warm.read(streamId, { fromVersion: 7 })
      yield* other.append(streamId, 7, [event("f3")], {})
      // `other` was at 6: it reads the head once (4 → 6 requests in all, point read + batch).
      assert.strictEqual(otherRequests.length, 6)
      yield* warm.read(streamId, { fromVersion: 8 })
      yield* warm.append(streamId, 8, [event("f4")])
      assert.strictEqual(warmRequests.length, 6, "read to the end, then one batch")

      // The first store's cached ETag is stale now: If-Match refuses, and the conflict names the version.
      const stale = yield* Effect.flip(store.append(streamId, 4, [event("g")]))
      assert.deepInclude(stale, { _tag: "ConcurrencyConflict", expectedVersion: 4, actualVersion: 9 })
      const loaded = yield* store.load(streamId)
      assert.strictEqual(loaded.version, 9)
      yield* store.append(streamId, 9, [event("g")])
      assert.deepStrictEqual(
        (yield* store.read(streamId)).map((e) => e.eventId),
        ["a", "b", "c", "d", "e", "f", "f2", "f3", "f4", "g"]
      )
    }))

  it.live("a stale cached version is checked against the head before writing", () =>
    Effect.gen(function*() {
      const { store } = yield* recordingStore(table)
      const { store: other } = yield* recordingStore(table)
      const streamId = `stale-${suffix}`
      yield* store.append(streamId, 0, [event("a")])
      yield* other.append(streamId, 1, [event("b")])
      // The cache says 1; the caller expects 2 (it learnt it elsewhere): the head is read, and the append succeeds.
      assert.strictEqual((yield* store.append(streamId, 2, [event("c")])).version, 3)
    }))

  it.live("rows that do not decode fail with DecodeError", () =>
    Effect.gen(function*() {
      const { store } = yield* recordingStore(table)
      const raw = rawClient(table)
      const streamId = `corrupt-${suffix}`
      yield* store.append(streamId, 0, [event("a"), event("b")], {
        snapshot: { version: 2, schemaVersion: 1, state: {} }
      })
      yield* Effect.promise(() =>
        raw.updateEntity({ partitionKey: streamId, rowKey: "0000000002", Data: "{not json" }, "Merge")
      )
      const onRead = yield* Effect.flip(store.read(streamId))
      assert.deepInclude(onRead, { _tag: "DecodeError", streamId, version: 2, type: "Deposited" })
      assert.match(onRead.message, /Data: invalid JSON/)
      assert.deepInclude(yield* Effect.flip(store.load(streamId)), { _tag: "DecodeError", version: 2 })
      // Reads that do not reach the bad row still work.
      assert.strictEqual((yield* store.read(streamId, { toVersion: 1 })).length, 1)

      yield* Effect.promise(() =>
        raw.updateEntity({ partitionKey: streamId, rowKey: "~head", Snapshot: "[1, 2" }, "Merge")
      )
      const onLoad = yield* Effect.flip(store.load(streamId, { snapshotSchemaVersion: 1 }))
      assert.deepInclude(onLoad, { _tag: "DecodeError", streamId, version: 2, type: "$snapshot" })

      const missingColumn = `corrupt-column-${suffix}`
      yield* store.append(missingColumn, 0, [event("a")])
      yield* Effect.promise(() =>
        raw.updateEntity({ partitionKey: missingColumn, rowKey: "0000000001", EventId: "a" }, "Replace")
      )
      const onMissing = yield* Effect.flip(store.read(missingColumn))
      assert.deepInclude(onMissing, { _tag: "DecodeError", version: 1, type: "$unknown" })
    }))

  it.live("a missing table is a permanent failure when the store may not create it", () =>
    Effect.gen(function*() {
      const { requests, store } = yield* Effect.gen(function*() {
        const requests: Array<string> = []
        const client = rawClient(`missing${suffix}`, (request) => requests.push(request.method))
        const store = yield* AzureTableEventStore.fromClient(client, { createTable: false })
        return { requests, store }
      })
      const error = yield* Effect.flip(store.append("s-1", 0, [event("a")]))
      assert.deepInclude(error, { _tag: "EventStoreFailure", operation: "append", code: "TableNotFound" })
      assert.strictEqual(requests.length, 1, "not retried")
      assert.deepInclude(yield* Effect.flip(store.read("s-1")), { _tag: "EventStoreFailure", code: "TableNotFound" })
    }))

  it.live("creating a table that exists is fine", () =>
    Effect.gen(function*() {
      const options = { connectionString: Redacted.make(connectionString), tableName: `twice${suffix}` }
      yield* AzureTableEventStore.make(options)
      const store = yield* AzureTableEventStore.make(options)
      assert.strictEqual((yield* store.append("s-1", 0, [event("a")])).version, 1)
    }))

  it.live("layerConfig reads the documented environment variables", () =>
    Effect.gen(function*() {
      const provider = ConfigProvider.fromMap(
        new Map([["AZURE_STORAGE_CONNECTION_STRING", connectionString], ["EVENT_STORE_TABLE", `config${suffix}`]])
      )
      const streamId = `config-${suffix}`
      yield* Effect.gen(function*() {
        const store = yield* EventStore
        yield* store.append(streamId, 0, [event("a")])
      }).pipe(Effect.provide(AzureTableEventStore.layerConfig()), Effect.withConfigProvider(provider))
      // The table named by EVENT_STORE_TABLE holds the stream.
      assert.strictEqual((yield* rowsOf(rawClient(`config${suffix}`), streamId)).length, 2)

      const missing = yield* Layer.build(AzureTableEventStore.layerConfig()).pipe(
        Effect.scoped,
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map())),
        Effect.exit
      )
      assert.isTrue(Exit.isFailure(missing))
      assert.include(String(Exit.isFailure(missing) ? missing.cause : ""), "AZURE_STORAGE_ACCOUNT_URL")
    }))

  it.effect("refuses incomplete or invalid options", () =>
    Effect.gen(function*() {
      const neither = yield* Effect.flip(AzureTableEventStore.make({}))
      assert.deepInclude(neither, { _tag: "EventStoreFailure", operation: "configure" })
      const badTable = yield* Effect.flip(
        AzureTableEventStore.make({ connectionString: Redacted.make(connectionString), tableName: "no-dashes" })
      )
      assert.match(badTable.message, /table name/)
      const badString = yield* Effect.flip(
        AzureTableEventStore.make({ connectionString: Redacted.make("AccountKey=secret-value;nonsense") })
      )
      assert.deepInclude(badString, { _tag: "EventStoreFailure", operation: "configure" })
      assert.notInclude(badString.message, "secret-value")
    }))

  it.effect("the default retry schedule gives up after six attempts and about three seconds", () =>
    Effect.gen(function*() {
      let attempts = 0
      const fiber = yield* Effect.fork(
        Effect.suspend(() => {
          attempts++
          return Effect.fail(new EventStoreUnavailable({ operation: "test", reason: "down" }))
        }).pipe(Effect.retry(AzureTableEventStore.defaultRetrySchedule))
      )
      yield* TestClock.adjust("1 second")
      assert.isBelow(attempts, 6)
      yield* TestClock.adjust("10 seconds")
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit))
      assert.strictEqual(attempts, 6)
    }))

  describe("layout", () => {
    it("event row keys sort in version order, before the head row", () => {
      const keys = [1, 2, 9, 10, 99, 100, 12345, 2_147_483_647, Layout.maxVersion].map(Layout.eventRowKey)
      assert.deepStrictEqual([...keys, Layout.headRowKey].sort(), [...keys, Layout.headRowKey])
      assert.isTrue(keys.every((key) => key.length === Layout.versionDigits && Layout.isEventRowKey(key)))
      assert.isTrue(Layout.outboxRowKey > Layout.headRowKey)
    })

    it("long strings split into property-sized chunks, never inside a surrogate pair", () => {
      const value = "a" + "😀".repeat(Layout.maxStringChars)
      const chunks = Layout.splitString(value)
      assert.strictEqual(chunks.join(""), value)
      for (const chunk of chunks) {
        assert.isAtMost(chunk.length, Layout.maxStringChars)
        assert.isFalse(/[\ud800-\udbff]$/.test(chunk), "no chunk ends with a high surrogate")
        assert.isFalse(/^[\udc00-\udfff]/.test(chunk), "no chunk starts with a low surrogate")
      }
      assert.deepStrictEqual(Layout.splitString("short"), ["short"])
    })

    it("decodes what it encodes", () => {
      const data = { text: "é".repeat(100_000) }
      const row = Layout.encodeEvent("s-1", 7, event("e-7", data))
      const decoded = Layout.decodeEvent("s-1", row)
      assert.deepStrictEqual(
        decoded.pipe(Either.getRight, Option.map((recorded) => [recorded.version, recorded.data])),
        Option.some([7, data])
      )
    })
  })
})

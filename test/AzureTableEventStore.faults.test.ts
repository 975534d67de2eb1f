// Transient failures between the adapter and Table Storage, injected by a small HTTP proxy in front
// of Azurite: error answers, connection resets and requests held past the client's timeout, before
// or after the request reaches the service (after: the write is committed but the client does not
// know it).
import { TableClient } from "@azure/data-tables"
import { assert, describe, it } from "@effect/vitest"
import { Array as Arr, Effect, Redacted, Schedule } from "effect"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { inject } from "vitest"
import * as AzureTableEventStore from "../src/AzureTableEventStore.js"
import type { EventData } from "../src/EventStore.js"
import { connectionStringFor } from "../src/testing/Azurite.js"
import { isBatch, isGet, serverBusy, startProxy } from "./support/tableProxy.js"

const azurite = inject("azurite")
const table = `faults${Math.random().toString(36).slice(2, 8)}`
let counter = 0
const newStreamId = (label: string) => `${label}-${++counter}`

// Fast and bounded: three retries a few milliseconds apart.
const retry = Schedule.spaced("5 millis").pipe(Schedule.intersect(Schedule.recurs(3)))
const timeout = "300 millis"

const setup = Effect.gen(function*() {
  const proxy = yield* startProxy(azurite.tableEndpoint)
  const store = yield* AzureTableEventStore.make({
    connectionString: proxy.connectionString,
    tableName: table,
    retry,
    timeout
  })
  proxy.log.length = 0
  return { proxy, store }
})

// Reads the stream straight from Azurite, past the proxy.
const direct = TableClient.fromConnectionString(azurite.connectionString, table, {
  allowInsecureConnection: true,
  retryOptions: { maxRetries: 0 }
})

const rawRows = (streamId: string) =>
  Effect.promise(async () => {
    const rows: Array<Record<string, unknown>> = []
    for await (const row of direct.listEntities({ queryOptions: { filter: `PartitionKey eq '${streamId}'` } })) {
      rows.push(row)
    }
    return rows
  })

// The stream as stored: its event ids in key order and the head's version.
const stored = (streamId: string) =>
  rawRows(streamId).pipe(Effect.map((rows) => ({
    eventIds: rows.filter((row) => row.rowKey !== "~head").map((row) => row.EventId),
    version: rows.find((row) => row.rowKey === "~head")?.Version
  })))

const events = (prefix: string, count: number): Array<EventData> =>
  Arr.makeBy(count, (index) => ({
    eventId: `${prefix}-${index + 1}`,
    type: "Deposited",
    schemaVersion: 1,
    data: { amount: index },
    metadata: { timestamp: "2024-05-01T10:00:00.000Z" }
  }))

const idsOf = (prefix: string, count: number) => events(prefix, count).map((event) => event.eventId)

describe("AzureTableEventStore under faults", () => {
  it.scopedLive("retries error answers and resets, then succeeds", () =>
    Effect.gen(function*() {
      const { proxy, store } = yield* setup
      const streamId = newStreamId("retry")
      proxy.inject(isBatch, serverBusy, { kind: "reset" }, { kind: "status", status: 500, code: "InternalError" })
      const result = yield* store.append(streamId, 0, events("a", 3))
      assert.strictEqual(result.version, 3)
      // The pending index entry of the outbox is written first (PUT), once per stream and bucket.
      assert.deepStrictEqual(proxy.log, ["PUT ok", "POST status", "POST reset", "POST status", "POST ok"])
      assert.deepStrictEqual(yield* stored(streamId), { eventIds: idsOf("a", 3), version: 3 })
    }))

  it.scopedLive("retries a request held past the timeout", () =>
    Effect.gen(function*() {
      const { proxy, store } = yield* setup
      const streamId = newStreamId("timeout")
      yield* store.append(streamId, 0, events("a", 1))
      proxy.inject(isBatch, { kind: "hang" })
      assert.strictEqual((yield* store.append(streamId, 1, events("b", 2))).version, 3)
      assert.deepStrictEqual(proxy.log.slice(-2), ["POST hang", "POST ok"])
      assert.deepStrictEqual(yield* stored(streamId), { eventIds: [...idsOf("a", 1), ...idsOf("b", 2)], version: 3 })
    }))

  it.scopedLive("times out and retries on a client the caller owns too", () =>
    Effect.gen(function*() {
      const proxy = yield* startProxy(azurite.tableEndpoint)
      const client = TableClient.fromConnectionString(Redacted.value(proxy.connectionString), table, {
        allowInsecureConnection: true,
        retryOptions: { maxRetries: 0 }
      })
      const store = yield* AzureTableEventStore.fromClient(client, { retry, timeout, createTable: false })
      const streamId = newStreamId("own-client")
      proxy.inject(isBatch, { kind: "hang" }, { kind: "hangAfter" })
      assert.strictEqual((yield* store.append(streamId, 0, events("a", 2))).version, 2)
      // The third attempt meets the committed head (409); its own events are recognised.
      assert.deepStrictEqual(proxy.log, ["PUT ok", "POST hang", "POST hangAfter", "POST ok", "GET ok", "GET ok"])
      assert.deepStrictEqual(yield* stored(streamId), { eventIds: idsOf("a", 2), version: 2 })
    }))

  it.scopedLive("retries reads", () =>
    Effect.gen(function*() {
      const { proxy, store } = yield* setup
      const streamId = newStreamId("reads")
      yield* store.append(streamId, 0, events("a", 2), { snapshot: { version: 2, schemaVersion: 1, state: 2 } })
      proxy.inject(isGet, serverBusy, { kind: "reset" }, { kind: "hang" })
      const loaded = yield* store.load(streamId)
      assert.strictEqual(loaded.version, 2)
      proxy.inject(isGet, serverBusy)
      const withSnapshot = yield* store.load(streamId, { snapshotSchemaVersion: 1 })
      assert.strictEqual(withSnapshot.version, 2)
      assert.deepStrictEqual(proxy.log.filter((line) => line.startsWith("GET")), [
        "GET status",
        "GET reset",
        "GET hang",
        "GET ok",
        "GET status",
        "GET ok"
      ])
    }))

  it.scopedLive("gives up with EventStoreUnavailable when the schedule runs out, having written nothing", () =>
    Effect.gen(function*() {
      const { proxy, store } = yield* setup
      const streamId = newStreamId("exhausted")
      proxy.inject(isBatch, serverBusy, serverBusy, serverBusy, serverBusy)
      const error = yield* Effect.flip(store.append(streamId, 0, events("a", 2)))
      assert.deepInclude(error, {
        _tag: "EventStoreUnavailable",
        operation: "append",
        streamId,
        code: "ServerBusy",
        reason: "Injected ServerBusy."
      })
      assert.strictEqual(proxy.log.length, 5, "the pending index entry, then one attempt and three retries")
      assert.deepStrictEqual(yield* rawRows(streamId), [])

      // A timeout on every attempt ends the same way.
      proxy.inject(isBatch, { kind: "hang" }, { kind: "hang" }, { kind: "hang" }, { kind: "hang" })
      const timedOut = yield* Effect.flip(store.append(streamId, 0, events("a", 2)))
      assert.deepInclude(timedOut, { _tag: "EventStoreUnavailable", code: "Timeout" })
      assert.deepStrictEqual(yield* rawRows(streamId), [])
    }))

  it.scopedLive("does not retry permanent failures", () =>
    Effect.gen(function*() {
      const { proxy, store } = yield* setup
      proxy.inject(isBatch, { kind: "status", status: 403, code: "AuthorizationFailure" })
      const error = yield* Effect.flip(store.append(newStreamId("forbidden"), 0, events("a", 1)))
      assert.deepInclude(error, { _tag: "EventStoreFailure", code: "AuthorizationFailure" })
      assert.deepStrictEqual(proxy.log, ["PUT ok", "POST status"])
    }))

  describe("an append committed whose answer was lost is not written twice", () => {
    for (
      const fault of [{ kind: "resetAfter" }, { kind: "hangAfter" }, { ...serverBusy, kind: "statusAfter" }] as const
    ) {
      it.scopedLive(`${fault.kind}, on a new stream and on an existing one`, () =>
        Effect.gen(function*() {
          const { proxy, store } = yield* setup
          const streamId = newStreamId(fault.kind)
          // New stream: the retried insert of the head meets the committed one (409).
          proxy.inject(isBatch, fault)
          const first = yield* store.append(streamId, 0, events("a", 2), {
            snapshot: { version: 2, schemaVersion: 1, state: "two" }
          })
          assert.strictEqual(first.version, 2)
          assert.deepStrictEqual(first.events.map((event) => event.eventId), idsOf("a", 2))
          // Existing stream: the retried If-Match meets the new ETag (412).
          proxy.inject(isBatch, fault)
          const second = yield* store.append(streamId, 2, events("b", 3))
          assert.strictEqual(second.version, 5)
          assert.deepStrictEqual(proxy.log.filter((line) => line.startsWith("POST")), [
            `POST ${fault.kind}`,
            "POST ok",
            `POST ${fault.kind}`,
            "POST ok"
          ])
          assert.deepStrictEqual(yield* stored(streamId), {
            eventIds: [...idsOf("a", 2), ...idsOf("b", 3)],
            version: 5
          })
          const loaded = yield* store.load(streamId, { snapshotSchemaVersion: 1 })
          assert.strictEqual(loaded.snapshot._tag, "Some")
          assert.deepStrictEqual(loaded.events.map((event) => event.eventId), idsOf("b", 3))
        }))
    }
  })

  it.scopedLive("a caller retrying an append that failed as unavailable but was committed succeeds once", () =>
    Effect.gen(function*() {
      const { proxy, store } = yield* setup
      const streamId = newStreamId("caller-retry")
      yield* store.append(streamId, 0, events("a", 1))
      proxy.inject(isBatch, { kind: "resetAfter" }, serverBusy, serverBusy, serverBusy)
      const error = yield* Effect.flip(store.append(streamId, 1, events("b", 2)))
      assert.strictEqual(error._tag, "EventStoreUnavailable")
      assert.deepStrictEqual(yield* stored(streamId), { eventIds: [...idsOf("a", 1), ...idsOf("b", 2)], version: 3 })

      const again = yield* store.append(streamId, 1, events("b", 2))
      assert.strictEqual(again.version, 3)
      assert.deepStrictEqual(yield* stored(streamId), { eventIds: [...idsOf("a", 1), ...idsOf("b", 2)], version: 3 })
      // Someone else's events at those versions are still a conflict.
      const other = yield* Effect.flip(store.append(streamId, 1, events("c", 2)))
      assert.deepInclude(other, { _tag: "ConcurrencyConflict", expectedVersion: 1, actualVersion: 3 })
    }))

  it.live("an unreachable service is unavailable, after retries", () =>
    Effect.gen(function*() {
      // A port that was free a moment ago: nothing listens there.
      const port = yield* Effect.async<number>((resume) => {
        const server = createServer()
        server.listen(0, "127.0.0.1", () => {
          const { port } = server.address() as AddressInfo
          server.close(() => resume(Effect.succeed(port)))
        })
      })
      const error = yield* Effect.flip(AzureTableEventStore.make({
        connectionString: connectionStringFor(`http://127.0.0.1:${port}/devstoreaccount1`),
        tableName: table,
        retry,
        timeout
      }))
      assert.deepInclude(error, { _tag: "EventStoreUnavailable", operation: "createTable", code: "ECONNREFUSED" })
    }))
})

import { TableClient } from "@azure/data-tables"
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Option, Redacted, Schedule } from "effect"
import { inject } from "vitest"
import * as AzureTableProjectionStore from "../src/AzureTableProjectionStore.js"
import { ProjectionStore } from "../src/ProjectionStore.js"
import { connectionStringFor } from "../src/testing/Azurite.js"
import { projectionStoreSuite } from "./conformance/ProjectionStoreSuite.js"

const connectionString = inject("azurite").connectionString
const suffix = Math.random().toString(36).slice(2, 8)
const table = `projections${suffix}`

projectionStoreSuite(
  "AzureTableProjectionStore conformance",
  AzureTableProjectionStore.layer({ connectionString: Redacted.make(connectionString), tableName: table })
)

describe("AzureTableProjectionStore", () => {
  const rawClient = (tableName: string) =>
    TableClient.fromConnectionString(connectionString, tableName, {
      allowInsecureConnection: true,
      retryOptions: { maxRetries: 0 }
    })

  it.live("stores one entity per document, keyed <projection>:<document id>, as documented", () =>
    Effect.gen(function*() {
      const layoutTable = `layout${suffix}`
      const store = yield* AzureTableProjectionStore.make({
        connectionString: Redacted.make(connectionString),
        tableName: layoutTable
      })
      const text = "z".repeat(40_000)
      const revision = yield* store.put("rooms", "room:101", { state: { text }, positions: { "booking-1": 4 } }, "new")
      const client = rawClient(layoutTable)
      const row = yield* Effect.promise(() => client.getEntity<Record<string, unknown>>("rooms:room:101", "doc"))
      assert.strictEqual(row.etag, revision)
      assert.strictEqual(row.State, JSON.stringify({ text }).slice(0, 32 * 1024))
      assert.strictEqual(row.State_1, JSON.stringify({ text }).slice(32 * 1024))
      assert.strictEqual(row.Positions, JSON.stringify({ "booking-1": 4 }))
    }))

  it.live("a damaged entity is a DocumentDecodeError", () =>
    Effect.gen(function*() {
      const store = yield* Effect.provide(
        ProjectionStore,
        AzureTableProjectionStore.layer({
          connectionString: Redacted.make(connectionString),
          tableName: table
        })
      )
      const client = rawClient(table)
      yield* Effect.promise(() =>
        client.upsertEntity({ partitionKey: `damaged:${suffix}`, rowKey: "doc", State: "{not json", Positions: "{}" })
      )
      const error = yield* Effect.flip(store.get("damaged", suffix))
      assert.deepInclude(error, { _tag: "DocumentDecodeError", projection: "damaged", documentId: suffix })
      yield* Effect.promise(() =>
        client.upsertEntity({ partitionKey: `damaged:p${suffix}`, rowKey: "doc", State: "1", Positions: "[1]" })
      )
      assert.strictEqual((yield* Effect.flip(store.get("damaged", `p${suffix}`)))._tag, "DocumentDecodeError")
    }))

  it.live("layerConfig reads PROJECTION_TABLE and the storage connection string", () =>
    Effect.gen(function*() {
      const configTable = `config${suffix}`
      const store = yield* Effect.provide(ProjectionStore, AzureTableProjectionStore.layerConfig()).pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(
          new Map([["AZURE_STORAGE_CONNECTION_STRING", connectionString], ["PROJECTION_TABLE", configTable]])
        ))
      )
      yield* store.put("cfg", "one", { state: 1, positions: {} }, "new")
      const row = yield* Effect.promise(() => rawClient(configTable).getEntity("cfg:one", "doc"))
      assert.strictEqual(row.State, "1")
      assert.isTrue(Option.isSome(yield* store.get("cfg", "one")))
    }))

  it.live("without a connection string or account URL, layerConfig fails with a readable message", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(
        Effect.provide(ProjectionStore, AzureTableProjectionStore.layerConfig()).pipe(
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map()))
        )
      )
      assert.include(String(error), "AZURE_STORAGE_CONNECTION_STRING")
    }))

  it.live("an invalid table name is a ProjectionStoreFailure", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(
        AzureTableProjectionStore.make({ connectionString: Redacted.make(connectionString), tableName: "no-dash" })
      )
      assert.strictEqual(error._tag, "ProjectionStoreFailure")
      assert.include(error.message, "table name")
    }))

  it.live("an unreachable service is retried under the schedule, then ProjectionStoreUnavailable", () =>
    Effect.gen(function*() {
      let attempts = 0
      const retry = Schedule.spaced("5 millis").pipe(
        Schedule.intersect(Schedule.recurs(2)),
        Schedule.tapInput(() => Effect.sync(() => attempts++))
      )
      // Nothing listens on port 1: every attempt is refused.
      const store = yield* AzureTableProjectionStore.make({
        connectionString: connectionStringFor("http://127.0.0.1:1/devstoreaccount1"),
        tableName: "unreachable",
        createTable: false,
        retry
      })
      const error = yield* Effect.flip(store.get("p", "doc"))
      assert.deepInclude(error, { _tag: "ProjectionStoreUnavailable", operation: "get", projection: "p" })
      assert.strictEqual(attempts, 3)
    }))
})

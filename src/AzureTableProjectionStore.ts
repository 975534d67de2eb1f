/**
 * The projection store on Azure Table Storage. One table holds the documents of every projection;
 * each document is one entity alone in its partition (`PartitionKey` = `"<projection>:<document
 * id>"`, validated, not encoded; `RowKey` = `"doc"`), so documents spread over partitions and
 * their writes do not compete for one partition's throughput. The entity holds the encoded state
 * (`State`) and the positions applied (`Positions`), split across columns when long, and a write
 * is one conditional request: an insert for a new document, a replace with `If-Match` on its ETag
 * otherwise.
 *
 * Transient failures (HTTP 500 / 503, timeouts, connection resets) are retried inside the adapter
 * under {@link defaultRetrySchedule} or the `retry` option; the SDK's own retries are turned off.
 * See `docs/projections.md`.
 *
 * @since 0.1.0
 */
import type { TableClient } from "@azure/data-tables"
import type { TokenCredential } from "@azure/identity"
import type { Duration, Redacted, Schedule } from "effect"
import { Config, Effect, Layer } from "effect"
import type { ConfigError } from "effect/ConfigError"
import * as internal from "./internal/azureTableProjectionStore.js"
import type { ProjectionStoreFailure, ProjectionStoreUnavailable } from "./ProjectionError.js"
import type { ProjectionStoreService } from "./ProjectionStore.js"
import { ProjectionStore } from "./ProjectionStore.js"

/**
 * Options of a store built on a client, whoever created it.
 *
 * @since 0.1.0
 * @category models
 */
export interface StoreOptions {
  /** Create the table when it is missing (an existing one is fine). `true` by default. */
  readonly createTable?: boolean
  /**
   * How transient failures are retried; {@link defaultRetrySchedule} by default. Only
   * `ProjectionStoreUnavailable` failures are retried; the schedule receives them as input.
   */
  readonly retry?: Schedule.Schedule<unknown, ProjectionStoreUnavailable>
  /** How long one attempt of one request may take before it is aborted and counts as transient. 30 seconds by default. */
  readonly timeout?: Duration.DurationInput
}

/**
 * Where the table is and how to reach it: a connection string, or an account URL with a
 * credential. With both, the connection string is used.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options extends StoreOptions {
  /** A storage account (or Azurite) connection string. */
  readonly connectionString?: Redacted.Redacted<string>
  /** The account's Table endpoint, `https://<account>.table.core.windows.net`. */
  readonly accountUrl?: string
  /** Used with `accountUrl`; `DefaultAzureCredential` from `@azure/identity` by default. */
  readonly credential?: TokenCredential
  /** The table holding the documents; `"projections"` by default. */
  readonly tableName?: string
}

/**
 * The retry policy used unless the `retry` option replaces it, the event store's: exponential
 * backoff from 100 milliseconds with jitter, each wait capped at 2 seconds, at most 5 retries.
 *
 * @since 0.1.0
 * @category models
 */
export const defaultRetrySchedule: Schedule.Schedule<unknown, ProjectionStoreUnavailable> =
  internal.defaultRetrySchedule

/**
 * The configuration read by {@link layerConfig} by default, from these environment variables:
 *
 * - `AZURE_STORAGE_CONNECTION_STRING` (secret): a connection string; or
 * - `AZURE_STORAGE_ACCOUNT_URL`: the account's Table endpoint, used with `DefaultAzureCredential`;
 * - `PROJECTION_TABLE`: the table name, `"projections"` by default.
 *
 * One of the first two is required; they are the event store's, so both stores share an account.
 *
 * @since 0.1.0
 * @category models
 */
export const config: Config.Config<Options> = internal.config

/**
 * Builds a projection store on a client it creates. Creates the table unless `createTable` is
 * `false`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (
  options: Options
) => Effect.Effect<ProjectionStoreService, ProjectionStoreFailure | ProjectionStoreUnavailable> = internal.make

/**
 * Builds a projection store on a client the caller owns. The table is the client's. Build the
 * client with `retryOptions: { maxRetries: 0 }`, or the SDK's retries multiply the adapter's.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromClient: (
  client: TableClient,
  options?: StoreOptions
) => Effect.Effect<ProjectionStoreService, ProjectionStoreFailure | ProjectionStoreUnavailable> = internal.fromClient

/**
 * A layer with a projection store on Azure Table Storage.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options
): Layer.Layer<ProjectionStore, ProjectionStoreFailure | ProjectionStoreUnavailable> =>
  Layer.effect(ProjectionStore, make(options))

/**
 * A layer with a projection store on a client the caller owns (see {@link fromClient}).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerFromClient = (
  client: TableClient,
  options?: StoreOptions
): Layer.Layer<ProjectionStore, ProjectionStoreFailure | ProjectionStoreUnavailable> =>
  Layer.effect(ProjectionStore, fromClient(client, options))

/**
 * A layer with a projection store configured from `Config`: by default from the environment
 * variables listed in {@link config}.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config.Wrap<Options> = config
): Layer.Layer<ProjectionStore, ConfigError | ProjectionStoreFailure | ProjectionStoreUnavailable> =>
  Layer.effect(ProjectionStore, Effect.flatMap(Config.unwrap(options), make))

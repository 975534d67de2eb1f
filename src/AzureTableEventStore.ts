/**
 * The event store on Azure Table Storage. One table holds every stream; one stream is one
 * partition (`PartitionKey` = the stream id, validated, not encoded). Event rows are keyed by
 * their zero-padded version; a head row (`RowKey` `"~head"`, sorted after the events) holds the
 * stream's version and its latest snapshot. An append is one entity group transaction: its event
 * rows are inserted and the head row is inserted (new stream) or updated with `If-Match` on its
 * ETag, so of concurrent appends exactly one commits.
 *
 * Transient failures (HTTP 500 / 503, timeouts, connection resets) are retried inside the adapter
 * under {@link defaultRetrySchedule} or the `retry` option; the SDK's own retries are turned off,
 * so that schedule is the only retry policy. A retried append whose earlier attempt was committed
 * is recognised by its event ids and succeeds without writing twice.
 *
 * See `docs/event-store.md` for the layout, the limits and the cost of each operation.
 *
 * @since 0.1.0
 */
import type { TableClient } from "@azure/data-tables"
import type { TokenCredential } from "@azure/identity"
import type { Duration, Redacted, Schedule } from "effect"
import { Config, Context, Effect, Layer } from "effect"
import type { ConfigError } from "effect/ConfigError"
import type { EventStoreService } from "./EventStore.js"
import { EventStore } from "./EventStore.js"
import type { EventStoreFailure, EventStoreUnavailable } from "./EventStoreError.js"
import * as internal from "./internal/azureTableEventStore.js"
import { OutboxStore } from "./OutboxStore.js"

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
   * `EventStoreUnavailable` failures are retried; the schedule receives them as input.
   */
  readonly retry?: Schedule.Schedule<unknown, EventStoreUnavailable>
  /**
   * How long one attempt of one operation may take (a point read, a whole query with its pages,
   * or one batch) before it counts as a transient failure and its request is cancelled.
   * 30 seconds by default.
   */
  readonly timeout?: Duration.DurationInput
  /**
   * How many stream heads (version and ETag) to remember, so an append after a load or an append
   * on the same stream skips reading the head first. 10,000 by default; 0 turns it off.
   */
  readonly headCacheCapacity?: number
  /**
   * The longest an append may take from its start to the start of its last attempt; later
   * attempts are not made and the append fails with `EventStoreUnavailable` (code
   * `AppendDeadlineExceeded`). With `timeout`, it bounds when an append can still commit, which
   * the outbox's sweep relies on (its grace period must be longer than both together). 1 minute
   * by default.
   */
  readonly maxAppendDuration?: Duration.DurationInput
  /** The length of a bucket of the outbox's pending index; 1 minute by default. */
  readonly pendingBucketSize?: Duration.DurationInput
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
  /** The table holding the events; `"events"` by default. */
  readonly tableName?: string
}

/**
 * The retry policy used unless the `retry` option replaces it: exponential backoff from
 * 100 milliseconds with jitter, each wait capped at 2 seconds, at most 5 retries (6 attempts,
 * about 3 seconds in all).
 *
 * @since 0.1.0
 * @category models
 */
export const defaultRetrySchedule: Schedule.Schedule<unknown, EventStoreUnavailable> = internal.defaultRetrySchedule

/**
 * The configuration read by {@link layerConfig} by default, from these environment variables:
 *
 * - `AZURE_STORAGE_CONNECTION_STRING` (secret): a connection string; or
 * - `AZURE_STORAGE_ACCOUNT_URL`: the account's Table endpoint, used with `DefaultAzureCredential`;
 * - `EVENT_STORE_TABLE`: the table name, `"events"` by default.
 *
 * One of the first two is required.
 *
 * @since 0.1.0
 * @category models
 */
export const config: Config.Config<Options> = internal.config

/**
 * Builds an event store on a client it creates. Creates the table unless `createTable` is
 * `false`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (options: Options) => Effect.Effect<EventStoreService, EventStoreFailure | EventStoreUnavailable> =
  internal.make

/**
 * Builds an event store on a client the caller owns. The table is the client's. Build the client
 * with `retryOptions: { maxRetries: 0 }`, or the SDK's retries multiply the adapter's.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromClient: (
  client: TableClient,
  options?: StoreOptions
) => Effect.Effect<EventStoreService, EventStoreFailure | EventStoreUnavailable> = internal.fromClient

const storesLayer = <E>(
  stores: Effect.Effect<internal.Stores, E>
): Layer.Layer<EventStore | OutboxStore, E> =>
  Layer.effectContext(
    Effect.map(
      stores,
      (stores) => Context.make(EventStore, stores.eventStore).pipe(Context.add(OutboxStore, stores.outboxStore))
    )
  )

/**
 * A layer with an event store on Azure Table Storage, and the `OutboxStore` over the same table
 * (so `Outbox.layer` can run on it).
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options
): Layer.Layer<EventStore | OutboxStore, EventStoreFailure | EventStoreUnavailable> =>
  storesLayer(internal.makeStores(options))

/**
 * A layer with an event store and its `OutboxStore` on a client the caller owns (see
 * {@link fromClient}).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerFromClient = (
  client: TableClient,
  options?: StoreOptions
): Layer.Layer<EventStore | OutboxStore, EventStoreFailure | EventStoreUnavailable> =>
  storesLayer(internal.storesFromClient(client, options))

/**
 * A layer with an event store configured from `Config`: by default from the environment
 * variables listed in {@link config}.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config.Wrap<Options> = config
): Layer.Layer<EventStore | OutboxStore, ConfigError | EventStoreFailure | EventStoreUnavailable> =>
  storesLayer(Effect.flatMap(Config.unwrap(options), internal.makeStores))

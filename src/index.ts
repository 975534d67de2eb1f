/**
 * effect-eventually: consistency across Azure services without distributed transactions.
 *
 * @since 0.1.0
 */

/**
 * Pure deciders: `initialState`, `evolve`, `decide`, and helpers to fold and run them.
 *
 * @since 0.1.0
 */
export * as Decider from "./Decider.js"

/**
 * Typed codecs between domain events (and snapshots) and the stored form.
 *
 * @since 0.1.0
 */
export * as EventCodec from "./EventCodec.js"

/**
 * Command handling: load, decide, append atomically, retry on conflict.
 *
 * @since 0.1.0
 */
export * as Aggregate from "./Aggregate.js"

/**
 * The event store port, its models and its in-memory implementation.
 *
 * @since 0.1.0
 */
export * as EventStore from "./EventStore.js"

/**
 * The event store on Azure Table Storage: layers, configuration and the default retry policy.
 *
 * @since 0.1.0
 */
export * as AzureTableEventStore from "./AzureTableEventStore.js"

/**
 * The typed failures of event stores.
 *
 * @since 0.1.0
 */
export * as EventStoreError from "./EventStoreError.js"

/**
 * Stream id validation and conventions.
 *
 * @since 0.1.0
 */
export * as StreamId from "./StreamId.js"

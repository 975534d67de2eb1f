/**
 * effect-eventually: consistency across Azure services without distributed transactions.
 *
 * @since 0.1.0
 */

/**
 * The event store port, its models and its in-memory implementation.
 *
 * @since 0.1.0
 */
export * as EventStore from "./EventStore.js"

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

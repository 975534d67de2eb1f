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

/**
 * The outbox: forwards committed events to Service Bus, at least once, in order per stream.
 *
 * @since 0.1.0
 */
export * as Outbox from "./Outbox.js"

/**
 * The port the outbox reads and writes: commits, dispatched positions and the pending index.
 *
 * @since 0.1.0
 */
export * as OutboxStore from "./OutboxStore.js"

/**
 * Outgoing and received messages, body codecs and deterministic message ids.
 *
 * @since 0.1.0
 */
export * as Message from "./Message.js"

/**
 * The message receiver port: peek-lock deliveries, settlements, lock renewal; memory and Service Bus.
 *
 * @since 0.1.0
 */
export * as MessageReceiver from "./MessageReceiver.js"

/**
 * The message sender port: atomic batch sends; memory broker and Service Bus.
 *
 * @since 0.1.0
 */
export * as MessageSender from "./MessageSender.js"

/**
 * The Azure Service Bus client as a scoped resource, its configuration and retry policy.
 *
 * @since 0.1.0
 */
export * as ServiceBusClient from "./ServiceBusClient.js"

/**
 * The typed failures of messaging, and which are transient.
 *
 * @since 0.1.0
 */
export * as ServiceBusError from "./ServiceBusError.js"

/**
 * AMQP 1.0 transactions on Service Bus: complete received messages and send new ones atomically.
 *
 * @since 0.1.0
 */
export * as ServiceBusTransaction from "./ServiceBusTransaction.js"

/**
 * Pure projections: fold events into one document, idempotently by per-stream positions.
 *
 * @since 0.1.0
 */
export * as Projection from "./Projection.js"

/**
 * The projection store port: one document per id, one conditional write per update.
 *
 * @since 0.1.0
 */
export * as ProjectionStore from "./ProjectionStore.js"

/**
 * The typed failures of projections and projection stores.
 *
 * @since 0.1.0
 */
export * as ProjectionError from "./ProjectionError.js"

/**
 * The projection store on Azure Table Storage.
 *
 * @since 0.1.0
 */
export * as AzureTableProjectionStore from "./AzureTableProjectionStore.js"

/**
 * Runs projections: applies one recorded event, or rebuilds a projection from the event store.
 *
 * @since 0.1.0
 */
export * as Projector from "./Projector.js"

/**
 * Runs handlers over a queue or subscription: one write per message, committed atomically with
 * its outgoing messages.
 *
 * @since 0.1.0
 */
export * as MessageProcessor from "./MessageProcessor.js"

/**
 * The message processor: a runtime that receives messages from a queue or a subscription in
 * peek-lock mode, runs the handler registered for each message's type (its `subject`), and then
 * settles the message together with the messages the handler sent.
 *
 * A handler does **one** write (an aggregate append, a projection update) and buffers its
 * outgoing messages through its {@link MessageContext}. The processor then commits:
 *
 * - **atomic** ({@link atomic}): the completion and every outgoing message in one Service Bus
 *   transaction, so a retry never leaves a ghost message or a duplicate behind;
 * - **idempotent** ({@link idempotent}, for the Basic tier or when transactions are off): the
 *   outgoing messages first, with deterministic ids that duplicate detection drops when they are
 *   sent again, then the completion;
 * - **memory** ({@link memory}): the idempotent commit over the `MessageReceiver` and
 *   `MessageSender` services in context, usually their memory layers, for tests.
 *
 * The handler code is the same in every mode. Failures are retried in process when transient,
 * then the message is abandoned (or rescheduled), and dead-lettered with a readable reason after
 * `maxAttempts`. See `docs/processor.md`.
 *
 * @since 0.1.0
 */
import type { Duration, Effect, Metric, Schedule, Scope, Stream } from "effect"
import { Context, Layer, Schema } from "effect"
import type { Aggregate, HandleError, HandleResult } from "./Aggregate.js"
import type { EventCodec } from "./EventCodec.js"
import type { EventStore } from "./EventStore.js"
import * as internal from "./internal/messageProcessor.js"
import * as transports from "./internal/messageProcessorTransport.js"
import type { OutgoingMessage, ReceivedMessage } from "./Message.js"
import type { LockRenewalOptions, MessageReceiver, Source } from "./MessageReceiver.js"
import type { MessageSender } from "./MessageSender.js"
import type { Projection } from "./Projection.js"
import type { ProjectionStore } from "./ProjectionStore.js"
import type { ProjectError, ProjectOptions } from "./Projector.js"
import type { MessageDecodeError, MessageEncodeError, ServiceError } from "./ServiceBusError.js"
import type { Connection, TransactionsUnsupported } from "./ServiceBusTransaction.js"

// ---------------------------------------------------------------------------------------------
// Errors

/**
 * No handler is registered for the message's subject. The message is dead-lettered at once.
 *
 * @since 0.1.0
 * @category errors
 */
export class UnknownMessageType extends Schema.TaggedError<UnknownMessageType>(
  "effect-eventually/UnknownMessageType"
)("UnknownMessageType", {
  entity: Schema.String,
  messageId: Schema.optional(Schema.String),
  subject: Schema.optional(Schema.String),
  known: Schema.Array(Schema.String)
}) {
  override get message(): string {
    return `No handler for message type ${
      this.subject === undefined ? "(no subject)" : `"${this.subject}"`
    } received from "${this.entity}" (message ${this.messageId ?? "without id"}); known types: ${
      this.known.join(", ") || "none"
    }. Register a handler for it, or stop sending it here.`
  }
}

/**
 * A handler died (threw, or failed with a defect) instead of failing with a typed error. The
 * processor keeps running; the message counts one failed attempt.
 *
 * @since 0.1.0
 * @category errors
 */
export class HandlerDefect extends Schema.TaggedError<HandlerDefect>("effect-eventually/HandlerDefect")(
  "HandlerDefect",
  {
    entity: Schema.String,
    messageId: Schema.optional(Schema.String),
    subject: Schema.optional(Schema.String),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `The handler of ${this.subject ?? "a message"} (message ${
      this.messageId ?? "without id"
    } from "${this.entity}") died: ${this.reason}. Fix the handler; the message is retried and dead-lettered after the maximum number of attempts.`
  }
}

/**
 * A message that carries an event (as the outbox sends it) lacks the stream id or version the
 * projection needs. Dead-lettered at once.
 *
 * @since 0.1.0
 * @category errors
 */
export class NotAnEventMessage extends Schema.TaggedError<NotAnEventMessage>("effect-eventually/NotAnEventMessage")(
  "NotAnEventMessage",
  {
    entity: Schema.String,
    messageId: Schema.optional(Schema.String),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Message ${
      this.messageId ?? "without id"
    } from "${this.entity}" does not carry an event: ${this.reason}. Events are expected as the outbox sends them (application properties "streamId" and "streamVersion").`
  }
}

/**
 * What starting a processor can fail with: the connection, the entity, or transactions that
 * cannot run.
 *
 * @since 0.1.0
 * @category errors
 */
export type StartError = ServiceError | TransactionsUnsupported

// ---------------------------------------------------------------------------------------------
// Handlers

/**
 * A message a handler sends: an `OutgoingMessage` whose id may be left out. A missing id is
 * derived from the received message's id and the position of the outgoing message
 * (`Message.idFromMessage`), so that a handler that runs again sends the same ids. A missing
 * correlation id is the received message's (or its id), a missing causation id is the received
 * message's id, and a missing `traceparent` is the handler span's.
 *
 * @since 0.1.0
 * @category models
 */
export interface Outgoing extends Omit<OutgoingMessage, "messageId"> {
  readonly messageId?: string
}

/**
 * The fields of a published message besides its body.
 *
 * @since 0.1.0
 * @category models
 */
export type PublishFields = Omit<Outgoing, "body">

/**
 * What a handler gets besides the decoded body: the received message's metadata and the means
 * to send messages. Sends are buffered and go out with the commit, atomically in atomic mode.
 * Send the same messages in the same order when the handler runs again for the same message:
 * their ids are derived from their positions.
 *
 * @since 0.1.0
 * @category models
 */
export interface MessageContext {
  /** The received message as it arrived. */
  readonly message: ReceivedMessage
  /** The queue or subscription path it came from. */
  readonly entity: string
  /**
   * The message's id; for a copy rescheduled by a delayed retry, the original message's id, so
   * that ids derived from it do not change from one attempt to the next.
   */
  readonly messageId: string
  readonly subject: string
  /** The received correlation id, or the message id when it had none. */
  readonly correlationId: string
  /** The received message's causation id, if any. */
  readonly causationId: string | undefined
  /** The broker's delivery count: 1 on the first delivery. */
  readonly deliveryCount: number
  /** The attempt, counting the deliveries of earlier rescheduled copies: 1 on the first. */
  readonly attempt: number
  /** In-process retries of this delivery so far: 0 on the first try. */
  readonly retry: number
  readonly enqueuedTime: Date
  /** The received W3C trace context, if any. */
  readonly traceparent: string | undefined
  /** Buffers messages for a queue or topic. */
  readonly send: (destination: string, messages: Outgoing | ReadonlyArray<Outgoing>) => Effect.Effect<void>
  /**
   * Encodes `body` with `schema` and buffers it for `destination`. The subject is the body's
   * `_tag` unless `fields.subject` says otherwise.
   */
  readonly publish: <A, I>(
    destination: string,
    schema: Schema.Schema<A, I>,
    body: A,
    fields?: PublishFields
  ) => Effect.Effect<void, MessageEncodeError>
}

/**
 * The context of the message being handled, as a service: provided to every handler, for code
 * that sends messages from deeper down.
 *
 * @since 0.1.0
 * @category services
 */
export class CurrentMessage extends Context.Tag("effect-eventually/MessageProcessor/CurrentMessage")<
  CurrentMessage,
  MessageContext
>() {}

/**
 * A handler of one message type: the schema of its body and what to do with it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Handler<out E, out R> {
  /** Decodes the received body; fails with `MessageDecodeError` (dead-lettered at once). */
  readonly decode: (message: ReceivedMessage) => Effect.Effect<unknown, MessageDecodeError>
  readonly handle: (body: unknown, context: MessageContext) => Effect.Effect<unknown, E, R>
}

/**
 * The error type of a handler, or of a record of handlers.
 *
 * @since 0.1.0
 * @category models
 */
export type HandlerError<H> = H extends Handler<infer E, infer _R> ? E : never

/**
 * The services a handler, or a record of handlers, needs.
 *
 * @since 0.1.0
 * @category models
 */
export type HandlerContext<H> = H extends Handler<infer _E, infer R> ? Exclude<R, CurrentMessage> : never

/**
 * Handlers by message type (subject).
 *
 * @since 0.1.0
 * @category models
 */
export type Handlers = Readonly<Record<string, Handler<unknown, unknown>>>

/**
 * A handler whose body is decoded with `schema`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const handler: <A, I, E, R>(
  schema: Schema.Schema<A, I>,
  handle: (body: A, context: MessageContext) => Effect.Effect<unknown, E, R>
) => Handler<E, R> = internal.handler

// ---------------------------------------------------------------------------------------------
// Transports

declare const TransportR: unique symbol

/**
 * How messages are received and committed, and what services that needs. Build one with
 * {@link atomic}, {@link idempotent} or {@link memory}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Transport<out R> {
  readonly mode: "atomic" | "idempotent"
  readonly name: string
  readonly [TransportR]?: (_: never) => R
}

/**
 * How a Service Bus transport connects.
 *
 * @since 0.1.0
 * @category models
 */
export interface ServiceBusOptions {
  readonly connection: Connection
  /** How long to wait for each answer of Service Bus; 30 s by default. */
  readonly operationTimeout?: Duration.DurationInput
}

/**
 * Atomic mode, the default wherever Service Bus has transactions (Standard and Premium tiers):
 * each message's completion and its handler's outgoing messages are committed in one Service Bus
 * transaction, on one AMQP connection per processor. Locks are renewed through the entity's
 * management link. When the connection is lost, the messages received on it are given up at
 * once (they can only be settled on it) and delivered again.
 *
 * @since 0.1.0
 * @category constructors
 */
export const atomic: (options: ServiceBusOptions) => Transport<never> = transports.atomic

/**
 * Idempotent mode, for the Basic tier or when transactions are turned off: outgoing messages are
 * sent first, with deterministic ids, then, once Service Bus has accepted them all, the message is
 * completed. A failure between the two redelivers the message, and its resent messages are
 * dropped by duplicate detection (turn it on for the destinations). It runs on one AMQP
 * connection per processor, like atomic mode, without ever asking for a transaction; when the
 * connection is lost, the messages received on it are given up at once and delivered again.
 *
 * @since 0.1.0
 * @category constructors
 */
export const idempotent: (options: ServiceBusOptions) => Transport<never> = transports.idempotent

/**
 * Memory mode: the idempotent commit over the `MessageReceiver` and `MessageSender` services in
 * context, usually `MessageReceiver.layerMemory` over `MessageSender.layerMemory`, for tests. The
 * same handler code sees the same semantics: a message completes only after its sends succeeded,
 * and resends carry the same ids.
 *
 * @since 0.1.0
 * @category constructors
 */
export const memory: Transport<MessageReceiver | MessageSender> = transports.memory

// ---------------------------------------------------------------------------------------------
// Options and the running processor

/**
 * The delay before the `attempt`-th delayed retry (1 for the first).
 *
 * @since 0.1.0
 * @category models
 */
export type RetryDelay = (attempt: number) => Duration.DurationInput

/**
 * Options of a processor: the source, the transport (mode), the handlers, concurrency and the
 * failure policy.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options<H extends Handlers, R> {
  /** The queue or subscription to process (`MessageReceiver.queue(...)`, `MessageReceiver.subscription(...)`). */
  readonly source: Source
  readonly transport: Transport<R>
  /** Handlers by message type (the `subject` of the received message). */
  readonly handlers: H
  /** Messages handled at once; 8 by default. */
  readonly concurrency?: number
  /** Queues and topics the handlers send to: their links are opened at start (others on first send). */
  readonly destinations?: ReadonlyArray<string>
  /** How long one receive waits for a message before it asks again; 10 seconds by default. */
  readonly receiveWait?: Duration.DurationInput
  /**
   * Which handler failures are worth retrying in process; by default the transient failures of
   * Service Bus, of transactions, of the event store and of the projection store.
   */
  readonly isTransient?: (error: HandlerError<H[keyof H]>) => boolean
  /** How transient failures are retried in process, before the message is abandoned; {@link defaultRetry} by default. */
  readonly retry?: Schedule.Schedule<unknown, unknown>
  /**
   * After a failed attempt, instead of abandoning the message (redelivered at once), complete it
   * and schedule a copy this much later, in one transaction in atomic mode. The attempt count
   * travels in the copy's `retryCount` property. Queues only; a subscription's message is
   * abandoned. Off by default.
   */
  readonly delayedRetry?: Duration.DurationInput | RetryDelay
  /**
   * Dead-letter a message whose handler failed this many attempts; 10 by default. Keep it at or
   * below the entity's `maxDeliveryCount`, so the dead-letter reason is the handler's error.
   */
  readonly maxAttempts?: number
  /**
   * Lock renewal while a handler runs; `false` to turn it off. Renewals are timed from the lock's
   * expiry as received (a lock almost gone when its message is handed over is renewed at once).
   */
  readonly lockRenewal?: LockRenewalOptions | false
  /** How long shutdown waits for in-flight messages before abandoning them; 30 seconds by default. */
  readonly shutdownTimeout?: Duration.DurationInput
}

/**
 * Counts since the processor started.
 *
 * @since 0.1.0
 * @category models
 */
export interface Stats {
  readonly received: number
  /** Handled and committed (completed with their outgoing messages). */
  readonly completed: number
  /** Abandoned for redelivery after a failed attempt, or left to their lock's expiry when they could not be settled. */
  readonly abandoned: number
  /** Completed and rescheduled as a copy (delayed retries). */
  readonly rescheduled: number
  readonly deadLettered: number
  /** In-process retries of transient failures. */
  readonly retries: number
  /** Commits that failed (nothing of them happened in atomic mode). */
  readonly commitFailures: number
  /** Messages being handled now. */
  readonly inFlight: number
}

/**
 * A running processor.
 *
 * @since 0.1.0
 * @category models
 */
export interface Processor {
  readonly source: Source
  readonly mode: "atomic" | "idempotent"
  readonly stats: Effect.Effect<Stats>
  /** Every change of the counts, starting with the current ones. */
  readonly changes: Stream.Stream<Stats>
  /** Waits until the counts satisfy `predicate` (a signal for tests and operations, not a sleep). */
  readonly awaitStats: (predicate: (stats: Stats) => boolean) => Effect.Effect<Stats>
  /**
   * Stops receiving, waits up to `shutdownTimeout` for the messages in flight, abandons the rest.
   * Closing the processor's scope does the same, then closes its links.
   */
  readonly shutdown: Effect.Effect<void>
}

/**
 * The running processor, as a service: its statistics and its shutdown.
 *
 * @since 0.1.0
 * @category services
 */
export class MessageProcessor extends Context.Tag("effect-eventually/MessageProcessor")<
  MessageProcessor,
  Processor
>() {}

/**
 * In-process retries of transient handler failures: exponential from 100 ms with jitter, at most
 * 3 retries (the message stays locked meanwhile).
 *
 * @since 0.1.0
 * @category models
 */
export const defaultRetry: Schedule.Schedule<unknown, unknown> = internal.defaultRetry

/**
 * The application property names the processor reads and writes.
 *
 * @since 0.1.0
 * @category models
 */
export const propertyNames: {
  /** On a rescheduled copy: the failed attempts before it. */
  readonly retryCount: "retryCount"
  /** On a rescheduled copy: the id of the original message. */
  readonly originalMessageId: "originalMessageId"
} = internal.propertyNames

/**
 * The processor's metrics, tagged with `entity`: `message_processor_messages_processed`
 * (committed), `message_processor_retries` (in-process retries and redeliveries asked for),
 * `message_processor_dead_letters`, `message_processor_commit_failures` (counters) and
 * `message_processor_handle_ms` (histogram).
 *
 * @since 0.1.0
 * @category models
 */
export const metrics: {
  readonly processed: Metric.Metric.Counter<number>
  readonly retries: Metric.Metric.Counter<number>
  readonly deadLetters: Metric.Metric.Counter<number>
  readonly commitFailures: Metric.Metric.Counter<number>
  readonly duration: Metric.Metric.Histogram<number>
} = internal.metrics

/**
 * Starts a processor for the lifetime of the scope. It fails only when it cannot start (the
 * connection or the entity); later failures are retried. Each message is handled in a
 * `MessageProcessor.handle` span (attributes `entity`, `messageId`, `subject`, `deliveryCount`),
 * whose parent is the received `traceparent`, and committed in a `MessageProcessor.commit` span.
 *
 * @since 0.1.0
 * @category constructors
 */
export const run: <H extends Handlers, R>(
  options: Options<H, R>
) => Effect.Effect<Processor, StartError, R | HandlerContext<H[keyof H]> | Scope.Scope> = internal.run

/**
 * A processor that runs as long as the layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = <H extends Handlers, R>(
  options: Options<H, R>
): Layer.Layer<MessageProcessor, StartError, R | HandlerContext<H[keyof H]>> =>
  Layer.scoped(MessageProcessor, run(options))

// ---------------------------------------------------------------------------------------------
// Helpers

/**
 * Options of {@link handleCommand}.
 *
 * @since 0.1.0
 * @category models
 */
export interface HandleCommandOptions<A, Command> {
  /** The stream the command is for. */
  readonly streamId: (body: A, context: MessageContext) => string
  /** The command to handle. */
  readonly command: (body: A, context: MessageContext) => Command
}

/**
 * A handler body that runs one command with `Aggregate.handle`, with the received message's id
 * as the command id (its events get the ids `${messageId}:${index}`), its correlation id, and its
 * id as the causation id. On a redelivery or a retry it first looks for the events of that
 * command in the stream, and returns them instead of deciding again: a command is written once. Combine it with {@link handler}:
 * `handler(PlaceOrder, handleCommand(orders, { streamId, command }))`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const handleCommand: <
  A,
  Command extends { readonly _tag: string },
  Event extends { readonly _tag: string },
  State,
  Err
>(
  aggregate: Aggregate<Command, Event, State, Err>,
  options: HandleCommandOptions<A, Command>
) => (body: A, context: MessageContext) => Effect.Effect<HandleResult<Event, State>, Err | HandleError, EventStore> =
  internal.handleCommand

/**
 * Handlers that apply the events the outbox sends (subject = event type, `streamId` and
 * `streamVersion` properties) to a projection with `Projector.project`, one per event type of
 * the codec: spread them into `handlers`. A redelivered event is skipped by the document's
 * positions.
 *
 * @since 0.1.0
 * @category constructors
 */
export const projectionHandler: <Event extends { readonly _tag: string }, State>(
  projection: Projection<Event, State>,
  codec: EventCodec<Event>,
  options?: ProjectOptions
) => Readonly<Record<string, Handler<ProjectError | NotAnEventMessage, ProjectionStore>>> = internal.projectionHandler

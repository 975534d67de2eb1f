/**
 * The message sender port: sends one message, or a batch of messages, to a queue or a topic as
 * one operation.
 *
 * Guarantees every implementation gives (checked by the conformance suite):
 *
 * - A send is atomic: the messages of one batch are all enqueued, in order, or none is.
 * - Limits are checked before anything is sent: `InvalidMessage` (ids over 128 characters, ...),
 *   `MessageTooLarge`, and `BatchTooLarge` when the messages do not fit one batch. With
 *   `{ split: true }` the caller allows several batches instead; each is atomic, the send as a
 *   whole no longer is, and a failure may leave the first batches sent (a retry resends them,
 *   and duplicate detection drops them when the ids are deterministic).
 * - Transient failures are retried under the `Schedule` of the implementation.
 * - On an entity with duplicate detection, a message whose id was accepted within the window is
 *   accepted again and dropped.
 *
 * @since 0.1.0
 */
import type { Duration, Schedule, Scope } from "effect"
import { Context, Effect, Layer } from "effect"
import * as internalMemory from "./internal/messageMemory.js"
import * as internalServiceBus from "./internal/serviceBusSender.js"
import type { OutgoingMessage, ReceivedMessage } from "./Message.js"
import type { Source } from "./MessageReceiver.js"
import type { ServiceBusClient } from "./ServiceBusClient.js"
import type { SendError, ServiceError, TransientError } from "./ServiceBusError.js"

/**
 * Options of a send.
 *
 * @since 0.1.0
 * @category models
 */
export interface SendOptions {
  /**
   * Allow the messages to go in several batches when they do not fit one (each batch atomic,
   * the send as a whole not). `false` by default: `BatchTooLarge` instead.
   */
  readonly split?: boolean
}

/**
 * What a send returns: how many messages, in how many batches.
 *
 * @since 0.1.0
 * @category models
 */
export interface SendResult {
  readonly messageCount: number
  /** 1 for an atomic send; more only with `split`; 0 when there was nothing to send. */
  readonly batchCount: number
}

/**
 * The message sender service.
 *
 * @since 0.1.0
 * @category models
 */
export interface MessageSenderService {
  /**
   * Sends to a queue or a topic. An empty array sends nothing. A message without `traceparent`
   * gets the current span's, so the receiver's spans can link to the sender's.
   */
  readonly send: (
    destination: string,
    messages: OutgoingMessage | ReadonlyArray<OutgoingMessage>,
    options?: SendOptions
  ) => Effect.Effect<SendResult, SendError>
}

/**
 * The message sender port.
 *
 * @since 0.1.0
 * @category services
 */
export class MessageSender
  extends Context.Tag("effect-eventually/MessageSender")<MessageSender, MessageSenderService>()
{}

// ---------------------------------------------------------------------------------------------
// Memory

/**
 * What a memory queue or subscription is configured with, as its Service Bus counterpart.
 *
 * @since 0.1.0
 * @category models
 */
export interface MemoryEntityOptions {
  /** 1 minute by default (Service Bus allows 5 seconds to 5 minutes; memory allows any). */
  readonly lockDuration?: Duration.DurationInput
  /** 10 by default. */
  readonly maxDeliveryCount?: number
  /** Messages older than this are dropped (or dead-lettered, see below); none by default. */
  readonly defaultMessageTimeToLive?: Duration.DurationInput
  /** Move expired messages to the dead-letter queue (`TTLExpiredException`) instead of dropping them. */
  readonly deadLetteringOnMessageExpiration?: boolean
}

/**
 * Duplicate detection of a memory queue or topic, named as in Service Bus's entity properties.
 *
 * @since 0.1.0
 * @category models
 */
export interface MemoryDuplicateDetectionOptions {
  /** Drop messages whose id was accepted within the window; off by default. */
  readonly requiresDuplicateDetection?: boolean
  /** The window, 10 minutes by default (Service Bus: 20 seconds to 7 days); setting it turns detection on. */
  readonly duplicateDetectionHistoryTimeWindow?: Duration.DurationInput
}

/**
 * Options of an in-memory queue.
 *
 * @since 0.1.0
 * @category models
 */
export interface MemoryQueueOptions extends MemoryEntityOptions, MemoryDuplicateDetectionOptions {
  readonly name: string
}

/**
 * Options of an in-memory topic subscription.
 *
 * @since 0.1.0
 * @category models
 */
export interface MemorySubscriptionOptions extends MemoryEntityOptions {
  readonly name: string
}

/**
 * Options of an in-memory topic.
 *
 * @since 0.1.0
 * @category models
 */
export interface MemoryTopicOptions extends MemoryDuplicateDetectionOptions {
  readonly name: string
  /** Every subscription gets a copy of every message (no filters). */
  readonly subscriptions: ReadonlyArray<MemorySubscriptionOptions | string>
}

/**
 * The entities of a memory broker and its limits. Sending to, or receiving from, an entity that
 * is not declared fails with `EntityNotFound`, as on Service Bus.
 *
 * @since 0.1.0
 * @category models
 */
export interface MemoryOptions {
  readonly queues?: ReadonlyArray<MemoryQueueOptions | string>
  readonly topics?: ReadonlyArray<MemoryTopicOptions>
  /** The largest batch (or single message), encoded as the SDK encodes it; 256 KiB by default. */
  readonly maxBatchBytes?: number
  /** The retry policy for transient failures (injected with `failNext`); `ServiceBusClient.defaultRetry` by default. */
  readonly retry?: Schedule.Schedule<unknown, TransientError>
}

/**
 * An operation of the memory broker that can be made to fail.
 *
 * @since 0.1.0
 * @category testing
 */
export type MemoryOperation = "send" | "receive" | "settle" | "renewLock"

/**
 * The in-memory broker behind the memory sender and receiver, with inspection helpers for tests.
 * Time (lock expiry, scheduled messages, time to live, duplicate detection windows) follows the
 * Effect `Clock`, so `TestClock` drives it.
 *
 * @since 0.1.0
 * @category testing
 */
export interface MemoryBrokerService {
  /** Every message accepted by a queue or topic (duplicates dropped), in order. */
  readonly sent: (destination: string) => Effect.Effect<ReadonlyArray<OutgoingMessage>, ServiceError>
  /** The batches accepted by a queue or topic, one entry per transfer. */
  readonly batches: (destination: string) => Effect.Effect<ReadonlyArray<ReadonlyArray<OutgoingMessage>>, ServiceError>
  /** How many messages duplicate detection dropped. */
  readonly duplicatesDropped: (destination: string) => Effect.Effect<number, ServiceError>
  /** Every message in a queue, subscription or dead-letter queue, locked, deferred and scheduled ones included. */
  readonly messages: (source: Source) => Effect.Effect<ReadonlyArray<ReceivedMessage>, ServiceError>
  /** Makes the next `times` calls of an operation fail with `error` (to test retries and failure handling). */
  readonly failNext: (operation: MemoryOperation, error: ServiceError, times?: number) => Effect.Effect<void>
}

/**
 * The in-memory broker behind the memory sender and receiver, with inspection helpers for tests.
 *
 * @since 0.1.0
 * @category testing
 */
export class MemoryBroker extends Context.Tag("effect-eventually/MessageSender/MemoryBroker")<
  MemoryBroker,
  MemoryBrokerService
>() {}

/**
 * An empty in-memory broker with the given entities.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemoryBroker = (options: MemoryOptions = {}): Effect.Effect<MemoryBrokerService> =>
  internalMemory.makeBroker(options)

/**
 * A sender into an in-memory broker.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<MessageSenderService, never, MemoryBroker> = Effect.map(
  MemoryBroker,
  internalMemory.makeSender
)

/**
 * A layer with an in-memory broker and a sender into it. Add `MessageReceiver.layerMemory` on top
 * to receive from the same broker.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (options: MemoryOptions = {}): Layer.Layer<MessageSender | MemoryBroker> =>
  Layer.effect(MessageSender, makeMemory).pipe(
    Layer.provideMerge(Layer.effect(MemoryBroker, makeMemoryBroker(options)))
  )

// ---------------------------------------------------------------------------------------------
// Service Bus

/**
 * Options of the Service Bus sender.
 *
 * @since 0.1.0
 * @category models
 */
export interface ServiceBusOptions {
  /**
   * The largest batch when the link does not advertise one (an emulator may not); 256 KiB by
   * default. The link's own limit wins when it is smaller.
   */
  readonly maxBatchBytes?: number
  /** Overrides the client's retry policy for this sender. */
  readonly retry?: Schedule.Schedule<unknown, TransientError>
}

/**
 * A sender on Azure Service Bus. SDK senders are created once per destination and closed with the
 * scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeServiceBus = (
  options: ServiceBusOptions = {}
): Effect.Effect<MessageSenderService, never, ServiceBusClient | Scope.Scope> => internalServiceBus.make(options)

/**
 * The sender on Azure Service Bus, over the `ServiceBusClient` in context.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerServiceBus = (options: ServiceBusOptions = {}): Layer.Layer<MessageSender, never, ServiceBusClient> =>
  Layer.scoped(MessageSender, makeServiceBus(options))

/**
 * The message receiver port: messages from a queue or a subscription in peek-lock mode. Each
 * received message comes as a {@link Delivery} that must be settled once: `complete`,
 * `abandon`, `deadLetter` or `defer`.
 *
 * Guarantees every implementation gives (checked by the conformance suite):
 *
 * - A message is locked for the entity's lock duration while it is being handled; no other
 *   receiver gets it meanwhile. The lock is renewed on a fiber while the delivery is unsettled
 *   (at half the lock duration by default), so a slow handler keeps its message.
 * - Delivery is at least once: an abandoned message, or one whose lock expired, is delivered
 *   again with `deliveryCount` one higher; after `maxDeliveryCount` deliveries it moves to the
 *   dead-letter queue with reason `MaxDeliveryCountExceeded`.
 * - Messages are delivered in sequence-number order, an abandoned message before later ones.
 * - A delivery belongs to the scope it was received in (the stream's, or the caller's for
 *   `receive`): when that scope closes, the deliveries not yet settled are abandoned, so another
 *   receiver gets them at once rather than after the lock expires.
 *
 * Settlements are values ({@link Settlement}), so that a later transaction can enlist them.
 *
 * @since 0.1.0
 */
import type { Duration, Option, Schedule, Scope, Stream } from "effect"
import { Context, Effect, Layer } from "effect"
import * as internalMemory from "./internal/messageMemory.js"
import * as internal from "./internal/messageReceiver.js"
import * as internalServiceBus from "./internal/serviceBusReceiver.js"
import type { Properties, ReceivedMessage } from "./Message.js"
import { MemoryBroker } from "./MessageSender.js"
import type { ServiceBusClient } from "./ServiceBusClient.js"
import type { ReceiveError, SettleError, TransientError } from "./ServiceBusError.js"

/**
 * Where messages are received from: a queue or a subscription, or the dead-letter queue of one.
 *
 * @since 0.1.0
 * @category models
 */
export type Source =
  | { readonly _tag: "Queue"; readonly queue: string; readonly deadLetter: boolean }
  | {
    readonly _tag: "Subscription"
    readonly topic: string
    readonly subscription: string
    readonly deadLetter: boolean
  }

/**
 * A queue to receive from.
 *
 * @since 0.1.0
 * @category constructors
 */
export const queue = (name: string): Source => ({ _tag: "Queue", queue: name, deadLetter: false })

/**
 * A topic subscription to receive from.
 *
 * @since 0.1.0
 * @category constructors
 */
export const subscription = (topic: string, name: string): Source => ({
  _tag: "Subscription",
  topic,
  subscription: name,
  deadLetter: false
})

/**
 * The dead-letter queue of a queue or subscription.
 *
 * @since 0.1.0
 * @category constructors
 */
export const deadLetterOf = (source: Source): Source => ({ ...source, deadLetter: true })

/**
 * The Service Bus path of a source: `orders`, `events/Subscriptions/billing`,
 * `orders/$DeadLetterQueue`.
 *
 * @since 0.1.0
 * @category models
 */
export const entityPath = (source: Source): string => internal.entityPath(source)

/**
 * How a received message is settled.
 *
 * - `Complete`: done, remove it.
 * - `Abandon`: release the lock; it is delivered again (delivery count + 1), or dead-lettered
 *   after the maximum delivery count. `properties` are merged into its application properties.
 * - `DeadLetter`: move it to the dead-letter queue with a reason and description.
 * - `Defer`: set it aside; it can then only be received by sequence number (`receiveDeferred`).
 *
 * @since 0.1.0
 * @category models
 */
export type Settlement =
  | { readonly _tag: "Complete" }
  | { readonly _tag: "Abandon"; readonly properties?: Properties }
  | {
    readonly _tag: "DeadLetter"
    readonly reason: string
    readonly description?: string
    readonly properties?: Properties
  }
  | { readonly _tag: "Defer"; readonly properties?: Properties }

/**
 * Settles a delivery by completing it: the message is removed.
 *
 * @since 0.1.0
 * @category constructors
 */
export const complete: Settlement = { _tag: "Complete" }

/**
 * Settles a delivery by abandoning it: the lock is released and the delivery count goes up.
 *
 * @since 0.1.0
 * @category constructors
 */
export const abandon = (properties?: Properties): Settlement =>
  properties === undefined ? { _tag: "Abandon" } : { _tag: "Abandon", properties }

/**
 * Settles a delivery by moving it to the dead-letter queue, with a reason and a description.
 *
 * @since 0.1.0
 * @category constructors
 */
export const deadLetter = (options: {
  readonly reason: string
  readonly description?: string
  readonly properties?: Properties
}): Settlement => ({ _tag: "DeadLetter", ...options })

/**
 * Settles a delivery by deferring it: it can be received again by its sequence number only.
 *
 * @since 0.1.0
 * @category constructors
 */
export const defer = (properties?: Properties): Settlement =>
  properties === undefined ? { _tag: "Defer" } : { _tag: "Defer", properties }

/**
 * A received message and the actions that settle it. Exactly one settlement succeeds; a second
 * fails with `AlreadySettled`. Settling stops the lock renewal first.
 *
 * @since 0.1.0
 * @category models
 */
export interface Delivery {
  readonly message: ReceivedMessage
  readonly source: Source
  readonly settle: (settlement: Settlement) => Effect.Effect<void, SettleError>
  readonly complete: Effect.Effect<void, SettleError>
  readonly abandon: (properties?: Properties) => Effect.Effect<void, SettleError>
  readonly deadLetter: (options: {
    readonly reason: string
    readonly description?: string
    readonly properties?: Properties
  }) => Effect.Effect<void, SettleError>
  readonly defer: (properties?: Properties) => Effect.Effect<void, SettleError>
  /** Renews the lock now and returns the new expiry (the renewal fiber does this by itself). */
  readonly renewLock: Effect.Effect<Date, SettleError>
  /** The settlement applied, if any. */
  readonly settlement: Effect.Effect<Option.Option<Settlement>>
}

/**
 * Lock renewal while a delivery is unsettled.
 *
 * @since 0.1.0
 * @category models
 */
export interface LockRenewalOptions {
  /** Renew when this fraction of the remaining lock time has passed; 0.5 by default. */
  readonly fraction?: number
  /** Stop renewing after this long (the lock then expires); 5 minutes by default, as the SDK. */
  readonly maxDuration?: Duration.DurationInput
}

/**
 * Options of a receive: batch size, waiting time and lock renewal.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReceiveOptions {
  /** The most messages one pull locks; 1 for `receive`, 10 for `stream` by default. */
  readonly maxMessages?: number
  /** How long one pull waits for the first message; 60 seconds by default. */
  readonly maxWaitTime?: Duration.DurationInput
  /** `false` to turn lock renewal off. */
  readonly lockRenewal?: LockRenewalOptions | false
}

/**
 * Options of a peek: how many messages, and from which sequence number.
 *
 * @since 0.1.0
 * @category models
 */
export interface PeekOptions {
  /** 10 by default. */
  readonly maxMessages?: number
  /** Peek from this sequence number on (inclusive); from the first message by default. */
  readonly fromSequenceNumber?: bigint
}

/**
 * The message receiver service.
 *
 * @since 0.1.0
 * @category models
 */
export interface MessageReceiverService {
  /**
   * Receives messages for as long as the stream runs, on a link of its own. Unsettled
   * deliveries are abandoned when the stream ends.
   */
  readonly stream: (source: Source, options?: ReceiveOptions) => Stream.Stream<Delivery, ReceiveError>
  /**
   * Receives at most `maxMessages` (1 by default), waiting up to `maxWaitTime` for the first
   * one; an empty array when none came. The deliveries belong to the caller's scope.
   */
  readonly receive: (
    source: Source,
    options?: ReceiveOptions
  ) => Effect.Effect<ReadonlyArray<Delivery>, ReceiveError, Scope.Scope>
  /** Receives deferred messages by sequence number; `MessageNotFound` if one is not deferred there. */
  readonly receiveDeferred: (
    source: Source,
    sequenceNumbers: ReadonlyArray<bigint>,
    options?: Pick<ReceiveOptions, "lockRenewal">
  ) => Effect.Effect<ReadonlyArray<Delivery>, ReceiveError, Scope.Scope>
  /**
   * Reads messages without locking them, in sequence-number order. For a peeked message,
   * `deliveryCount` is the number of deliveries so far.
   */
  readonly peek: (source: Source, options?: PeekOptions) => Effect.Effect<ReadonlyArray<ReceivedMessage>, ReceiveError>
}

/**
 * The message receiver port.
 *
 * @since 0.1.0
 * @category services
 */
export class MessageReceiver extends Context.Tag("effect-eventually/MessageReceiver")<
  MessageReceiver,
  MessageReceiverService
>() {}

/**
 * A receiver over the in-memory broker of `MessageSender.layerMemory`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<MessageReceiverService, never, MemoryBroker | Scope.Scope> = Effect.flatMap(
  MemoryBroker,
  internalMemory.makeReceiver
)

/**
 * A layer with a receiver over the in-memory broker: provide it with
 * `MessageSender.layerMemory(options)`, which sends into the same broker.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<MessageReceiver, never, MemoryBroker> = Layer.scoped(
  MessageReceiver,
  makeMemory
)

/**
 * Options of the Service Bus receiver.
 *
 * @since 0.1.0
 * @category models
 */
export interface ServiceBusOptions {
  /** Overrides the client's retry policy for this receiver. */
  readonly retry?: Schedule.Schedule<unknown, TransientError>
}

/**
 * A receiver on Azure Service Bus. SDK receivers are cached per source for `receive`,
 * `receiveDeferred` and `peek`, and closed with the scope; each stream has its own.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeServiceBus = (
  options: ServiceBusOptions = {}
): Effect.Effect<MessageReceiverService, never, ServiceBusClient | Scope.Scope> => internalServiceBus.make(options)

/**
 * The receiver on Azure Service Bus, over the `ServiceBusClient` in context.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerServiceBus = (
  options: ServiceBusOptions = {}
): Layer.Layer<MessageReceiver, never, ServiceBusClient> => Layer.scoped(MessageReceiver, makeServiceBus(options))

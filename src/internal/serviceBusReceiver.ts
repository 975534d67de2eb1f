// The Service Bus receiver backend: SDK receivers in peek-lock mode with the SDK's automatic lock
// renewal off (the shared receiver renews on its own fiber, so that one policy applies) and
// bodies left as bytes (parsed here, so a body that is not JSON is reported, not guessed at).
import type { ServiceBusReceivedMessage, ServiceBusReceiver, ServiceBusReceiverOptions } from "@azure/service-bus"
import { Duration, Effect, Scope } from "effect"
import Long from "long"
import type { MessageReceiverService, ServiceBusOptions, Settlement, Source } from "../MessageReceiver.js"
import { ServiceBusClient } from "../ServiceBusClient.js"
import type { ReceiveError, SettleError } from "../ServiceBusError.js"
import { MessageNotFound, OperationTimeout } from "../ServiceBusError.js"
import { boundedPromise } from "./amqp/callbackWait.js"
import { closeWithin } from "./closeWithin.js"
import { fromSdkMessage } from "./messageCodec.js"
import type { RawDelivery, ReceiverBackend } from "./messageReceiver.js"
import * as Receiver from "./messageReceiver.js"
import type { ErrorContext } from "./serviceBusErrors.js"
import { receiveError, settleError } from "./serviceBusErrors.js"

// Every SDK call is one attempt bounded in time: on timeout the abort signal fires, and the
// transient `OperationTimeout` goes to the retry schedule. One timer per call, no fiber forked
// (see `boundedPromise`).
const timedOut = (context: ErrorContext, limit: Duration.Duration) => () =>
  new OperationTimeout({
    operation: context.operation,
    entity: context.entity,
    reason: `no answer within ${Duration.format(limit)}`
  })

const call = <A>(context: ErrorContext, limit: Duration.Duration, f: (signal: AbortSignal) => Promise<A>) =>
  boundedPromise<A, ReceiveError, OperationTimeout>(f, (cause) => receiveError(cause, context), {
    timeout: limit,
    onTimeout: timedOut(context, limit)
  })

const callSettle = <A>(context: ErrorContext, limit: Duration.Duration, f: () => Promise<A>) =>
  boundedPromise<A, SettleError, OperationTimeout>(() => f(), (cause) => settleError(cause, context), {
    timeout: limit,
    onTimeout: timedOut(context, limit)
  })

const toLong = (value: bigint): Long => Long.fromString(value.toString())

export const make = (
  options: ServiceBusOptions
): Effect.Effect<MessageReceiverService, never, ServiceBusClient | Scope.Scope> =>
  Effect.gen(function*() {
    const client = yield* ServiceBusClient
    const limit = client.operationTimeout
    const receiverOptions = (source: Source): ServiceBusReceiverOptions => {
      const common: ServiceBusReceiverOptions = {
        receiveMode: "peekLock",
        maxAutoLockRenewalDurationInMs: 0,
        skipParsingBodyAsJson: true
      }
      return source.deadLetter ? { ...common, subQueueType: "deadLetter" } : common
    }

    const closeQuietly = (receiver: ServiceBusReceiver) =>
      closeWithin(Effect.promise(() => receiver.close()), "10 seconds", "A Service Bus receiver")

    const openReceiver = (source: Source): Effect.Effect<ServiceBusReceiver, never, Scope.Scope> =>
      Effect.acquireRelease(
        Effect.sync(() =>
          source._tag === "Queue"
            ? client.sdk.createReceiver(source.queue, receiverOptions(source))
            : client.sdk.createReceiver(source.topic, source.subscription, receiverOptions(source))
        ),
        closeQuietly
      )

    // Settlements through one SDK receiver go one at a time. rhea (3.x) writes the dispositions
    // of one tick as ranges of consecutive delivery ids, and compares states only once a range
    // holds two deliveries: a dead-letter and an abandon written together for deliveries n and
    // n + 1 go out as one frame with the dead-letter's state, so the abandoned message would be
    // dead-lettered too. The SDK waits for the broker's answer to each settlement, so with one
    // at a time no two dispositions of a receiver are ever written in the same tick.
    const settleLocks = new WeakMap<ServiceBusReceiver, Effect.Semaphore>()
    const settleLockOf = (receiver: ServiceBusReceiver): Effect.Semaphore => {
      let lock = settleLocks.get(receiver)
      if (lock === undefined) {
        lock = Effect.unsafeMakeSemaphore(1)
        settleLocks.set(receiver, lock)
      }
      return lock
    }

    const rawDelivery = (receiver: ServiceBusReceiver, entity: string, sdk: ServiceBusReceivedMessage): RawDelivery => {
      const message = fromSdkMessage(entity, sdk, false)
      const settleLock = settleLockOf(receiver)
      const context = (operation: string): ErrorContext => ({
        operation,
        entity,
        messageId: message.messageId,
        lockToken: message.lockToken
      })
      const settle = (settlement: Settlement) => settleLock.withPermits(1)(settleOnce(settlement))
      const settleOnce = (settlement: Settlement) => {
        switch (settlement._tag) {
          case "Complete":
            return callSettle(context("complete"), limit, () => receiver.completeMessage(sdk))
          case "Abandon":
            return callSettle(context("abandon"), limit, () => receiver.abandonMessage(sdk, settlement.properties))
          case "Defer":
            return callSettle(context("defer"), limit, () => receiver.deferMessage(sdk, settlement.properties))
          case "DeadLetter":
            return callSettle(context("deadLetter"), limit, () =>
              receiver.deadLetterMessage(sdk, {
                ...settlement.properties,
                deadLetterReason: settlement.reason,
                deadLetterErrorDescription: settlement.description ?? ""
              }))
        }
      }
      return {
        message,
        settle,
        renewLock: callSettle(context("renewLock"), limit, () => receiver.renewMessageLock(sdk))
      }
    }

    // Receivers for `receiveDeferred` and `peek`, which go through the management link and so
    // can share one SDK receiver per source for the lifetime of the layer.
    const layerScope = yield* Effect.scope
    const shared = new Map<string, ServiceBusReceiver>()
    const sharedReceiver = (source: Source, key: string) =>
      Effect.suspend(() => {
        const existing = shared.get(key)
        if (existing !== undefined) return Effect.succeed(existing)
        return Effect.tap(
          Scope.extend(openReceiver(source), layerScope),
          (receiver) => Effect.sync(() => shared.set(key, receiver))
        )
      })
    // A shared receiver whose call timed out or lost its connection may be stuck (opening its
    // management link behind a reconnection that never completes): the next call gets a fresh
    // one. The old one is closed with the layer, not now, since deferred messages received
    // through it may still be settled through it.
    const withShared = <A, E extends ReceiveError>(
      source: Source,
      f: (receiver: ServiceBusReceiver) => Effect.Effect<A, E>
    ) =>
      Effect.suspend(() => {
        const key = Receiver.entityPath(source).toLowerCase()
        return Effect.flatMap(sharedReceiver(source, key), (receiver) =>
          Effect.tapError(f(receiver), (error) =>
            (error._tag === "ConnectionLost" || error._tag === "OperationTimeout") && shared.get(key) === receiver
              ? Effect.sync(() => shared.delete(key))
              : Effect.void))
      })

    const backend: ReceiverBackend = {
      retry: options.retry ?? client.retry,
      open: (source) =>
        Effect.map(openReceiver(source), (receiver) => {
          const entity = Receiver.entityPath(source)
          return {
            receive: (maxMessages, maxWait) =>
              call(
                { operation: "receive", entity },
                Duration.sum(maxWait, limit),
                (abortSignal) =>
                  receiver.receiveMessages(maxMessages, { maxWaitTimeInMs: Duration.toMillis(maxWait), abortSignal })
              ).pipe(Effect.map((messages) =>
                messages.map((sdk) => rawDelivery(receiver, entity, sdk))
              ))
          }
        }),
      receiveDeferred: (source, sequenceNumbers) =>
        Effect.gen(function*() {
          const entity = Receiver.entityPath(source)
          const context = { operation: "receiveDeferred", entity, sequenceNumbers }
          const [receiver, messages] = yield* withShared(source, (receiver) =>
            Effect.map(
              call(context, limit, (abortSignal) =>
                receiver.receiveDeferredMessages(sequenceNumbers.map(toLong), { abortSignal })),
              (messages) =>
                [receiver, messages] as const
            ))
          const deliveries = messages.map((sdk) =>
            rawDelivery(receiver, entity, sdk)
          )
          const found = new Set(deliveries.map((delivery) => delivery.message.sequenceNumber))
          const missing = sequenceNumbers.filter((sequenceNumber) => !found.has(sequenceNumber))
          if (missing.length > 0) {
            // Release what was locked, so that a retry with the right numbers can get it.
            yield* Effect.forEach(deliveries, (delivery) => Effect.ignore(delivery.settle({ _tag: "Abandon" })), {
              discard: true
            })
            return yield* new MessageNotFound({ ...context, sequenceNumbers: missing, reason: "not deferred there" })
          }
          return deliveries
        }),
      peek: (source, maxMessages, fromSequenceNumber) =>
        Effect.gen(function*() {
          const entity = Receiver.entityPath(source)
          // Always from an explicit sequence number: without one, the SDK continues from where the
          // previous peek on this receiver stopped.
          const messages = yield* withShared(source, (receiver) =>
            call(
              { operation: "peek", entity },
              limit,
              (abortSignal) =>
                receiver.peekMessages(maxMessages, {
                  fromSequenceNumber: toLong(fromSequenceNumber ?? 0n),
                  abortSignal
                })
            ))
          return messages.map((sdk) => fromSdkMessage(entity, sdk, true))
        })
    }
    return yield* Receiver.make(backend)
  })

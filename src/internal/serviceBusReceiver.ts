// The Service Bus receiver backend: SDK receivers in peek-lock mode with the SDK's automatic lock
// renewal off (the shared receiver renews on its own fiber, so that one policy applies) and
// bodies left as bytes (parsed here, so a body that is not JSON is reported, not guessed at).
import type { ServiceBusReceivedMessage, ServiceBusReceiver, ServiceBusReceiverOptions } from "@azure/service-bus"
import { Duration, Effect, Either, Scope } from "effect"
import Long from "long"
import type { MessageReceiverService, ServiceBusOptions, Settlement, Source } from "../MessageReceiver.js"
import { ServiceBusClient } from "../ServiceBusClient.js"
import type { ReceiveError, SettleError } from "../ServiceBusError.js"
import { ConnectionLost, MessageNotFound, OperationTimeout } from "../ServiceBusError.js"
import type { Start } from "./amqp/callbackWait.js"
import { awaitCallback, boundedPromise } from "./amqp/callbackWait.js"
import { closeWithin } from "./closeWithin.js"
import { fromSdkMessage } from "./messageCodec.js"
import type { RawDelivery, ReceiverBackend } from "./messageReceiver.js"
import * as Receiver from "./messageReceiver.js"
import { failOnLoss, madeBy, rememberClient } from "./sdkConnection.js"
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

// A call on a connection that dropped (that of `link`) ends at once: the SDK could keep it
// waiting for the operation timeout.
const call = <A>(
  context: ErrorContext,
  limit: Duration.Duration,
  f: (signal: AbortSignal) => Promise<A>,
  link?: object
): Effect.Effect<A, ReceiveError> => {
  const lostError = () =>
    new ConnectionLost({ operation: context.operation, entity: context.entity, reason: "the connection was lost" })
  const loss = link === undefined ? { isLost: false } : failOnLoss(link, lostError)
  if (loss.isLost) return Effect.fail(lostError())
  return boundedPromise<A, ReceiveError, OperationTimeout, ConnectionLost>(f, (cause) => receiveError(cause, context), {
    timeout: limit,
    onTimeout: timedOut(context, limit),
    ...(loss.onLost === undefined ? {} : { onLost: loss.onLost })
  })
}

// A settlement takes no abort signal: the wait for its promise is bounded without one.
const settleStart =
  <A>(f: () => Promise<A>, onError: (cause: unknown) => SettleError): Start<A, SettleError> => (finish) => {
    try {
      f().then((value) => finish(Either.right(value)), (cause) => finish(Either.left(onError(cause))))
    } catch (cause) {
      finish(Either.left(onError(cause)))
    }
    return () => undefined
  }

const callSettle = <A>(context: ErrorContext, limit: Duration.Duration, f: () => Promise<A>) =>
  awaitCallback<A, SettleError, OperationTimeout>(settleStart(f, (cause) => settleError(cause, context)), {
    timeout: limit,
    onTimeout: timedOut(context, limit)
  })

const toLong = (value: bigint): Long => Long.fromString(value.toString())

/** Runs an effect shared (with other shared ones) or alone; first come, first served. */
type Gate = <A, E, R>(alone: boolean, effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

interface GateWaiter {
  readonly alone: boolean
  readonly wake: () => void
  granted: boolean
}

const makeGate = (): Gate => {
  let shared = 0
  let exclusive = false
  const waiting: Array<GateWaiter> = []
  const free = (alone: boolean) => alone ? !exclusive && shared === 0 : !exclusive
  const take = (alone: boolean) => {
    if (alone) exclusive = true
    else shared++
  }
  const pump = () => {
    while (waiting.length > 0 && free(waiting[0].alone)) {
      const waiter = waiting.shift()!
      take(waiter.alone)
      waiter.granted = true
      waiter.wake()
    }
  }
  const release = (alone: boolean) => {
    if (alone) exclusive = false
    else shared--
    pump()
  }
  const acquire = (alone: boolean) =>
    Effect.async<void>((resume) => {
      if (waiting.length === 0 && free(alone)) {
        take(alone)
        return resume(Effect.void)
      }
      const waiter: GateWaiter = { alone, granted: false, wake: () => resume(Effect.void) }
      waiting.push(waiter)
      return Effect.sync(() => {
        if (waiter.granted) return release(alone)
        const index = waiting.indexOf(waiter)
        if (index !== -1) waiting.splice(index, 1)
        pump()
      })
    })
  const releaseEffect = (alone: boolean) => Effect.sync(() => release(alone))
  return (alone, effect) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.zipRight(restore(acquire(alone)), Effect.ensuring(restore(effect), releaseEffect(alone)))
    )
}

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

    // The SDK client each receiver was made from: the client's may be replaced after a dropped
    // connection, and the receivers of the old one are then replaced on their next call.

    const createReceiver = (source: Source): ServiceBusReceiver => {
      const sdk = client.sdk
      const receiver = source._tag === "Queue"
        ? sdk.createReceiver(source.queue, receiverOptions(source))
        : sdk.createReceiver(source.topic, source.subscription, receiverOptions(source))
      rememberClient(receiver, sdk)
      return receiver
    }
    const isCurrent = (receiver: ServiceBusReceiver) => madeBy(receiver, client.sdk)
    const openReceiver = (source: Source): Effect.Effect<ServiceBusReceiver, never, Scope.Scope> =>
      Effect.acquireRelease(Effect.sync(() => createReceiver(source)), closeQuietly)

    // Settlements through one SDK receiver are ordered by a gate. rhea (3.x) writes the
    // dispositions of one tick as ranges of consecutive delivery ids, and compares states only
    // once a range holds two deliveries: a dead-letter and an abandon written together for
    // deliveries n and n + 1 go out as one frame with the dead-letter's state, so the abandoned
    // message would be dead-lettered too. Completions all write the same state (accepted, with
    // nothing else), so any number of them may be written together; every other settlement
    // (whose state carries a reason or properties) goes alone. The SDK waits for the broker's
    // answer to each settlement, so two dispositions with different states are never written in
    // the same tick.
    const settleGates = new WeakMap<ServiceBusReceiver, Gate>()
    const settleGateOf = (receiver: ServiceBusReceiver): Gate => {
      let gate = settleGates.get(receiver)
      if (gate === undefined) {
        gate = makeGate()
        settleGates.set(receiver, gate)
      }
      return gate
    }

    const rawDelivery = (receiver: ServiceBusReceiver, entity: string, sdk: ServiceBusReceivedMessage): RawDelivery => {
      const message = fromSdkMessage(entity, sdk, false)
      const gate = settleGateOf(receiver)
      const context = (operation: string): ErrorContext => ({
        operation,
        entity,
        messageId: message.messageId,
        lockToken: message.lockToken
      })
      const settle = (settlement: Settlement) => gate(settlement._tag !== "Complete", settleOnce(settlement))
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
        // One of a replaced SDK client is closed with the layer, like one that failed.
        if (existing !== undefined && isCurrent(existing)) return Effect.succeed(existing)
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
        return Effect.flatMap(
          sharedReceiver(source, key),
          (receiver) =>
            Effect.tapError(f(receiver), (error) =>
              (error._tag === "ConnectionLost" || error._tag === "OperationTimeout") && shared.get(key) === receiver
                ? Effect.sync(() => shared.delete(key))
                : Effect.void)
        )
      })

    const backend: ReceiverBackend = {
      retry: options.retry ?? client.retry,
      open: (source) =>
        Effect.gen(function*() {
          const entity = Receiver.entityPath(source)
          let receiver = createReceiver(source)
          yield* Effect.addFinalizer(() =>
            Effect.suspend(() => closeQuietly(receiver))
          )
          // A receiver of a replaced SDK client gives way to one of the new client; the old one
          // is closed in the background (its messages could only be settled on its connection,
          // which is gone).
          const current = () => {
            if (!isCurrent(receiver)) {
              Effect.runFork(closeQuietly(receiver))
              receiver = createReceiver(source)
            }
            return receiver
          }
          return {
            receive: (maxMessages, maxWait) =>
              Effect.suspend(() => {
                const link = current()
                return call(
                  { operation: "receive", entity },
                  Duration.sum(maxWait, limit),
                  (abortSignal) =>
                    link.receiveMessages(maxMessages, { maxWaitTimeInMs: Duration.toMillis(maxWait), abortSignal }),
                  link
                ).pipe(Effect.map((messages) => messages.map((sdk) => rawDelivery(link, entity, sdk))))
              })
          }
        }),
      receiveDeferred: (source, sequenceNumbers) =>
        Effect.gen(function*() {
          const entity = Receiver.entityPath(source)
          const context = { operation: "receiveDeferred", entity, sequenceNumbers }
          const [receiver, messages] = yield* withShared(source, (receiver) =>
            Effect.map(
              // No abort signal on the management link: see `peek`.
              call(
                context,
                limit,
                () => receiver.receiveDeferredMessages(sequenceNumbers.map(toLong)),
                receiver
              ),
              (messages) => [receiver, messages] as const
            ))
          const deliveries = messages.map((sdk) => rawDelivery(receiver, entity, sdk))
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
              // No abort signal: a request on the management link aborted after that link was
              // closed (its connection dropped) makes the SDK (core-amqp) throw from the abort
              // listener, out of reach, and the process exits. The call is bounded all the same;
              // a late answer is dropped.
              () => receiver.peekMessages(maxMessages, { fromSequenceNumber: toLong(fromSequenceNumber ?? 0n) }),
              receiver
            ))
          return messages.map((sdk) => fromSdkMessage(entity, sdk, true))
        })
    }
    return yield* Receiver.make(backend)
  })

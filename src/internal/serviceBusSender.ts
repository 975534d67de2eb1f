// The Service Bus sender: one SDK sender per destination (links are costly to attach), batches
// packed with the SDK's own size accounting, every batch checked before the first is sent.
import type { ServiceBusMessageBatch, ServiceBusSender } from "@azure/service-bus"
import type { Scope } from "effect"
import { Duration, Effect } from "effect"
import type { MessageSenderService, ServiceBusOptions } from "../MessageSender.js"
import { ServiceBusClient } from "../ServiceBusClient.js"
import type { SendError } from "../ServiceBusError.js"
import {
  BatchTooLarge,
  ConnectionLost,
  InvalidMessage,
  MessageTooLarge,
  OperationTimeout,
  ServiceBusFailure
} from "../ServiceBusError.js"
import { boundedPromise } from "./amqp/callbackWait.js"
import { closeWithin } from "./closeWithin.js"
import type { Checked } from "./messageCodec.js"
import { defaultMaxBatchBytes, encodeBodies, fitsAlone, sizeAlone, toSdkMessage } from "./messageCodec.js"
import { retryTransient } from "./messageRetry.js"
import * as Sender from "./messageSender.js"
import { failOnLoss, madeBy, rememberClient } from "./sdkConnection.js"
import type { ErrorContext } from "./serviceBusErrors.js"
import { redact, sendError } from "./serviceBusErrors.js"

export const make = (
  options: ServiceBusOptions
): Effect.Effect<MessageSenderService, never, ServiceBusClient | Scope.Scope> =>
  Effect.gen(function*() {
    const client = yield* ServiceBusClient
    const retry = options.retry ?? client.retry
    const senders = new Map<string, ServiceBusSender>()
    // The SDK client each sender was made from: the client's may be replaced after a dropped
    // connection, and a sender of the old one is then replaced too.

    const layerScope = yield* Effect.scope

    const closeQuietly = (sender: ServiceBusSender) =>
      closeWithin(Effect.promise(() => sender.close()), "10 seconds", "A Service Bus sender")

    yield* Effect.addFinalizer(() =>
      Effect.forEach(Array.from(senders.values()), closeQuietly, { concurrency: "unbounded", discard: true }).pipe(
        Effect.andThen(Effect.sync(() => senders.clear()))
      )
    )

    const senderFor = (destination: string, key: string) =>
      Effect.suspend(() => {
        const existing = senders.get(key)
        const sdk = client.sdk
        if (existing !== undefined) {
          if (madeBy(existing, sdk)) return Effect.succeed(existing)
          senders.delete(key)
          Effect.runFork(closeQuietly(existing))
        }
        return Effect.try({
          try: () => {
            const sender = sdk.createSender(destination)
            rememberClient(sender, sdk)
            senders.set(key, sender)
            return sender
          },
          catch: (cause) => sendError(cause, { operation: "createSender", entity: destination })
        })
      })

    // After a lost connection or an attempt that timed out, the SDK sender may be stuck (opening
    // its link behind a reconnection that never completes, holding the lock its next attempts
    // wait for): it is replaced by a fresh one, and closed in the background.
    const replace = (key: string, sender: ServiceBusSender) =>
      Effect.suspend(() => {
        if (senders.get(key) !== sender) return Effect.void
        senders.delete(key)
        return Effect.asVoid(Effect.forkIn(closeQuietly(sender), layerScope))
      })

    // One attempt of one SDK call on the destination's current sender, bounded by the operation
    // timeout.
    const attempt = <A>(
      destination: string,
      context: ErrorContext,
      f: (sender: ServiceBusSender) => Promise<A>
    ): Effect.Effect<A, SendError> => {
      // Entity names are case-insensitive on Service Bus.
      const key = destination.toLowerCase()
      return Effect.flatMap(senderFor(destination, key), (sender) => {
        if (sender.isClosed) {
          return Effect.fail(
            new ServiceBusFailure({
              operation: context.operation,
              entity: destination,
              reason: "the sender is closed (its scope or the client was closed)"
            })
          )
        }
        // A call on a connection that dropped ends at once: the SDK could keep it waiting for
        // the operation timeout.
        const lostError = () =>
          new ConnectionLost({ operation: context.operation, entity: destination, reason: "the connection was lost" })
        const loss = failOnLoss(sender, lostError)
        const call: Effect.Effect<A, SendError> = loss.isLost
          ? Effect.fail(lostError())
          : boundedPromise<A, SendError, OperationTimeout, ConnectionLost>(
            () => f(sender),
            (cause) => sendError(cause, context),
            {
              timeout: client.operationTimeout,
              onTimeout: () =>
                new OperationTimeout({
                  operation: context.operation,
                  entity: context.entity,
                  reason: `no answer within ${Duration.format(client.operationTimeout)}`
                }),
              ...(loss.onLost === undefined ? {} : { onLost: loss.onLost })
            }
          )
        return call.pipe(
          Effect.catchAll((error): Effect.Effect<never, SendError> => {
            if (error._tag === "ConnectionLost" || error._tag === "OperationTimeout") {
              return Effect.zipRight(replace(key, sender), Effect.fail(error))
            }
            // A call on a sender replaced meanwhile by a concurrent send fails as closed: the
            // next attempt takes the new one.
            if (error._tag === "ServiceBusFailure" && senders.get(key) !== sender) {
              return Effect.fail(
                new ConnectionLost({
                  operation: context.operation,
                  entity: destination,
                  code: "SenderReplaced",
                  reason: error.reason
                })
              )
            }
            return Effect.fail(error)
          })
        )
      })
    }

    // The batch size limit of each destination, learnt from its link on the first send: an
    // emulator may not advertise one (rhea then reads undefined or 0), and the configured limit
    // applies, as it does when it is smaller than the link's.
    const limits = new Map<string, { readonly maxBytes: number; readonly sized: number | undefined }>()
    const limitsFrom = (batch: ServiceBusMessageBatch) => {
      const linkMax = typeof batch.maxSizeInBytes === "number" && batch.maxSizeInBytes > 0
        ? batch.maxSizeInBytes
        : undefined
      const maxBytes = linkMax === undefined
        ? options.maxBatchBytes ?? defaultMaxBatchBytes
        : Math.min(linkMax, options.maxBatchBytes ?? linkMax)
      return { maxBytes, sized: maxBytes === linkMax ? undefined : maxBytes }
    }
    const createBatch = async (sender: ServiceBusSender, key: string): Promise<ServiceBusMessageBatch> => {
      const known = limits.get(key)
      if (known !== undefined) {
        return sender.createMessageBatch(known.sized === undefined ? {} : { maxSizeInBytes: known.sized })
      }
      const probe = await sender.createMessageBatch()
      const learnt = limitsFrom(probe)
      limits.set(key, learnt)
      return learnt.sized === undefined ? probe : sender.createMessageBatch({ maxSizeInBytes: learnt.sized })
    }

    const send = (destination: string, messages: ReadonlyArray<Checked>, split: boolean) =>
      Effect.gen(function*() {
        const key = destination.toLowerCase()
        const sdkMessages = messages.map(toSdkMessage)
        const context = { operation: "send", entity: destination, messageId: messages[0].message.messageId }

        // Fills the batch from `start` in plain code, not one effect per message: a hundred small
        // effects would cost more than the encoding itself. Returns where it stopped.
        const fill = (target: ServiceBusMessageBatch, start: number): number | InvalidMessage => {
          let index = start
          try {
            while (index < sdkMessages.length && target.tryAddMessage(sdkMessages[index])) index++
            return index
          } catch (cause) {
            // The SDK throws when a body cannot be written as JSON; its message carries a stack.
            return new InvalidMessage({
              entity: destination,
              index,
              messageId: messages[index].message.messageId,
              reason: redact(String(cause).split("\n")[0].slice(0, 500))
            })
          }
        }

        // The common case in one promise: one batch that takes every message, sent at once.
        // Anything else (an invalid or oversized message, several batches) goes the long way.
        // One message that certainly fits, on a link whose limit is known: sent as it is, as
        // the SDK sends a single message (a batch would be written twice, once to size it).
        const known = limits.get(key)
        if (messages.length === 1 && known !== undefined && fitsAlone(messages[0], known.maxBytes)) {
          yield* retryTransient(
            attempt(destination, context, (sender) => sender.sendMessages(sdkMessages[0])),
            retry
          )
          return { messageCount: 1, batchCount: 1 }
        }

        const first = yield* retryTransient(
          attempt(destination, context, async (sender) => {
            const batch = await createBatch(sender, key)
            const stopped = fill(batch, 0)
            if (stopped !== messages.length) return { batch, stopped }
            await sender.sendMessages(batch)
            return undefined
          }),
          retry
        )
        if (first === undefined) return { messageCount: messages.length, batchCount: 1 }

        const { maxBytes, sized } = limits.get(key) ?? limitsFrom(first.batch)
        const batches: Array<ServiceBusMessageBatch> = []
        let batch = first.batch
        let stopped = first.stopped
        while (true) {
          if (typeof stopped !== "number") return yield* stopped
          if (stopped === messages.length) break
          const index = stopped
          // Only on this rare path is the body written a second time, to report its size.
          const [encoded] = yield* encodeBodies(destination, [messages[index]]).pipe(
            Effect.mapError((error) => new InvalidMessage({ ...error, index }))
          )
          const tooLarge = new MessageTooLarge({
            entity: destination,
            messageId: encoded.message.messageId,
            index,
            bytes: sizeAlone(encoded),
            maxBytes
          })
          // Checked before BatchTooLarge, as the memory sender does: splitting would not help.
          if (batch.count === 0 || tooLarge.bytes! > maxBytes) return yield* tooLarge
          if (!split) {
            return yield* new BatchTooLarge({
              entity: destination,
              messageCount: messages.length,
              fitting: batch.count,
              maxBytes
            })
          }
          batches.push(batch)
          batch = yield* retryTransient(
            attempt(
              destination,
              { ...context, operation: "createMessageBatch" },
              (sender) => sender.createMessageBatch(sized === undefined ? {} : { maxSizeInBytes: sized })
            ),
            retry
          )
          stopped = fill(batch, index)
        }
        batches.push(batch)
        // Every batch was packed before the first is sent, so BatchTooLarge and MessageTooLarge
        // leave nothing behind.
        for (const ready of batches) {
          yield* retryTransient(
            // No abort signal: an interrupted send could not be taken back anyway (the broker may
            // already have it), and passing one costs a measurable share of a send.
            attempt(destination, { ...context, maxBytes }, (sender) => sender.sendMessages(ready)),
            retry
          )
        }
        return { messageCount: messages.length, batchCount: batches.length }
      })

    return Sender.make({ send })
  })

// An in-memory Service Bus namespace: queues, topics fanning out to subscriptions, peek-lock with
// lock expiry, delivery counts, dead-letter queues, deferral, scheduling, time to live and
// duplicate detection, all on the Effect `Clock`. State is plain mutable maps: every operation
// runs synchronously inside one `Effect.sync`, so each is atomic, as a broker operation is.
import type { Schedule, Scope } from "effect"
import { Clock, Duration, Effect } from "effect"
import { randomUUID } from "node:crypto"
import type { OutgoingMessage, Properties, ReceivedMessage } from "../Message.js"
import { propertyNames } from "../Message.js"
import type { MessageReceiverService, Settlement, Source } from "../MessageReceiver.js"
import type {
  MemoryBrokerService,
  MemoryDuplicateDetectionOptions,
  MemoryOperation,
  MemoryOptions,
  MemorySubscriptionOptions,
  MessageSenderService
} from "../MessageSender.js"
import { defaultRetry } from "../ServiceBusClient.js"
import type { SendError, ServiceError, TransientError } from "../ServiceBusError.js"
import { BatchTooLarge, EntityNotFound, MessageLockLost, MessageNotFound, MessageTooLarge } from "../ServiceBusError.js"
import type { Checked, Encoded } from "./messageCodec.js"
import { defaultMaxBatchBytes, encodeBodies, packBatches, sizeAlone } from "./messageCodec.js"
import * as Receiver from "./messageReceiver.js"
import { retryTransient } from "./messageRetry.js"
import * as Sender from "./messageSender.js"

interface Stored {
  readonly message: OutgoingMessage
  properties: Properties | undefined
  readonly sequenceNumber: bigint
  readonly enqueuedAt: number
  readonly availableAt: number
  readonly expiresAt: number | undefined
  deliveries: number
  lock: { readonly token: string; until: number } | undefined
  state: "active" | "deferred"
  deadLetter: { readonly reason: string; readonly description: string | undefined } | undefined
}

interface SubQueue {
  readonly path: string
  readonly isDeadLetter: boolean
  messages: Map<bigint, Stored>
  /** Entries deleted since `messages` was last rebuilt. */
  removed: number
}

// A `Map` keeps the slots of deleted entries until it is rebuilt, and iterating walks over them:
// a queue consumed from its head would make every receive walk over everything consumed before.
const remove = (queue: SubQueue, sequenceNumber: bigint) => {
  if (!queue.messages.delete(sequenceNumber)) return
  if (++queue.removed > 1024 && queue.removed > queue.messages.size) {
    queue.messages = new Map(queue.messages)
    queue.removed = 0
  }
}

interface Receivable {
  readonly path: string
  readonly lockDuration: number
  readonly maxDeliveryCount: number
  readonly defaultTimeToLive: number | undefined
  readonly deadLetteringOnMessageExpiration: boolean
  readonly active: SubQueue
  readonly deadLetter: SubQueue
  nextSequence: bigint
  /** Incremented by every change a waiting receiver may care about. */
  version: number
  /**
   * No lock expires and no message expires before this time (it may be earlier than the first
   * such moment, never later): until then a sweep has nothing to do and is skipped, so that an
   * operation does not cost a walk over the whole entity.
   */
  sweepAfter: number
  readonly waiters: Set<() => void>
}

interface Destination {
  readonly name: string
  readonly targets: ReadonlyArray<Receivable>
  readonly duplicateWindow: number | undefined
  readonly seen: Map<string, number>
  readonly batches: Array<ReadonlyArray<OutgoingMessage>>
  dropped: number
}

interface BrokerInternals {
  readonly send: (destination: string, messages: ReadonlyArray<Checked>, split: boolean) => Effect.Effect<
    { readonly messageCount: number; readonly batchCount: number },
    SendError
  >
  readonly backend: Receiver.ReceiverBackend
}

const internals = new WeakMap<MemoryBrokerService, BrokerInternals>()

const millis = (input: Duration.DurationInput | undefined): number | undefined =>
  input === undefined ? undefined : Duration.toMillis(input)

const makeReceivable = (path: string, options: Omit<MemorySubscriptionOptions, "name">): Receivable => ({
  path,
  lockDuration: millis(options.lockDuration) ?? 60_000,
  maxDeliveryCount: options.maxDeliveryCount ?? 10,
  defaultTimeToLive: millis(options.defaultMessageTimeToLive),
  deadLetteringOnMessageExpiration: options.deadLetteringOnMessageExpiration ?? false,
  active: { path, isDeadLetter: false, messages: new Map(), removed: 0 },
  deadLetter: { path: `${path}/$DeadLetterQueue`, isDeadLetter: true, messages: new Map(), removed: 0 },
  nextSequence: 1n,
  version: 0,
  sweepAfter: Number.POSITIVE_INFINITY,
  waiters: new Set()
})

const duplicateWindowOf = (options: MemoryDuplicateDetectionOptions): number | undefined =>
  options.duplicateDetectionHistoryTimeWindow !== undefined
    ? millis(options.duplicateDetectionHistoryTimeWindow)
    : options.requiresDuplicateDetection === true
    ? 10 * 60_000
    : undefined

export const makeBroker = (options: MemoryOptions): Effect.Effect<MemoryBrokerService> =>
  Effect.sync(() => {
    // Entity names are case-insensitive on Service Bus.
    const destinations = new Map<string, Destination>()
    const receivables = new Map<string, Receivable>()
    const maxBatchBytes = options.maxBatchBytes ?? defaultMaxBatchBytes
    const retry: Schedule.Schedule<unknown, TransientError> = options.retry ?? defaultRetry
    const faults: Array<{ readonly operation: MemoryOperation; readonly error: ServiceError; remaining: number }> = []

    for (const queue of options.queues ?? []) {
      const config = typeof queue === "string" ? { name: queue } : queue
      const receivable = makeReceivable(config.name, config)
      receivables.set(config.name.toLowerCase(), receivable)
      destinations.set(config.name.toLowerCase(), {
        name: config.name,
        targets: [receivable],
        duplicateWindow: duplicateWindowOf(config),
        seen: new Map(),
        batches: [],
        dropped: 0
      })
    }
    for (const topic of options.topics ?? []) {
      const targets = topic.subscriptions.map((subscription) => {
        const config = typeof subscription === "string" ? { name: subscription } : subscription
        const receivable = makeReceivable(`${topic.name}/Subscriptions/${config.name}`, config)
        receivables.set(receivable.path.toLowerCase(), receivable)
        return receivable
      })
      destinations.set(topic.name.toLowerCase(), {
        name: topic.name,
        targets,
        duplicateWindow: duplicateWindowOf(topic),
        seen: new Map(),
        batches: [],
        dropped: 0
      })
    }

    const takeFault = (operation: MemoryOperation): ServiceError | undefined => {
      const index = faults.findIndex((fault) => fault.operation === operation)
      if (index === -1) return undefined
      const fault = faults[index]
      if (--fault.remaining <= 0) faults.splice(index, 1)
      return fault.error
    }
    const faultOr = <A, E>(
      operation: MemoryOperation,
      effect: Effect.Effect<A, E>
    ): Effect.Effect<A, E | ServiceError> =>
      Effect.suspend((): Effect.Effect<A, E | ServiceError> => {
        const error = takeFault(operation)
        return error === undefined ? effect : Effect.fail(error)
      })

    const destinationOf = (operation: string, name: string) => {
      const destination = destinations.get(name.toLowerCase())
      return destination === undefined
        ? Effect.fail(new EntityNotFound({ operation, entity: name }))
        : Effect.succeed(destination)
    }
    const receivableOf = (operation: string, source: Source) => {
      const base = source._tag === "Queue" ? source.queue : `${source.topic}/Subscriptions/${source.subscription}`
      const receivable = receivables.get(base.toLowerCase())
      if (receivable === undefined) {
        return Effect.fail(new EntityNotFound({ operation, entity: Receiver.entityPath(source) }))
      }
      return Effect.succeed({ receivable, queue: source.deadLetter ? receivable.deadLetter : receivable.active })
    }

    const notify = (receivable: Receivable) => {
      receivable.version++
      for (const wake of Array.from(receivable.waiters)) wake()
    }

    const moveToDeadLetter = (
      receivable: Receivable,
      from: SubQueue,
      stored: Stored,
      reason: string,
      description: string | undefined
    ) => {
      remove(from, stored.sequenceNumber)
      stored.lock = undefined
      stored.state = "active"
      stored.deadLetter = { reason, description }
      receivable.deadLetter.messages.set(stored.sequenceNumber, stored)
      notify(receivable)
    }

    // Applies what time has done since the last look: expired locks count as failed deliveries,
    // expired messages leave.
    const sweep = (receivable: Receivable, queue: SubQueue, now: number) => {
      for (const stored of Array.from(queue.messages.values())) {
        if (stored.lock !== undefined && stored.lock.until <= now) {
          stored.lock = undefined
          if (!queue.isDeadLetter && stored.deliveries >= receivable.maxDeliveryCount) {
            moveToDeadLetter(receivable, queue, stored, "MaxDeliveryCountExceeded", maxDeliveryDescription(stored))
            continue
          }
        }
        // Time to live does not apply in a dead-letter queue.
        if (
          !queue.isDeadLetter && stored.lock === undefined && stored.expiresAt !== undefined && stored.expiresAt <= now
        ) {
          if (receivable.deadLetteringOnMessageExpiration) {
            moveToDeadLetter(receivable, queue, stored, "TTLExpiredException", "The message expired.")
          } else {
            remove(queue, stored.sequenceNumber)
            notify(receivable)
          }
        }
      }
    }

    const sweepAll = (receivable: Receivable, now: number) => {
      if (now < receivable.sweepAfter) return
      sweep(receivable, receivable.active, now)
      sweep(receivable, receivable.deadLetter, now)
      let next = Number.POSITIVE_INFINITY
      for (const queue of [receivable.active, receivable.deadLetter]) {
        for (const stored of queue.messages.values()) {
          if (stored.lock !== undefined && stored.lock.until < next) next = stored.lock.until
          if (!queue.isDeadLetter && stored.expiresAt !== undefined && stored.expiresAt < next) next = stored.expiresAt
        }
      }
      receivable.sweepAfter = next
    }
    const sweepBy = (receivable: Receivable, at: number) => {
      if (at < receivable.sweepAfter) receivable.sweepAfter = at
    }

    const maxDeliveryDescription = (stored: Stored) =>
      `Message could not be consumed after ${stored.deliveries} delivery attempts.`

    const view = (queue: SubQueue, stored: Stored, now: number): ReceivedMessage => {
      const { message } = stored
      const received: { -readonly [K in keyof ReceivedMessage]: ReceivedMessage[K] } = {
        ...message,
        entity: queue.path,
        sequenceNumber: stored.sequenceNumber,
        deliveryCount: stored.deliveries,
        enqueuedTime: new Date(stored.enqueuedAt),
        state: stored.state === "deferred" ? "deferred" : stored.availableAt > now ? "scheduled" : "active"
      }
      if (stored.properties === undefined) delete received.applicationProperties
      else received.applicationProperties = stored.properties
      if (stored.expiresAt !== undefined) received.expiresAt = new Date(stored.expiresAt)
      if (stored.lock !== undefined && stored.lock.until > now) {
        received.lockToken = stored.lock.token
        received.lockedUntil = new Date(stored.lock.until)
      }
      if (stored.deadLetter !== undefined) {
        received.deadLetterReason = stored.deadLetter.reason
        if (stored.deadLetter.description !== undefined) {
          received.deadLetterErrorDescription = stored.deadLetter.description
        }
      }
      return received
    }

    const lockLost = (operation: string, queue: SubQueue, stored: Stored, reason: string) =>
      new MessageLockLost({
        operation,
        entity: queue.path,
        messageId: stored.message.messageId,
        reason
      })

    const rawDelivery = (receivable: Receivable, queue: SubQueue, stored: Stored, now: number) => {
      const token = stored.lock!.token
      const message = view(queue, stored, now)
      // The lock is ours while the message is still in that queue, locked with our token, unexpired.
      const holding = (operation: string) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) => {
          sweepAll(receivable, now)
          if (queue.messages.get(stored.sequenceNumber) !== stored || stored.lock?.token !== token) {
            return Effect.fail(lockLost(operation, queue, stored, "the lock expired or the message was settled"))
          }
          return Effect.succeed(now)
        })
      const mergeProperties = (properties: Properties | undefined) => {
        if (properties !== undefined) stored.properties = { ...stored.properties, ...properties }
      }
      const release = () => {
        stored.lock = undefined
        if (!queue.isDeadLetter && stored.deliveries >= receivable.maxDeliveryCount) {
          moveToDeadLetter(receivable, queue, stored, "MaxDeliveryCountExceeded", maxDeliveryDescription(stored))
        }
        notify(receivable)
      }
      const settle = (settlement: Settlement) =>
        faultOr(
          "settle",
          Effect.flatMap(holding(settlement._tag.toLowerCase()), () =>
            Effect.sync(() => {
              switch (settlement._tag) {
                case "Complete":
                  remove(queue, stored.sequenceNumber)
                  return
                case "Abandon":
                  mergeProperties(settlement.properties)
                  return release()
                case "Defer":
                  mergeProperties(settlement.properties)
                  stored.state = "deferred"
                  stored.lock = undefined
                  return
                case "DeadLetter":
                  mergeProperties({
                    ...settlement.properties,
                    [propertyNames.deadLetterReason]: settlement.reason,
                    ...(settlement.description === undefined
                      ? {}
                      : { [propertyNames.deadLetterErrorDescription]: settlement.description })
                  })
                  moveToDeadLetter(receivable, queue, stored, settlement.reason, settlement.description)
                  return
              }
            }))
        )
      const raw: Receiver.RawDelivery = {
        message,
        settle,
        renewLock: faultOr(
          "renewLock",
          Effect.flatMap(holding("renewLock"), (now) =>
            Effect.sync(() => {
              stored.lock!.until = now + receivable.lockDuration
              return new Date(stored.lock!.until)
            }))
        )
      }
      return raw
    }

    const lock = (receivable: Receivable, queue: SubQueue, stored: Stored, now: number) => {
      stored.deliveries++
      stored.lock = { token: randomUUID(), until: now + receivable.lockDuration }
      sweepBy(receivable, stored.lock.until)
      return rawDelivery(receivable, queue, stored, now)
    }

    const takeAvailable = (receivable: Receivable, queue: SubQueue, max: number, now: number) => {
      sweepAll(receivable, now)
      const taken: Array<Receiver.RawDelivery> = []
      for (const stored of queue.messages.values()) {
        if (taken.length >= max) break
        if (stored.state === "active" && stored.lock === undefined && stored.availableAt <= now) {
          taken.push(lock(receivable, queue, stored, now))
        }
      }
      return taken
    }

    // The next moment something may become available without a send: a lock expiring, a
    // scheduled message coming due, a message expiring.
    const nextChange = (receivable: Receivable, now: number): number => {
      let next = Number.POSITIVE_INFINITY
      for (const queue of [receivable.active, receivable.deadLetter]) {
        for (const stored of queue.messages.values()) {
          if (stored.lock !== undefined) next = Math.min(next, stored.lock.until)
          if (stored.availableAt > now) next = Math.min(next, stored.availableAt)
          if (stored.expiresAt !== undefined && !queue.isDeadLetter) next = Math.min(next, stored.expiresAt)
        }
      }
      return next
    }

    // Waits for a notification after `seen`: one that came in between (the racing fibers start
    // later than this is called) is not lost.
    const waitForChange = (receivable: Receivable, seen: number, millis: number) =>
      Effect.race(
        Effect.async<void>((resume) => {
          if (receivable.version !== seen) return resume(Effect.void)
          const wake = () => resume(Effect.void)
          receivable.waiters.add(wake)
          return Effect.sync(() => receivable.waiters.delete(wake))
        }),
        Effect.sleep(Duration.millis(Math.max(0, millis)))
      )

    const receive = (receivable: Receivable, queue: SubQueue, max: number, maxWait: Duration.Duration) =>
      Effect.gen(function*() {
        const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(maxWait)
        while (true) {
          const now = yield* Clock.currentTimeMillis
          const seen = receivable.version
          const taken = takeAvailable(receivable, queue, max, now)
          if (taken.length > 0 || now >= deadline) return taken
          yield* waitForChange(receivable, seen, Math.min(deadline, nextChange(receivable, now)) - now)
        }
      })

    const send = (name: string, checked: ReadonlyArray<Checked>, split: boolean) =>
      Effect.gen(function*() {
        const destination = yield* destinationOf("send", name)
        const messages = yield* encodeBodies(destination.name, checked)
        const packed = packBatches(messages, maxBatchBytes)
        if (packed.tooLarge !== undefined) {
          const encoded = messages[packed.tooLarge]
          return yield* new MessageTooLarge({
            entity: destination.name,
            messageId: encoded.message.messageId,
            index: packed.tooLarge,
            bytes: sizeAlone(encoded),
            maxBytes: maxBatchBytes
          })
        }
        if (!split && packed.batches.length > 1) {
          return yield* new BatchTooLarge({
            entity: destination.name,
            messageCount: messages.length,
            fitting: packed.batches[0].length,
            maxBytes: maxBatchBytes
          })
        }
        for (const batch of packed.batches) {
          yield* retryTransient(
            faultOr("send", Effect.flatMap(Clock.currentTimeMillis, (now) => enqueue(destination, batch, now))),
            retry
          )
        }
        return { messageCount: messages.length, batchCount: packed.batches.length }
      })

    const enqueue = (destination: Destination, batch: ReadonlyArray<Encoded>, now: number) =>
      Effect.sync(() => {
        if (destination.duplicateWindow !== undefined) {
          for (const [id, at] of destination.seen) {
            if (at + destination.duplicateWindow <= now) destination.seen.delete(id)
          }
        }
        const accepted: Array<OutgoingMessage> = []
        for (const encoded of batch) {
          const id = encoded.message.messageId
          if (destination.duplicateWindow !== undefined) {
            if (destination.seen.has(id)) {
              destination.dropped++
              continue
            }
            destination.seen.set(id, now)
          }
          // Bodies go through JSON as they do on the wire, so no test depends on object identity.
          const message: OutgoingMessage = { ...encoded.message, body: JSON.parse(encoded.body.toString("utf8")) }
          accepted.push(message)
          for (const target of destination.targets) {
            const timeToLive = message.timeToLive === undefined
              ? target.defaultTimeToLive
              : Duration.toMillis(message.timeToLive)
            const availableAt = Math.max(now, message.scheduledEnqueueTime?.getTime() ?? now)
            const sequenceNumber = target.nextSequence++
            target.active.messages.set(sequenceNumber, {
              message,
              properties: message.applicationProperties,
              sequenceNumber,
              enqueuedAt: availableAt,
              availableAt,
              expiresAt: timeToLive === undefined ? undefined : availableAt + timeToLive,
              deliveries: 0,
              lock: undefined,
              state: "active",
              deadLetter: undefined
            })
            if (timeToLive !== undefined) sweepBy(target, availableAt + timeToLive)
          }
        }
        if (accepted.length > 0) destination.batches.push(accepted)
        for (const target of destination.targets) notify(target)
      })

    const backend: Receiver.ReceiverBackend = {
      retry,
      open: (source) =>
        Effect.map(receivableOf("receive", source), ({ queue, receivable }) => ({
          receive: (max, maxWait) => faultOr("receive", receive(receivable, queue, max, maxWait))
        })),
      receiveDeferred: (source, sequenceNumbers) =>
        faultOr(
          "receive",
          Effect.flatMap(receivableOf("receiveDeferred", source), ({ queue, receivable }) =>
            Effect.flatMap(Clock.currentTimeMillis, (now) => {
              sweepAll(receivable, now)
              const found = sequenceNumbers.map((sequenceNumber) => queue.messages.get(sequenceNumber))
              const missing = sequenceNumbers.filter((_, index) => {
                const stored = found[index]
                return stored === undefined || stored.state !== "deferred" || stored.lock !== undefined
              })
              if (missing.length > 0) {
                return Effect.fail(
                  new MessageNotFound({
                    operation: "receiveDeferred",
                    entity: queue.path,
                    sequenceNumbers: missing,
                    reason: "not deferred in this entity, or locked by another receiver"
                  })
                )
              }
              return Effect.succeed(found.map((stored) =>
                lock(receivable, queue, stored!, now)
              ))
            }))
        ),
      peek: (source, maxMessages, fromSequenceNumber) =>
        Effect.flatMap(receivableOf("peek", source), ({ queue, receivable }) =>
          Effect.map(Clock.currentTimeMillis, (now) => {
            sweepAll(receivable, now)
            return Array.from(queue.messages.values())
              .filter((stored) =>
                fromSequenceNumber === undefined || stored.sequenceNumber >= fromSequenceNumber
              )
              .slice(0, maxMessages)
              .map((stored) => peeked(view(queue, stored, now)))
          }))
    }

    const service: MemoryBrokerService = {
      sent: (name) => Effect.map(destinationOf("sent", name), (destination) => destination.batches.flat()),
      batches: (name) => Effect.map(destinationOf("batches", name), (destination) => destination.batches.slice()),
      duplicatesDropped: (name) =>
        Effect.map(destinationOf("duplicatesDropped", name), (destination) => destination.dropped),
      messages: (source) =>
        Effect.flatMap(receivableOf("messages", source), ({ queue, receivable }) =>
          Effect.map(Clock.currentTimeMillis, (now) => {
            sweepAll(receivable, now)
            return Array.from(queue.messages.values()).map((stored) =>
              view(queue, stored, now)
            )
          })),
      failNext: (operation, error, times = 1) =>
        Effect.sync(() => faults.push({ operation, error, remaining: times }))
    }
    internals.set(service, { send, backend })
    return service
  })

// A peeked message carries no lock.
const peeked = (message: ReceivedMessage): ReceivedMessage => {
  const { lockToken: _lockToken, lockedUntil: _lockedUntil, ...rest } = message
  return rest
}

const internalsOf = (broker: MemoryBrokerService): BrokerInternals => {
  const found = internals.get(broker)
  if (found === undefined) throw new Error("MemoryBroker: use a broker made by MessageSender.makeMemoryBroker")
  return found
}

export const makeSender = (broker: MemoryBrokerService): MessageSenderService =>
  Sender.make({ send: internalsOf(broker).send })

export const makeReceiver = (broker: MemoryBrokerService): Effect.Effect<MessageReceiverService, never, Scope.Scope> =>
  Receiver.make(internalsOf(broker).backend)

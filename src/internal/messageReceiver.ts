// The receiver service shared by the memory and Service Bus implementations: a backend supplies
// raw deliveries and settles them; this module adds what must behave identically on both, so
// that the conformance suite tests it once: settle-once, lock renewal on a fiber, abandon of
// unsettled deliveries when their scope closes, retries of transient failures, and spans.
import type { Schedule } from "effect"
import { Chunk, Clock, Duration, Effect, Fiber, FiberSet, Option, Scope, Stream } from "effect"
import type { ReceivedMessage } from "../Message.js"
import type {
  Delivery,
  LockRenewalOptions,
  MessageReceiverService,
  ReceiveOptions,
  Settlement,
  Source
} from "../MessageReceiver.js"
import type { ReceiveError, SettleError, TransientError } from "../ServiceBusError.js"
import { AlreadySettled, isTransient } from "../ServiceBusError.js"
import { closeWithin } from "./closeWithin.js"
import { retryTransient } from "./messageRetry.js"

export interface RawDelivery {
  readonly message: ReceivedMessage
  readonly settle: (settlement: Settlement) => Effect.Effect<void, SettleError>
  readonly renewLock: Effect.Effect<Date, SettleError>
}

export interface ReceiverLink {
  readonly receive: (
    maxMessages: number,
    maxWait: Duration.Duration
  ) => Effect.Effect<ReadonlyArray<RawDelivery>, ReceiveError>
}

export interface ReceiverBackend {
  /** Opens a link on the source for the lifetime of the scope. */
  readonly open: (source: Source) => Effect.Effect<ReceiverLink, ReceiveError, Scope.Scope>
  readonly receiveDeferred: (
    source: Source,
    sequenceNumbers: ReadonlyArray<bigint>
  ) => Effect.Effect<ReadonlyArray<RawDelivery>, ReceiveError>
  readonly peek: (
    source: Source,
    maxMessages: number,
    fromSequenceNumber: bigint | undefined
  ) => Effect.Effect<ReadonlyArray<ReceivedMessage>, ReceiveError>
  readonly retry: Schedule.Schedule<unknown, TransientError>
}

export const entityPath = (source: Source): string => {
  const base = source._tag === "Queue" ? source.queue : `${source.topic}/Subscriptions/${source.subscription}`
  return source.deadLetter ? `${base}/$DeadLetterQueue` : base
}

const defaultMaxWait = Duration.seconds(60)
const defaultRenewalFraction = 0.5
const defaultMaxRenewal = Duration.minutes(5)
// Below this, renewing would be a busy loop; a lock that short cannot be kept anyway.
const minRenewalIntervalMillis = 50

interface Tracker {
  readonly unsettled: Set<DeliveryImpl>
  readonly fibers: FiberSet.FiberSet
}

interface DeliveryImpl extends Delivery {
  readonly abandonQuietly: Effect.Effect<void>
}

// One tracker per scope that owns deliveries: its finalizer abandons what is still unsettled
// (before the link closes, as finalizers run in reverse order), then stops the renewal fibers.
const makeTracker: Effect.Effect<Tracker, never, Scope.Scope> = Effect.gen(function*() {
  const fibers = yield* FiberSet.make()
  const unsettled = new Set<DeliveryImpl>()
  yield* Effect.addFinalizer(() =>
    Effect.forEach(Array.from(unsettled), (delivery) => delivery.abandonQuietly, {
      concurrency: "unbounded",
      discard: true
    })
  )
  return { fibers, unsettled }
})

const renewalLoop = (
  raw: RawDelivery,
  options: LockRenewalOptions,
  retry: Schedule.Schedule<unknown, TransientError>
): Effect.Effect<void> =>
  Effect.gen(function*() {
    const initial = raw.message.lockedUntil
    if (initial === undefined) return
    const fraction = Math.min(0.95, Math.max(0.05, options.fraction ?? defaultRenewalFraction))
    const maxDuration = Duration.toMillis(options.maxDuration ?? defaultMaxRenewal)
    const start = yield* Clock.currentTimeMillis
    let lockedUntil = initial.getTime()
    while (true) {
      const now = yield* Clock.currentTimeMillis
      const wait = Math.max(minRenewalIntervalMillis, (lockedUntil - now) * fraction)
      if (now + wait - start > maxDuration) return
      yield* Effect.sleep(Duration.millis(wait))
      const renewed = yield* retryTransient(raw.renewLock, retry)
      lockedUntil = renewed.getTime()
    }
  }).pipe(
    Effect.catchAllCause((cause) => Effect.logWarning("Lock renewal stopped", cause)),
    Effect.annotateLogs({ entity: raw.message.entity, messageId: raw.message.messageId ?? "" })
  )

const makeDelivery = (
  source: Source,
  raw: RawDelivery,
  tracker: Tracker,
  lockRenewal: LockRenewalOptions | false | undefined,
  retry: Schedule.Schedule<unknown, TransientError>
): Effect.Effect<Delivery> =>
  Effect.gen(function*() {
    const message = raw.message
    let settledWith: Settlement | undefined
    let renewal: Fiber.RuntimeFiber<void> | undefined
    const stopRenewal = Effect.suspend(() => renewal === undefined ? Effect.void : Fiber.interrupt(renewal))
    const attributes = {
      entity: message.entity,
      messageId: message.messageId ?? "",
      sequenceNumber: String(message.sequenceNumber)
    }

    const settle = (settlement: Settlement): Effect.Effect<void, SettleError> =>
      Effect.suspend(() => {
        if (settledWith !== undefined) {
          return Effect.fail(
            new AlreadySettled({
              entity: message.entity,
              messageId: message.messageId,
              settlement: settledWith._tag,
              attempted: settlement._tag
            })
          )
        }
        settledWith = settlement
        tracker.unsettled.delete(delivery)
        return stopRenewal.pipe(
          Effect.zipRight(retryTransient(raw.settle(settlement), retry)),
          Effect.tapError((error) =>
            // A transient failure left the message as it was: let the caller settle it again.
            isTransient(error)
              ? Effect.sync(() => {
                settledWith = undefined
                tracker.unsettled.add(delivery)
              })
              : Effect.void
          ),
          Effect.withSpan("MessageReceiver.settle", { attributes: { ...attributes, settlement: settlement._tag } })
        )
      })

    const delivery: DeliveryImpl = {
      message,
      source,
      settle,
      complete: settle({ _tag: "Complete" }),
      abandon: (properties) => settle(properties === undefined ? { _tag: "Abandon" } : { _tag: "Abandon", properties }),
      deadLetter: (options) => settle({ _tag: "DeadLetter", ...options }),
      defer: (properties) => settle(properties === undefined ? { _tag: "Defer" } : { _tag: "Defer", properties }),
      renewLock: Effect.suspend(() =>
        settledWith === undefined
          ? retryTransient(raw.renewLock, retry)
          : Effect.fail(
            new AlreadySettled({
              entity: message.entity,
              messageId: message.messageId,
              settlement: settledWith._tag,
              attempted: "renewLock"
            })
          )
      ).pipe(Effect.withSpan("MessageReceiver.renewLock", { attributes })),
      settlement: Effect.sync(() => Option.fromNullable(settledWith)),
      // Used when the owning scope closes: no retries, a short time limit, failures only logged,
      // since the lock expires by itself anyway.
      abandonQuietly: Effect.suspend(() => {
        if (settledWith !== undefined) return Effect.void
        settledWith = { _tag: "Abandon" }
        tracker.unsettled.delete(delivery)
        // Runs from a scope's finalizer, where a plain timeout would not bound it.
        return closeWithin(
          stopRenewal.pipe(
            Effect.zipRight(raw.settle({ _tag: "Abandon" })),
            Effect.catchAllCause((cause) =>
              Effect.logDebug("Abandoning an unsettled delivery failed; its lock will expire", cause)
            )
          ),
          "5 seconds",
          "Abandoning an unsettled delivery"
        ).pipe(Effect.annotateLogs(attributes))
      })
    }
    tracker.unsettled.add(delivery)
    if (lockRenewal !== false && message.lockedUntil !== undefined) {
      // Explicitly interruptible: deliveries are wrapped in an uninterruptible region, and a forked
      // fiber inherits that, which would make `stopRenewal` wait for ever.
      renewal = yield* FiberSet.run(tracker.fibers, Effect.interruptible(renewalLoop(raw, lockRenewal ?? {}, retry)))
    }
    return delivery
  })

const keyOf = (source: Source): string => entityPath(source).toLowerCase()

export const make = (backend: ReceiverBackend): Effect.Effect<MessageReceiverService, never, Scope.Scope> =>
  Effect.gen(function*() {
    const layerScope = yield* Effect.scope
    const retrying = <A, E, R>(effect: Effect.Effect<A, E, R>) => retryTransient(effect, backend.retry)

    // Links for `receive`, one per source, kept for the receiver's lifetime; a link receives one
    // call at a time (the SDK refuses concurrent receives on one receiver).
    const links = new Map<string, { readonly link: ReceiverLink; readonly lock: Effect.Semaphore }>()
    const linksLock = yield* Effect.makeSemaphore(1)
    const cachedLink = (source: Source) =>
      linksLock.withPermits(1)(Effect.suspend(() => {
        const existing = links.get(keyOf(source))
        if (existing !== undefined) return Effect.succeed(existing)
        return Effect.gen(function*() {
          const link = yield* Scope.extend(backend.open(source), layerScope)
          const entry = { link, lock: yield* Effect.makeSemaphore(1) }
          links.set(keyOf(source), entry)
          return entry
        })
      }))

    const wrapAll = (
      source: Source,
      raws: ReadonlyArray<RawDelivery>,
      tracker: Tracker,
      options: Pick<ReceiveOptions, "lockRenewal"> | undefined
    ) => Effect.forEach(raws, (raw) => makeDelivery(source, raw, tracker, options?.lockRenewal, backend.retry))

    const service: MessageReceiverService = {
      stream: (source, options) =>
        Stream.unwrapScoped(Effect.gen(function*() {
          const link = yield* retrying(backend.open(source))
          const tracker = yield* makeTracker
          const maxMessages = Math.max(1, options?.maxMessages ?? 10)
          const maxWait = Duration.decode(options?.maxWaitTime ?? defaultMaxWait)
          // Wrapping is uninterruptible so that a received message is always tracked (and so
          // abandoned if the stream stops) rather than left locked until its lock expires.
          const pull = Effect.uninterruptibleMask((restore) =>
            restore(retrying(link.receive(maxMessages, maxWait))).pipe(
              Effect.flatMap((raws) => wrapAll(source, raws, tracker, options)),
              Effect.map(Chunk.unsafeFromArray)
            )
          )
          return Stream.repeatEffectChunk(pull)
        })),

      receive: (source, options) =>
        Effect.gen(function*() {
          const { link, lock } = yield* retrying(cachedLink(source))
          const tracker = yield* makeTracker
          const maxMessages = Math.max(1, options?.maxMessages ?? 1)
          const maxWait = Duration.decode(options?.maxWaitTime ?? defaultMaxWait)
          return yield* Effect.uninterruptibleMask((restore) =>
            restore(lock.withPermits(1)(retrying(link.receive(maxMessages, maxWait)))).pipe(
              Effect.flatMap((raws) => wrapAll(source, raws, tracker, options))
            )
          )
        }).pipe(Effect.withSpan("MessageReceiver.receive", { attributes: { entity: entityPath(source) } })),

      receiveDeferred: (source, sequenceNumbers, options) =>
        Effect.gen(function*() {
          const tracker = yield* makeTracker
          return yield* Effect.uninterruptibleMask((restore) =>
            restore(retrying(backend.receiveDeferred(source, sequenceNumbers))).pipe(
              Effect.flatMap((raws) => wrapAll(source, raws, tracker, options))
            )
          )
        }).pipe(
          Effect.withSpan("MessageReceiver.receiveDeferred", {
            attributes: { entity: entityPath(source), sequenceNumbers: sequenceNumbers.join(",") }
          })
        ),

      peek: (source, options) =>
        retrying(backend.peek(source, Math.max(1, options?.maxMessages ?? 10), options?.fromSequenceNumber)).pipe(
          Effect.withSpan("MessageReceiver.peek", { attributes: { entity: entityPath(source) } })
        )
    }
    return service
  })

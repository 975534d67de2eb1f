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
import { withSpanIfTracing } from "./tracing.js"

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

export interface Tracker {
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
  Effect.suspend(() => {
    const delivery = makeTracked(source, raw, tracker, retry)
    if (lockRenewal === false || raw.message.lockedUntil === undefined) return Effect.succeed(delivery)
    // Explicitly interruptible: deliveries are wrapped in an uninterruptible region, and a forked
    // fiber inherits that, which would make `stopRenewal` wait for ever.
    return Effect.map(
      FiberSet.run(tracker.fibers, Effect.interruptible(renewalLoop(raw, lockRenewal ?? {}, retry))),
      (fiber) => {
        delivery.renewWith(fiber)
        return delivery
      }
    )
  })

/** A delivery that the caller tracks itself: abandoned quietly when given up, settled or not. */
export interface TrackedDelivery extends DeliveryImpl {
  readonly isSettled: () => boolean
  readonly renewWith: (fiber: Fiber.RuntimeFiber<void>) => void
}

const makeTracked = (
  source: Source,
  raw: RawDelivery,
  tracker: Tracker,
  retry: Schedule.Schedule<unknown, TransientError>
): TrackedDelivery => {
  const message = raw.message
  let settledWith: Settlement | undefined
  let renewal: Fiber.RuntimeFiber<void> | undefined
  const stopRenewal = Effect.suspend(() => renewal === undefined ? Effect.void : Fiber.interrupt(renewal))
  const attributes = () => ({
    entity: message.entity,
    messageId: message.messageId ?? "",
    sequenceNumber: String(message.sequenceNumber)
  })

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
        (effect) =>
          withSpanIfTracing(effect, "MessageReceiver.settle", () => ({
            captureStackTrace: false,
            attributes: { ...attributes(), settlement: settlement._tag }
          }))
      )
    })

  const delivery: TrackedDelivery = {
    isSettled: () => settledWith !== undefined,
    renewWith: (fiber) => {
      renewal = fiber
    },
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
    ).pipe((effect) =>
      withSpanIfTracing(
        effect,
        "MessageReceiver.renewLock",
        () => ({ captureStackTrace: false, attributes: attributes() })
      )
    ),
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
      ).pipe(Effect.annotateLogs(attributes()))
    })
  }
  tracker.unsettled.add(delivery)
  return delivery
}

/**
 * What the processor uses instead of `receive`: deliveries without lock renewal, tracked by a
 * tracker the caller keeps for as long as it likes (one per link, rather than a scope per call),
 * which abandons whatever is unsettled when its scope closes.
 */
export interface ReceiverInternals {
  readonly makeTracker: Effect.Effect<Tracker, never, Scope.Scope>
  readonly receive: (
    source: Source,
    maxMessages: number,
    maxWait: Duration.Duration,
    tracker: Tracker
  ) => Effect.Effect<ReadonlyArray<TrackedDelivery>, ReceiveError>
}

const internals = new WeakMap<MessageReceiverService, ReceiverInternals>()

/** The internals of a receiver made by `make`; undefined for any other implementation. */
export const internalsOf = (receiver: MessageReceiverService): ReceiverInternals | undefined => internals.get(receiver)

const keyOf = (source: Source): string => entityPath(source).toLowerCase()

export const make = (backend: ReceiverBackend): Effect.Effect<MessageReceiverService, never, Scope.Scope> =>
  Effect.gen(function*() {
    const layerScope = yield* Effect.scope
    const retrying = <A, E, R>(effect: Effect.Effect<A, E, R>) => retryTransient(effect, backend.retry)

    // Links for `receive`, one per source, kept for the receiver's lifetime; a link receives one
    // call at a time (the SDK refuses concurrent receives on one receiver).
    const links = new Map<string, { readonly link: ReceiverLink; readonly lock: Effect.Semaphore }>()
    const linksLock = yield* Effect.makeSemaphore(1)
    // `lane` tells apart links on the same source: the processor's link is lane 1.
    const cachedLink = (source: Source, lane = 0) => {
      const found = links.get(lane === 0 ? keyOf(source) : `${keyOf(source)}#${lane}`)
      return found !== undefined ? Effect.succeed(found) : openLink(source, lane)
    }
    const openLink = (source: Source, lane: number) =>
      linksLock.withPermits(1)(Effect.suspend(() => {
        const key = lane === 0 ? keyOf(source) : `${keyOf(source)}#${lane}`
        const existing = links.get(key)
        if (existing !== undefined) return Effect.succeed(existing)
        return Effect.gen(function*() {
          const link = yield* Scope.extend(backend.open(source), layerScope)
          const entry = { link, lock: yield* Effect.makeSemaphore(1) }
          links.set(key, entry)
          return entry
        })
      }))

    const wrapAll = (
      source: Source,
      raws: ReadonlyArray<RawDelivery>,
      tracker: Tracker,
      options: Pick<ReceiveOptions, "lockRenewal"> | undefined
    ) => Effect.forEach(raws, (raw) => makeDelivery(source, raw, tracker, options?.lockRenewal, backend.retry))

    const internal: ReceiverInternals = {
      makeTracker,
      // On a link of its own: a loop that receives again as soon as a receive ends would
      // otherwise keep a `receive` of the public API waiting for link 0 for good (a semaphore
      // wakes its waiter a task later, and the loop takes the permit back first).
      receive: (source, maxMessages, maxWait, tracker) =>
        Effect.flatMap(
          retrying(cachedLink(source, 1)),
          ({ link, lock }) =>
            Effect.uninterruptibleMask((restore) =>
              Effect.map(
                restore(lock.withPermits(1)(retrying(link.receive(maxMessages, maxWait)))),
                (raws) => raws.map((raw) => makeTracked(source, raw, tracker, backend.retry))
              )
            )
        ).pipe((effect) =>
          withSpanIfTracing(effect, "MessageReceiver.receive", () => ({
            captureStackTrace: false,
            attributes: { entity: entityPath(source) }
          }))
        )
    }

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
        }).pipe((effect) =>
          withSpanIfTracing(effect, "MessageReceiver.receive", () => ({
            captureStackTrace: false,
            attributes: { entity: entityPath(source) }
          }))
        ),

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
    internals.set(service, internal)
    return service
  })

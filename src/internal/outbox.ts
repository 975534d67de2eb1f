// The outbox pump: wake-ups from commits in this process and a periodic sweep of the pending index
// both feed one dispatcher, which forwards each stream's undispatched events in order (one send
// per destination and chunk) and then records the position with one conditional write.
import type { Scope } from "effect"
import { Clock, Duration, Effect, Metric, MetricBoundaries, Queue, Schedule } from "effect"
import type { RecordedEvent } from "../EventStore.js"
import { isTransient as isStoreTransient } from "../EventStoreError.js"
import type { OutgoingMessage } from "../Message.js"
import { idFromEvent } from "../Message.js"
import { MessageSender } from "../MessageSender.js"
import type * as Api from "../Outbox.js"
import type { OutboxStoreService, PendingEntry, Progress } from "../OutboxStore.js"
import { bucketOf, OutboxStore } from "../OutboxStore.js"
import { isTransient as isBusTransient } from "../ServiceBusError.js"

export const propertyNames = {
  streamId: "streamId",
  version: "streamVersion",
  eventType: "eventType",
  schemaVersion: "schemaVersion"
} as const

export const defaultBatchSize = 100
export const defaultConcurrency = 8
export const defaultGracePeriod: Duration.Duration = Duration.minutes(5)
export const defaultSweep: Schedule.Schedule<unknown> = Schedule.spaced("1 minute")
export const defaultRetry: Schedule.Schedule<unknown, Api.DispatchError> = Schedule.exponential("100 millis", 2).pipe(
  Schedule.jittered,
  Schedule.union(Schedule.spaced("5 seconds")),
  Schedule.intersect(Schedule.recurs(6)),
  Schedule.asVoid
)
// After the retries ran out, the stream is tried again this much later (the sweep would only
// find it once its bucket is older than the grace period).
const redispatchDelay = Duration.seconds(5)
const positionCacheCapacity = 10_000

export const metrics = {
  eventsDispatched: Metric.counter("outbox_events_dispatched", {
    description: "Events sent to Service Bus and recorded as dispatched",
    incremental: true
  }),
  failures: Metric.counter("outbox_dispatch_failures", {
    description: "Stream dispatches that failed after their retries",
    incremental: true
  }),
  lag: Metric.histogram(
    "outbox_lag_ms",
    MetricBoundaries.exponential({ start: 1, factor: 2, count: 20 }),
    "Milliseconds from an event's timestamp to its send"
  ),
  queuedStreams: Metric.gauge("outbox_queued_streams", { description: "Streams waiting for dispatch in this process" })
}

export const isTransient = (error: Api.DispatchError): boolean => isStoreTransient(error) || isBusTransient(error)

export const toMessage = (event: RecordedEvent): OutgoingMessage => {
  const message: {
    -readonly [K in keyof OutgoingMessage]: OutgoingMessage[K]
  } = {
    messageId: idFromEvent(event.eventId),
    subject: event.type,
    body: event.data,
    applicationProperties: {
      [propertyNames.streamId]: event.streamId,
      [propertyNames.version]: event.version,
      [propertyNames.eventType]: event.type,
      [propertyNames.schemaVersion]: event.schemaVersion
    }
  }
  if (event.metadata.correlationId !== undefined) message.correlationId = event.metadata.correlationId
  if (event.metadata.causationId !== undefined) message.causationId = event.metadata.causationId
  return message
}

// Groups a chunk's messages by destination, each group in version order; events no route claims
// are skipped (and counted as dispatched: their position moves past them).
const groupByDestination = (
  events: ReadonlyArray<RecordedEvent>,
  route: Api.Options["route"]
): Map<string, Array<OutgoingMessage>> => {
  const groups = new Map<string, Array<OutgoingMessage>>()
  for (const event of events) {
    const destination = route(event)
    if (destination === undefined) continue
    const group = groups.get(destination) ?? []
    group.push(toMessage(event))
    groups.set(destination, group)
  }
  return groups
}

interface Position {
  readonly dispatched: number
  readonly token: string | undefined
}

export const make = (
  options: Api.Options
): Effect.Effect<Api.OutboxService, never, OutboxStore | MessageSender | Scope.Scope> =>
  Effect.gen(function*() {
    const store: OutboxStoreService = yield* OutboxStore
    const sender = yield* MessageSender
    const scope = yield* Effect.scope
    const batchSize = Math.max(1, Math.min(options.batchSize ?? defaultBatchSize, 1_000))
    const concurrency = Math.max(1, options.concurrency ?? defaultConcurrency)
    const retry = options.retry ?? defaultRetry
    // Never shorter than the store's append window: a younger bucket may still get commits.
    const grace = Duration.max(Duration.decode(options.gracePeriod ?? defaultGracePeriod), store.appendWindow)
    const bucketMillis = Duration.toMillis(store.bucketSize)

    // Positions this process recorded or read, so a wake-up reads only the new events, in one query.
    const positions = new Map<string, Position>()
    const remember = (streamId: string, position: Position) => {
      positions.delete(streamId)
      positions.set(streamId, position)
      if (positions.size > positionCacheCapacity) {
        const oldest = positions.keys().next()
        if (oldest.done !== true) positions.delete(oldest.value)
      }
    }
    // The highest version a commit notification announced, per stream waiting in the queue.
    const announced = new Map<string, number>()

    // One dispatch of a stream at a time in this process (wake-ups and sweeps both come here).
    const locks = new Map<string, { readonly semaphore: Effect.Semaphore; users: number }>()
    const exclusive = <A, E, R>(streamId: string, effect: Effect.Effect<A, E, R>) =>
      Effect.acquireUseRelease(
        Effect.sync(() => {
          const lock = locks.get(streamId) ?? { semaphore: Effect.unsafeMakeSemaphore(1), users: 0 }
          lock.users++
          locks.set(streamId, lock)
          return lock
        }),
        (lock) => lock.semaphore.withPermits(1)(effect),
        (lock) =>
          Effect.sync(() => {
            if (--lock.users === 0) locks.delete(streamId)
          })
      )

    const sendChunk = (streamId: string, chunk: ReadonlyArray<RecordedEvent>, position: Position) =>
      Effect.gen(function*() {
        const groups = groupByDestination(chunk, options.route)
        for (const [destination, messages] of groups) {
          yield* sender.send(destination, messages, { split: true })
        }
        const to = chunk[chunk.length - 1].version
        const token = yield* store.recordDispatched(streamId, position.token, to)
        if (token === undefined) return undefined
        yield* Metric.incrementBy(metrics.eventsDispatched, chunk.length)
        const now = yield* Clock.currentTimeMillis
        for (const event of chunk) {
          const at = Date.parse(event.metadata.timestamp)
          if (!Number.isNaN(at)) yield* Metric.update(metrics.lag, Math.max(0, now - at))
        }
        return { dispatched: to, token }
      }).pipe(
        Effect.withSpan("Outbox.dispatch", {
          captureStackTrace: false,
          attributes: {
            streamId,
            fromVersion: chunk[0].version,
            toVersion: chunk[chunk.length - 1].version,
            eventCount: chunk.length
          }
        })
      )

    // Reads what is left to dispatch: with a known position, the events after it and the
    // position in one query; otherwise the position first.
    const readProgress = (streamId: string): Effect.Effect<Progress, Api.DispatchError> =>
      Effect.gen(function*() {
        const known = positions.get(streamId)
        if (known !== undefined) {
          const progress = yield* store.progress(streamId, { fromVersion: known.dispatched + 1 })
          if (progress.dispatched >= known.dispatched) return progress
        }
        const bare = yield* store.progress(streamId)
        if (bare.dispatched >= bare.version) return bare
        return yield* store.progress(streamId, { fromVersion: bare.dispatched + 1 })
      })

    // Dispatches everything up to the end of the stream as read. A lost conditional write means
    // another instance moved the position: read again and go on from there.
    const dispatchOnce = (streamId: string): Effect.Effect<void, Api.DispatchError> =>
      Effect.gen(function*() {
        while (true) {
          const progress = yield* readProgress(streamId)
          let position: Position = { dispatched: progress.dispatched, token: progress.token }
          remember(streamId, position)
          const events = progress.events.filter((event) => event.version > position.dispatched)
          let lost = false
          for (let index = 0; index < events.length; index += batchSize) {
            const next = yield* sendChunk(streamId, events.slice(index, index + batchSize), position)
            if (next === undefined) {
              positions.delete(streamId)
              lost = true
              break
            }
            position = next
            remember(streamId, position)
          }
          if (!lost) return
        }
      })

    const dispatch = (streamId: string): Effect.Effect<void, Api.DispatchError> =>
      exclusive(
        streamId,
        Effect.retry(dispatchOnce(streamId), { schedule: retry, while: isTransient })
      )

    // The queue of streams to dispatch, each at most once in it.
    const queue = yield* Queue.unbounded<string>()
    const queued = new Set<string>()
    const enqueue = (streamId: string): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (queued.has(streamId)) return Effect.void
        queued.add(streamId)
        return Queue.offer(queue, streamId)
      })

    const failed = (streamId: string, error: unknown) =>
      Effect.logWarning("Outbox dispatch failed; the stream is tried again later", error).pipe(
        Effect.annotateLogs({ streamId }),
        Effect.zipRight(Metric.increment(metrics.failures)),
        Effect.zipRight(
          Effect.sleep(redispatchDelay).pipe(Effect.zipRight(enqueue(streamId)), Effect.forkIn(scope), Effect.asVoid)
        )
      )

    const worker = Effect.gen(function*() {
      const streamId = yield* Queue.take(queue)
      queued.delete(streamId)
      const wanted = announced.get(streamId)
      announced.delete(streamId)
      yield* Metric.set(metrics.queuedStreams, queued.size)
      // A notification for versions this process already dispatched costs nothing.
      const known = positions.get(streamId)
      if (wanted !== undefined && known !== undefined && known.dispatched >= wanted) return
      yield* dispatch(streamId).pipe(Effect.catchAll((error) => failed(streamId, error)))
    }).pipe(Effect.catchAllCause((cause) => Effect.logWarning("Outbox worker failed", cause)), Effect.forever)

    const commits = yield* store.commits
    const listener = Effect.gen(function*() {
      const batch = yield* Queue.takeBetween(commits, 1, Number.MAX_SAFE_INTEGER)
      for (const commit of batch) {
        announced.set(commit.streamId, Math.max(announced.get(commit.streamId) ?? 0, commit.version))
        yield* enqueue(commit.streamId)
      }
    }).pipe(Effect.forever)

    const sweep: Effect.Effect<Api.SweepResult, Api.DispatchError> = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const endedBefore = now - Duration.toMillis(grace)
      const mark = yield* store.sweepMark
      const entries = yield* store.pending(mark === undefined ? { endedBefore } : { endedBefore, fromBucket: mark })
      const streams = Array.from(new Set(entries.map((entry) => entry.streamId)))
      const done = new Set<string>()
      let failures = 0
      yield* Effect.forEach(streams, (streamId) =>
        dispatch(streamId).pipe(
          Effect.zipRight(store.progress(streamId)),
          Effect.tap((progress) => {
            // Every append started in these buckets has committed or failed: if the position is at
            // the head now, their events are dispatched and the entries can go.
            if (progress.dispatched >= progress.version) done.add(streamId)
          }),
          Effect.catchAll((error) => {
            failures++
            return Effect.logWarning("Outbox sweep could not dispatch a stream", error).pipe(
              Effect.annotateLogs({ streamId }),
              Effect.zipRight(Metric.increment(metrics.failures))
            )
          })
        ), { concurrency, discard: true })
      const cleared: Array<PendingEntry> = entries.filter((entry) => done.has(entry.streamId))
      yield* store.clearPending(cleared)
      const left = entries.filter((entry) => !done.has(entry.streamId))
      const upper = bucketOf(endedBefore - bucketMillis, bucketMillis) + bucketMillis
      const nextMark = left.length === 0 ? upper : Math.min(...left.map((entry) => entry.bucket))
      if (mark === undefined || nextMark > mark) yield* store.setSweepMark(nextMark)
      return { streams: streams.length, cleared: cleared.length, failures }
    }).pipe(Effect.withSpan("Outbox.sweep", { captureStackTrace: false }))

    yield* Effect.forkIn(listener, scope)
    for (let index = 0; index < concurrency; index++) yield* Effect.forkIn(worker, scope)
    yield* sweep.pipe(
      Effect.catchAllCause((cause) => Effect.logWarning("Outbox sweep failed", cause)),
      Effect.repeat(options.sweep ?? defaultSweep),
      Effect.annotateLogs({ module: "Outbox" }),
      Effect.forkIn(scope)
    )

    const service: Api.OutboxService = {
      sweep,
      dispatch: (streamId) => dispatch(streamId).pipe(Effect.annotateLogs({ module: "Outbox" })),
      wake: enqueue
    }
    return service
  })

import type { Scope } from "effect"
import { Clock, Duration, Effect, Option, Queue, Ref } from "effect"
import type { AppendResult, EventData, EventStoreService, RecordedEvent, Snapshot } from "../EventStore.js"
import { ConcurrencyConflict } from "../EventStoreError.js"
import type { Committed, OutboxStoreService, PendingEntry } from "../OutboxStore.js"
import { bucketOf, defaultBucketSize } from "../OutboxStore.js"
import { checkAppend } from "./eventLimits.js"
import * as EventStoreMetrics from "./eventStoreMetrics.js"
import { validateStreamId } from "./tableLayout.js"

const measureAppend = EventStoreMetrics.measure("memory")

interface StoredStream {
  readonly events: ReadonlyArray<RecordedEvent>
  readonly snapshot: Option.Option<Snapshot>
}

// Values go through JSON on the way in and out, as they do in Table Storage, so a test cannot
// depend on object identity or on values JSON would not keep.
const roundTrip = <A>(value: A): A => JSON.parse(JSON.stringify(value)) as A

// The events at the versions this append would take carry its event ids, in order.
const isAlreadyStored = (
  stored: ReadonlyArray<RecordedEvent>,
  expectedVersion: number,
  events: ReadonlyArray<EventData>
): boolean =>
  events.length > 0 && Number.isInteger(expectedVersion) && expectedVersion >= 0 &&
  stored.length >= expectedVersion + events.length &&
  events.every((event, index) => stored[expectedVersion + index].eventId === event.eventId)

export interface Stores {
  readonly eventStore: EventStoreService
  readonly outboxStore: OutboxStoreService
}

export const makeStoresWith = (
  options: { readonly pendingBucketSize?: Duration.DurationInput } = {}
): Effect.Effect<Stores> =>
  Effect.gen(function*() {
    const streams = yield* Ref.make(new Map<string, StoredStream>())
    const bucketSize = Duration.decode(options.pendingBucketSize ?? defaultBucketSize)
    const bucketMillis = Duration.toMillis(bucketSize)
    // The outbox side: the same semantics as the Azure layout, kept in plain maps (every access is
    // synchronous, so no interleaving can split an update).
    const positions = new Map<string, { readonly dispatched: number; readonly token: string }>()
    const pendingIndex = new Map<number, Set<string>>()
    let sweepMark: number | undefined
    let tokens = 0
    const subscribers = new Set<Queue.Queue<Committed>>()

    const indexPending = (streamId: string) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const bucket = bucketOf(now, bucketMillis)
        const entries = pendingIndex.get(bucket) ?? new Set<string>()
        entries.add(streamId)
        pendingIndex.set(bucket, entries)
      })

    const notify = (committed: Committed) =>
      Effect.sync(() => {
        for (const queue of subscribers) queue.unsafeOffer(committed)
      })

    const readStream = (streamId: string) => Ref.get(streams).pipe(Effect.map((map) => map.get(streamId)))

    const service: EventStoreService = {
      read: (streamId, options) =>
        Effect.gen(function*() {
          yield* validateStreamId(streamId)
          const stream = yield* readStream(streamId)
          const from = options?.fromVersion ?? 1
          const to = options?.toVersion ?? Number.MAX_SAFE_INTEGER
          return (stream?.events ?? []).filter((event) => event.version >= from && event.version <= to).map(roundTrip)
        }).pipe(Effect.withSpan("EventStore.read", { attributes: { streamId } })),

      load: (streamId, options) =>
        Effect.gen(function*() {
          yield* validateStreamId(streamId)
          const stream = yield* readStream(streamId)
          const events = stream?.events ?? []
          const snapshot = options?.snapshotSchemaVersion === undefined
            ? Option.none()
            : Option.filter(
              stream?.snapshot ?? Option.none(),
              (snapshot) => snapshot.schemaVersion === options.snapshotSchemaVersion
            )
          const after = Option.match(snapshot, { onNone: () => 0, onSome: (snapshot) => snapshot.version })
          return {
            streamId,
            version: events.length,
            snapshot: Option.map(snapshot, roundTrip),
            events: events.filter((event) => event.version > after).map(roundTrip)
          }
        }).pipe(Effect.withSpan("EventStore.load", { attributes: { streamId } })),

      append: (streamId, expectedVersion, events, options) =>
        Effect.gen(function*() {
          yield* validateStreamId(streamId)
          yield* checkAppend(streamId, expectedVersion, events, options?.snapshot)
          if (events.length > 0) yield* indexPending(streamId)
          const result = yield* Ref.modify(streams, (map): readonly [
            Effect.Effect<AppendResult, ConcurrencyConflict>,
            Map<string, StoredStream>
          ] => {
            const stream = map.get(streamId)
            const storedEvents = stream?.events ?? []
            const actualVersion = storedEvents.length
            if (isAlreadyStored(storedEvents, expectedVersion, events)) {
              // A retry of an append that was stored: succeed without writing again, as the Azure
              // adapter does, so retries are idempotent with every store.
              const stored = storedEvents.slice(expectedVersion, expectedVersion + events.length)
              return [
                Effect.succeed({ streamId, version: expectedVersion + events.length, events: stored.map(roundTrip) }),
                map
              ] as const
            }
            if (actualVersion !== expectedVersion) {
              return [
                Effect.fail(new ConcurrencyConflict({ streamId, expectedVersion, actualVersion })),
                map
              ] as const
            }
            const recorded = events.map((event, index): RecordedEvent =>
              roundTrip({ ...event, streamId, version: expectedVersion + index + 1 })
            )
            if (recorded.length === 0) {
              return [Effect.succeed({ streamId, version: actualVersion, events: recorded }), map] as const
            }
            const next = new Map(map)
            next.set(streamId, {
              events: [...(stream?.events ?? []), ...recorded],
              snapshot: options?.snapshot === undefined
                ? stream?.snapshot ?? Option.none()
                : Option.some(roundTrip(options.snapshot))
            })
            return [
              Effect.succeed({ streamId, version: expectedVersion + recorded.length, events: recorded }),
              next
            ] as const
          }).pipe(Effect.flatten)
          if (result.events.length > 0) yield* notify({ streamId, version: result.version })
          return result
        }).pipe(
          (append) => measureAppend(append, events.length),
          Effect.withSpan("EventStore.append", { attributes: { streamId, expectedVersion } })
        )
    }

    const outboxStore: OutboxStoreService = {
      bucketSize,
      appendWindow: Duration.zero,
      commits: Effect.acquireRelease(
        Effect.tap(Queue.unbounded<Committed>(), (queue) => Effect.sync(() => subscribers.add(queue))),
        (queue) => Effect.zipRight(Effect.sync(() => subscribers.delete(queue)), Queue.shutdown(queue))
      ) as Effect.Effect<Queue.Dequeue<Committed>, never, Scope.Scope>,
      progress: (streamId, options) =>
        Effect.gen(function*() {
          yield* validateStreamId(streamId)
          const stream = yield* readStream(streamId)
          const events = stream?.events ?? []
          const position = positions.get(streamId)
          const from = options?.fromVersion
          return {
            streamId,
            version: events.length,
            dispatched: position?.dispatched ?? 0,
            token: position?.token,
            events: from === undefined ? [] : events.filter((event) => event.version >= from).map(roundTrip)
          }
        }),
      recordDispatched: (streamId, token, version) =>
        Effect.sync(() => {
          const position = positions.get(streamId)
          if (position?.token !== token) return undefined
          const next = `${++tokens}`
          positions.set(streamId, { dispatched: version, token: next })
          return next
        }),
      pending: ({ endedBefore, fromBucket }) =>
        Effect.sync(() => {
          const from = fromBucket ?? sweepMark ?? 0
          const entries: Array<PendingEntry> = []
          for (const bucket of [...pendingIndex.keys()].sort((a, b) => a - b)) {
            if (bucket < from || bucket + bucketMillis > endedBefore) continue
            for (const streamId of pendingIndex.get(bucket) ?? []) entries.push({ bucket, streamId })
          }
          return entries
        }),
      clearPending: (entries) =>
        Effect.sync(() => {
          for (const { bucket, streamId } of entries) {
            const set = pendingIndex.get(bucket)
            set?.delete(streamId)
            if (set?.size === 0) pendingIndex.delete(bucket)
          }
        }),
      sweepMark: Effect.sync(() => sweepMark),
      setSweepMark: (bucket) =>
        Effect.sync(() => {
          if (sweepMark === undefined || bucket > sweepMark) sweepMark = bucket
        })
    }
    return { eventStore: service, outboxStore }
  })

export const makeStores: Effect.Effect<Stores> = makeStoresWith()

export const make: Effect.Effect<EventStoreService> = Effect.map(makeStores, (stores) => stores.eventStore)

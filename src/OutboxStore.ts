/**
 * The store side of the outbox: what the outbox pump needs from an event store besides `read`
 * and `append`, kept out of the `EventStore` port so that aggregates see a small interface. Both
 * event stores (`EventStore.layerMemory`, `AzureTableEventStore.layer`) provide it next to
 * `EventStore`, over the same streams.
 *
 * Guarantees every implementation gives (checked by the outbox conformance suite):
 *
 * - **Commit notifications.** Every append committed by this store instance (in this process)
 *   is offered to every subscriber of {@link OutboxStoreService.commits} once it is committed.
 *   Notifications are a latency optimisation: nothing is lost when one is missed, because of the
 *   pending index.
 * - **The dispatched position.** Each stream has a dispatched position (0 until first recorded),
 *   changed only by {@link OutboxStoreService.recordDispatched}, a conditional write on a token
 *   returned by {@link OutboxStoreService.progress}: of concurrent writers with the same token,
 *   exactly one wins.
 * - **The pending index.** Before an append writes anything, its stream is recorded in the time
 *   bucket in which the append started (once per stream and bucket and store instance). An append
 *   takes at most {@link OutboxStoreService.appendWindow} from its start to its last possible
 *   write, so once a bucket has ended more than that long ago, every append started in it has
 *   committed or failed, and every stream with undispatched events is listed in some bucket until
 *   its entry is cleared.
 *
 * @since 0.1.0
 */
import type { Duration, Effect, Queue, Scope } from "effect"
import { Context } from "effect"
import type { ReadError, RecordedEvent } from "./EventStore.js"
import type { EventStoreFailure, EventStoreUnavailable } from "./EventStoreError.js"

/**
 * An append committed by this store instance.
 *
 * @since 0.1.0
 * @category models
 */
export interface Committed {
  readonly streamId: string
  /** The stream's version after the append. */
  readonly version: number
}

/**
 * How far a stream has been dispatched, and the events after some version.
 *
 * @since 0.1.0
 * @category models
 */
export interface Progress {
  readonly streamId: string
  /** The stream's version (0 for a stream that does not exist). */
  readonly version: number
  /** The last version dispatched (0 when none was recorded). */
  readonly dispatched: number
  /** The concurrency token of the recorded position (an ETag); `undefined` when none was recorded. */
  readonly token: string | undefined
  /** The events from the `fromVersion` asked for to the end of the stream; empty without one. */
  readonly events: ReadonlyArray<RecordedEvent>
}

/**
 * An entry of the pending index: the stream was appended to in the bucket starting at `bucket`.
 *
 * @since 0.1.0
 * @category models
 */
export interface PendingEntry {
  /** The bucket's start, in milliseconds since the epoch. */
  readonly bucket: number
  readonly streamId: string
}

/**
 * The pending entries of the buckets that started at or after `fromBucket` and ended at or
 * before `endedBefore`, with the sweep's low-water mark.
 *
 * @since 0.1.0
 * @category models
 */
export interface PendingOptions {
  /** The first bucket start to read; the recorded low-water mark when absent. */
  readonly fromBucket?: number
  /** Only buckets that ended at or before this instant (milliseconds since the epoch). */
  readonly endedBefore: number
}

/**
 * Failures of the outbox store's writes.
 *
 * @since 0.1.0
 * @category models
 */
export type WriteError = EventStoreUnavailable | EventStoreFailure

/**
 * The outbox store service.
 *
 * @since 0.1.0
 * @category models
 */
export interface OutboxStoreService {
  /** The length of one pending bucket. */
  readonly bucketSize: Duration.Duration
  /** The longest time an append may take from its start to its last write (retries included). */
  readonly appendWindow: Duration.Duration
  /** Subscribes to the appends this instance commits, for as long as the scope is open. */
  readonly commits: Effect.Effect<Queue.Dequeue<Committed>, never, Scope.Scope>
  /**
   * The stream's version and dispatched position, and when `fromVersion` is given the events from
   * it to the end of the stream, in one read where the store allows it.
   */
  readonly progress: (
    streamId: string,
    options?: { readonly fromVersion?: number }
  ) => Effect.Effect<Progress, ReadError>
  /**
   * Records the dispatched position if it is still at `token` (`undefined`: none recorded yet).
   * Returns the new token, or `undefined` when another writer changed it first.
   */
  readonly recordDispatched: (
    streamId: string,
    token: string | undefined,
    version: number
  ) => Effect.Effect<string | undefined, WriteError>
  /** The entries of the pending index in ended buckets, oldest bucket first. */
  readonly pending: (options: PendingOptions) => Effect.Effect<ReadonlyArray<PendingEntry>, ReadError>
  /** Removes entries of the pending index (their streams were found fully dispatched). */
  readonly clearPending: (entries: ReadonlyArray<PendingEntry>) => Effect.Effect<void, WriteError>
  /** The sweep's low-water mark: no bucket before it has entries. */
  readonly sweepMark: Effect.Effect<number | undefined, ReadError>
  /** Moves the low-water mark (forward only). */
  readonly setSweepMark: (bucket: number) => Effect.Effect<void, WriteError>
}

/**
 * The outbox store port.
 *
 * @since 0.1.0
 * @category services
 */
export class OutboxStore extends Context.Tag("effect-eventually/OutboxStore")<OutboxStore, OutboxStoreService>() {}

/**
 * The length of a pending bucket unless a store is configured otherwise: 1 minute.
 *
 * @since 0.1.0
 * @category models
 */
export const defaultBucketSize: Duration.DurationInput = "1 minute"

/**
 * The start of the bucket holding `millis`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const bucketOf = (millis: number, bucketSizeMillis: number): number =>
  Math.floor(millis / bucketSizeMillis) * bucketSizeMillis

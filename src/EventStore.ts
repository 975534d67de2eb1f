/**
 * The event store port. It stores and reads encoded events (JSON payloads with their type and
 * schema version); `EventCodec` turns domain events into these and back.
 *
 * Guarantees every implementation gives (checked by the conformance suite):
 *
 * - An append is atomic: all its events and its optional snapshot are stored, or none.
 * - Optimistic concurrency: an append succeeds only when the stream is at `expectedVersion`
 *   (0 for a stream that does not exist yet); of concurrent appends with the same expected
 *   version exactly one wins, the others fail with `ConcurrencyConflict`.
 * - Versions are contiguous, starting at 1; `read` returns events in version order.
 * - Limits are checked before writing: `InvalidStreamId`, `AppendTooLarge`, `EventTooLarge`.
 * - Repeating an append that was stored (same expected version, same event ids in the same order)
 *   succeeds without writing again, so retrying an append whose outcome was unknown is safe.
 *
 * @since 0.1.0
 */
import type { Metric, Option } from "effect"
import { Context, Effect, Layer } from "effect"
import type {
  AppendTooLarge,
  ConcurrencyConflict,
  DecodeError,
  EventStoreFailure,
  EventStoreUnavailable,
  EventTooLarge,
  InvalidStreamId
} from "./EventStoreError.js"
import * as internalMetrics from "./internal/eventStoreMetrics.js"
import * as internalMemory from "./internal/memoryEventStore.js"
import { OutboxStore } from "./OutboxStore.js"

/**
 * Metadata stored with every event.
 *
 * @since 0.1.0
 * @category models
 */
export interface EventMetadata {
  /** Shared by every message and event caused by one original request. */
  readonly correlationId?: string
  /** The id of the command, message or event that caused this event. */
  readonly causationId?: string
  /** When the event was recorded, ISO 8601 (taken from the `Clock` by `Aggregate`). */
  readonly timestamp: string
  /** Free-form string properties (tenant, user, trace context, ...). */
  readonly properties?: Readonly<Record<string, string>>
}

/**
 * An encoded event about to be appended.
 *
 * @since 0.1.0
 * @category models
 */
export interface EventData {
  /** Unique, deterministic where possible: the outbox derives message ids from it. */
  readonly eventId: string
  /** The event type, by default the `_tag` of the event class. */
  readonly type: string
  /** The version of the event's schema, for upcasting; 1 unless stated otherwise. */
  readonly schemaVersion: number
  /** The encoded payload, a JSON value. */
  readonly data: unknown
  readonly metadata: EventMetadata
}

/**
 * An event as stored, with its position in the stream.
 *
 * @since 0.1.0
 * @category models
 */
export interface RecordedEvent extends EventData {
  readonly streamId: string
  /** 1 for the first event of a stream. */
  readonly version: number
}

/**
 * A snapshot of a stream's folded state, stored with the append that produced it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Snapshot {
  /** The version of the last event folded into `state`. */
  readonly version: number
  /** The version of the state's schema: a snapshot with another one is ignored on load. */
  readonly schemaVersion: number
  /** The encoded state, a JSON value. */
  readonly state: unknown
}

/**
 * What a load returns: the stream's current version, its latest snapshot if any, and the events
 * recorded after that snapshot (all of them when there is none).
 *
 * @since 0.1.0
 * @category models
 */
export interface LoadedStream {
  readonly streamId: string
  /** 0 for a stream that does not exist. */
  readonly version: number
  readonly snapshot: Option.Option<Snapshot>
  readonly events: ReadonlyArray<RecordedEvent>
}

/**
 * The range of versions a read returns.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReadOptions {
  /** The first version to return (inclusive); 1 by default. */
  readonly fromVersion?: number
  /** The last version to return (inclusive); the end of the stream by default. */
  readonly toVersion?: number
}

/**
 * Options of a load.
 *
 * @since 0.1.0
 * @category models
 */
export interface LoadOptions {
  /** Use the stored snapshot when its schema version is this one; without it, no snapshot is read. */
  readonly snapshotSchemaVersion?: number
}

/**
 * Options of an append.
 *
 * @since 0.1.0
 * @category models
 */
export interface AppendOptions {
  /** Stored in the same atomic write; its `version` must be the stream's version after the append. */
  readonly snapshot?: Snapshot
}

/**
 * What an append returns: the new version and the events as stored.
 *
 * @since 0.1.0
 * @category models
 */
export interface AppendResult {
  readonly streamId: string
  /** The stream's version after the append (the version of its last event). */
  readonly version: number
  readonly events: ReadonlyArray<RecordedEvent>
}

/**
 * Failures of reads.
 *
 * @since 0.1.0
 * @category errors
 */
export type ReadError = InvalidStreamId | DecodeError | EventStoreUnavailable | EventStoreFailure

/**
 * Failures of appends.
 *
 * @since 0.1.0
 * @category errors
 */
export type AppendError =
  | ConcurrencyConflict
  | AppendTooLarge
  | EventTooLarge
  | InvalidStreamId
  | EventStoreUnavailable
  | EventStoreFailure

/**
 * The event store service.
 *
 * @since 0.1.0
 * @category models
 */
export interface EventStoreService {
  /** Reads a range of a stream's events in version order; an unknown stream reads as empty. */
  readonly read: (
    streamId: string,
    options?: ReadOptions
  ) => Effect.Effect<ReadonlyArray<RecordedEvent>, ReadError>
  /** Reads what is needed to rebuild the stream's state: the snapshot, if asked for, and newer events. */
  readonly load: (streamId: string, options?: LoadOptions) => Effect.Effect<LoadedStream, ReadError>
  /**
   * Appends events atomically if the stream is at `expectedVersion`. Appending no events writes
   * nothing and succeeds when the version matches.
   */
  readonly append: (
    streamId: string,
    expectedVersion: number,
    events: ReadonlyArray<EventData>,
    options?: AppendOptions
  ) => Effect.Effect<AppendResult, AppendError>
}

/**
 * The event store port.
 *
 * @since 0.1.0
 * @category services
 */
export class EventStore extends Context.Tag("effect-eventually/EventStore")<EventStore, EventStoreService>() {}

/**
 * The limits every implementation enforces, those of one Azure Table Storage entity group
 * transaction. The memory store enforces them too, so tests catch what Azure would refuse.
 *
 * @since 0.1.0
 * @category models
 */
export const limits = {
  /** Events per append: 100 operations per batch, one of them the stream head row. */
  maxEventsPerAppend: 99,
  /** Bytes per append, all entities of the batch together. */
  maxAppendBytes: 4 * 1024 * 1024,
  /** Bytes per entity (one event, or the head row with its snapshot). */
  maxEntityBytes: 1024 * 1024
} as const

/**
 * An event store kept in memory, with the same guarantees and limits as the Azure adapter.
 * Each call makes an empty store.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<EventStoreService> = internalMemory.make

/**
 * A layer with an empty in-memory event store, and the `OutboxStore` over the same streams (so
 * `Outbox.layer` can run on it).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<EventStore | OutboxStore> = Layer.effectContext(
  Effect.map(
    internalMemory.makeStores,
    (stores) => Context.make(EventStore, stores.eventStore).pipe(Context.add(OutboxStore, stores.outboxStore))
  )
)

/**
 * Counts committed appends, tagged with `store` (`memory` or `azure-table`). An append of no
 * events writes nothing and is not counted.
 *
 * @since 0.1.0
 * @category metrics
 */
export const appends: Metric.Metric.Counter<number> = internalMetrics.appends

/**
 * Counts the events committed by appends, tagged with `store`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const eventsAppended: Metric.Metric.Counter<number> = internalMetrics.eventsAppended

/**
 * Counts appends refused with `ConcurrencyConflict` (another writer got there first), tagged
 * with `store`. `Aggregate.handle` retries them; a rising rate means contended streams.
 *
 * @since 0.1.0
 * @category metrics
 */
export const conflicts: Metric.Metric.Counter<number> = internalMetrics.conflicts

/**
 * The projector runs projections against a `ProjectionStore`: {@link project} applies one
 * recorded event to its document (the usual handler of a message processor), and {@link rebuild}
 * replays whole streams from the `EventStore` into a fresh store.
 *
 * One event in, at most one conditional write out: the document is read, the event folded in,
 * and the document written back with the positions it has applied, expecting the revision it was
 * read at. A redelivered or duplicated event is recognised by those positions and changes
 * nothing; a concurrent writer makes the write fail with `DocumentConflict`, and the projector
 * reads again and retries under a `Schedule`.
 *
 * @since 0.1.0
 */
import type { Effect, Metric, Schedule, Stream } from "effect"
import type { EventCodec } from "./EventCodec.js"
import type { EventStore, ReadError, RecordedEvent } from "./EventStore.js"
import type { DecodeError } from "./EventStoreError.js"
import * as internal from "./internal/projector.js"
import type { GapPolicy, Projection } from "./Projection.js"
import type { DocumentConflict, DocumentDecodeError, ProjectionGap } from "./ProjectionError.js"
import type { GetError, ProjectionStore, ProjectionStoreService, PutError, Revision } from "./ProjectionStore.js"

/**
 * Options of {@link project}.
 *
 * @since 0.1.0
 * @category models
 */
export interface ProjectOptions {
  /** What to do with an event that arrives before an earlier one of its stream; `"fail"` by default (see `Projection.GapPolicy`). */
  readonly gaps?: GapPolicy
  /** How to retry after a `DocumentConflict`: read again, apply again, write again. {@link defaultConflictRetry} by default. */
  readonly retry?: Schedule.Schedule<unknown, DocumentConflict>
}

/**
 * What {@link project} did.
 *
 * @since 0.1.0
 * @category models
 */
export type ProjectResult<State> =
  | {
    /** The projection ignores this event (`documentId` returned `undefined`): nothing was read or written. */
    readonly _tag: "Ignored"
  }
  | {
    /** The event was applied and the document stored at `revision`. */
    readonly _tag: "Updated"
    readonly documentId: string
    readonly state: State
    readonly revision: Revision
  }
  | {
    /** The document had already applied the event (a duplicate or a redelivery): nothing was written. */
    readonly _tag: "Skipped"
    readonly documentId: string
    /** The document's position for the event's stream. */
    readonly lastApplied: number
  }

/**
 * Failures of applying events to a document: the store's, a stored state that no longer decodes,
 * a missing earlier event (under the `"fail"` gap policy), and a conflict that outlasted the
 * retry schedule.
 *
 * @since 0.1.0
 * @category errors
 */
export type ApplyError = GetError | PutError | DocumentDecodeError | ProjectionGap

/**
 * Failures of {@link project}: an event that cannot be decoded, and {@link ApplyError}.
 *
 * @since 0.1.0
 * @category errors
 */
export type ProjectError = DecodeError | ApplyError

/**
 * Retries after a conflict up to 10 times, with jittered exponential backoff from 10 ms capped at
 * 200 ms. A document written by many concurrent processors deserves a longer schedule, or finer
 * document ids.
 *
 * @since 0.1.0
 * @category constructors
 */
export const defaultConflictRetry: Schedule.Schedule<unknown, unknown> = internal.defaultConflictRetry

/**
 * Counts events applied to documents, tagged with `projection`.
 *
 * @since 0.1.0
 * @category models
 */
export const updates: Metric.Metric.Counter<number> = internal.updates

/**
 * Counts events skipped because their document had already applied them, tagged with `projection`.
 *
 * @since 0.1.0
 * @category models
 */
export const duplicates: Metric.Metric.Counter<number> = internal.duplicates

/**
 * Applies one recorded event to its document: decodes it, finds its document (`documentId`
 * receives the event and the recorded event as its envelope: stream, version, id, type,
 * metadata), skips it when the document's position for its stream is at or past its version,
 * otherwise folds it in (`evolve` receives the event's position) and writes the document back
 * with one conditional write. On `DocumentConflict` it reads again and retries under
 * `options.retry`. Counts {@link updates} and {@link duplicates}. When the application has
 * installed a tracer, runs in a `Projection.apply` span (attributes `projection`, `documentId`,
 * `streamId`, `version`, `outcome`); with Effect's native tracer, whose spans go nowhere, it
 * builds none.
 *
 * Document ids starting with `~` are reserved (the rebuild checkpoint): such an id fails with
 * `InvalidDocumentId`.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { EventCodec, EventStore, Projection, ProjectionStore, Projector } from "effect-eventually"
 *
 * class Deposited extends Schema.TaggedClass<Deposited>()("Deposited", { amount: Schema.Int }) {}
 * const codec = EventCodec.make(Deposited)
 *
 * const balances = Projection.make({
 *   name: "balances",
 *   initialState: 0,
 *   evolve: (balance: number, event: Deposited) => balance + event.amount,
 *   documentId: (_event: Deposited) => "account-1",
 *   state: Schema.Int
 * })
 *
 * const program = Effect.gen(function*() {
 *   const store = yield* EventStore.EventStore
 *   const data = codec.encode(new Deposited({ amount: 10 }), {
 *     eventId: "e-1",
 *     metadata: { timestamp: new Date(0).toISOString() }
 *   })
 *   const { events } = yield* store.append("account-1", 0, [data])
 *   yield* Projector.project(balances, codec, events[0]) // Updated, state 10
 *   yield* Projector.project(balances, codec, events[0]) // Skipped: already applied
 * }).pipe(Effect.provide([EventStore.layerMemory, ProjectionStore.layerMemory]))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const project: <Event extends { readonly _tag: string }, State>(
  projection: Projection<Event, State>,
  codec: EventCodec<Event>,
  recorded: RecordedEvent,
  options?: ProjectOptions
) => Effect.Effect<ProjectResult<State>, ProjectError, ProjectionStore> = internal.project

/**
 * How far a rebuild got.
 *
 * @since 0.1.0
 * @category models
 */
export interface RebuildProgress {
  readonly projection: string
  /** Streams fully applied, counting those an earlier run completed. */
  readonly streamsCompleted: number
  /** The number of streams, when known (a list, or the `total` option). */
  readonly streamsTotal: number | undefined
  /** Streams an earlier, interrupted run had completed and this one skipped. */
  readonly resumedFrom: number
  /** Events read from the event store by this run. */
  readonly eventsRead: number
  /** Events this run applied (events of ignored types and events already applied are not counted). */
  readonly eventsApplied: number
  /** Events read per second since this run started. */
  readonly eventsPerSecond: number
  /** `streamsCompleted` out of `streamsTotal`, 0 to 100, when the total is known. */
  readonly percentage: number | undefined
  /** The last stream completed. */
  readonly lastStream: string | null
  /** True once every stream is applied. */
  readonly done: boolean
}

/**
 * Options of {@link rebuild}.
 *
 * @since 0.1.0
 * @category models
 */
export interface RebuildOptions<E = never, R = never> {
  /**
   * The streams to replay, in a stable order: a resumed rebuild skips as many as its checkpoint
   * says were completed.
   */
  readonly streams: Stream.Stream<string, E, R> | ReadonlyArray<string>
  /** The store to build into, usually a new table (`AzureTableProjectionStore.make({ tableName })`). */
  readonly target: ProjectionStoreService
  /** The number of streams, when `streams` is a `Stream` and the caller knows it (for percentages). */
  readonly total?: number
  /** Called after each stream, and once at the end with `done: true`. */
  readonly onProgress?: (progress: RebuildProgress) => Effect.Effect<void>
  /** Store the checkpoint after every this many streams (and at the end); 10 by default. */
  readonly checkpointEvery?: number
  /** How to retry after a `DocumentConflict`; {@link defaultConflictRetry} by default. */
  readonly retry?: Schedule.Schedule<unknown, DocumentConflict>
}

/**
 * Failures of {@link rebuild}.
 *
 * @since 0.1.0
 * @category errors
 */
export type RebuildError = ReadError | ApplyError

/**
 * Replays streams from the `EventStore` into `options.target`, one stream after the other, each
 * read whole and applied in version order (each document of a stream read and written once).
 *
 * It is resumable: a checkpoint document (id `~rebuild` in the projection) records how many
 * streams of the list are complete, every `checkpointEvery` streams. A rerun after a crash or an
 * interruption skips those and replays the rest; the stream that was in progress is replayed
 * from its start, and the positions make every event already applied a no-op. A rerun of a
 * finished rebuild does nothing.
 *
 * Since streams are read whole and in order, a rebuild applies past gaps (as the `"apply"` gap
 * policy does): no event can arrive later.
 *
 * @since 0.1.0
 * @category constructors
 */
export const rebuild: <Event extends { readonly _tag: string }, State, E = never, R = never>(
  projection: Projection<Event, State>,
  codec: EventCodec<Event>,
  options: RebuildOptions<E, R>
) => Effect.Effect<RebuildProgress, RebuildError | E, EventStore | R> = internal.rebuild

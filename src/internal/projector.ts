import type { Fiber, MetricLabel, Tracer } from "effect"
import { Clock, Context, Effect, Either, FiberRef, identity, Metric, Option, Schedule, Stream } from "effect"
import type { EventCodec } from "../EventCodec.js"
import type { RecordedEvent } from "../EventStore.js"
import { EventStore } from "../EventStore.js"
import type { DecodeError } from "../EventStoreError.js"
import * as Projection from "../Projection.js"
import type { DocumentConflict } from "../ProjectionError.js"
import { DocumentDecodeError, InvalidDocumentId, ProjectionGap } from "../ProjectionError.js"
import type { ProjectionStoreService, Revision } from "../ProjectionStore.js"
import { ProjectionStore } from "../ProjectionStore.js"
import type * as Api from "../Projector.js"
import * as Layout from "./projectionLayout.js"
import { isTracing } from "./tracing.js"

type Tagged = { readonly _tag: string }

export const defaultConflictRetry: Schedule.Schedule<unknown, unknown> = Schedule.exponential("10 millis").pipe(
  // `union` keeps the shorter delay: the backoff grows to 200 ms and stays there.
  Schedule.union(Schedule.spaced("200 millis")),
  // Writers that collided once would collide again at the same instants without jitter.
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(10))
)

export const updates = Metric.counter("effect_eventually_projection_updates", {
  description: "Events applied to projection documents",
  incremental: true
})

export const duplicates = Metric.counter("effect_eventually_projection_duplicates", {
  description: "Events skipped because their document had already applied them",
  incremental: true
})

// Tagged counters, made once per projection: tagging allocates a new metric key every time.
const taggedCounters = new Map<
  string,
  { readonly updates: Metric.Metric.Counter<number>; readonly duplicates: Metric.Metric.Counter<number> }
>()

const countersOf = (projection: string) => {
  let counters = taggedCounters.get(projection)
  if (counters === undefined) {
    counters = {
      updates: Metric.tagged(updates, "projection", projection),
      duplicates: Metric.tagged(duplicates, "projection", projection)
    }
    taggedCounters.set(projection, counters)
  }
  return counters
}

/** Document ids starting with this are the projector's own (the rebuild checkpoint). */
export const reservedPrefix = "~"

export const checkpointId = "~rebuild"

interface Item<Event> {
  readonly event: Event
  // The event's envelope when the projector has one (a recorded event): `evolve` receives it.
  readonly position: Projection.Position
}

interface Outcome<State> {
  readonly state: State
  readonly applied: number
  readonly skipped: number
  readonly lastApplied: number
  readonly revision: Revision | undefined
}

const isConflict = (error: { readonly _tag: string }): error is DocumentConflict => error._tag === "DocumentConflict"

/** How many documents the projector remembers per store. */
export const documentCacheCapacity = 1_000

interface Cached {
  // The projection whose `decodeState` made `state`: another one of the same name reads again.
  readonly projection: Projection.Projection<never, unknown>
  readonly document: Projection.Document<unknown>
  readonly revision: Revision
}

// The documents a store last returned or stored through the projector, least recently used
// first. It only saves the point read before a write: the write's `If-Match` on the cached
// revision, not the cache, is what makes updates correct. A stale entry makes the write fail
// with a conflict, and the retry reads the document again.
class DocumentCache {
  private readonly documents = new Map<string, Cached>()
  constructor(private readonly capacity: number) {}
  // No reordering here: every path after a lookup ends in `remember` or `forget` of the key.
  get<State>(key: string, projection: Projection.Projection<never, State>): Cached | undefined {
    const cached = this.documents.get(key)
    if (cached === undefined) return undefined
    if (cached.projection !== projection) {
      this.documents.delete(key)
      return undefined
    }
    return cached
  }
  remember(key: string, cached: Cached): void {
    this.documents.delete(key)
    this.documents.set(key, cached)
    if (this.documents.size > this.capacity) {
      const oldest = this.documents.keys().next()
      if (oldest.done !== true) this.documents.delete(oldest.value)
    }
  }
  forget(key: string): void {
    this.documents.delete(key)
  }
}

// One cache per store: revisions mean nothing to another store.
const caches = new WeakMap<ProjectionStoreService, DocumentCache>()

const cacheOf = (store: ProjectionStoreService): DocumentCache => {
  let cache = caches.get(store)
  if (cache === undefined) {
    cache = new DocumentCache(documentCacheCapacity)
    caches.set(store, cache)
  }
  return cache
}

interface Folded<State> {
  readonly document: Projection.Document<State>
  readonly applied: number
  readonly skipped: number
  readonly lastApplied: number
}

interface Gap<Event> {
  readonly gap: Item<Event>
  readonly lastApplied: number
}

// The items applied in order to a document, or the first gap.
const fold = <Event, State>(
  projection: Projection.Projection<Event, State>,
  start: Projection.Document<State>,
  items: ReadonlyArray<Item<Event>>,
  gaps: Projection.GapPolicy
): Folded<State> | Gap<Event> => {
  const options = { gaps }
  let document = start
  let applied = 0
  let skipped = 0
  let lastApplied = 0
  for (const item of items) {
    const result = Projection.apply(projection, document, item.event, item.position, options)
    if (result._tag === "Updated") {
      document = result.document
      applied++
    } else if (result._tag === "Unchanged") {
      skipped++
      lastApplied = result.lastApplied
    } else {
      return { gap: item, lastApplied: result.lastApplied }
    }
  }
  return { document, applied, skipped, lastApplied }
}

// Counts the outcome with the fiber's metric labels, as `Metric.incrementBy` would, without an
// effect per counter. Called when the outcome is known, as the effect runs.
const count = (projection: string, labels: ReadonlyArray<MetricLabel.MetricLabel>, outcome: Outcome<unknown>) => {
  const counters = countersOf(projection)
  if (outcome.applied > 0) counters.updates.unsafeUpdate(outcome.applied, labels)
  if (outcome.skipped > 0) counters.duplicates.unsafeUpdate(outcome.skipped, labels)
}

// Applies the items in order to the document and writes it back once, conditionally; on a
// conflict, all of it again under the schedule, from a fresh read. The document comes from the
// store's cache when the projector has read or written it before, so an update is one
// conditional write; from a read otherwise, and whenever the cached document would skip an item
// or stop at a gap (only a fresh read decides those). Items already applied are skipped by their
// positions, so a retry after an unknown outcome (the write landed, its answer did not) applies
// nothing twice.
//
// One object per update, its steps methods: effects are built as they are needed, so an update
// served from the cache pays for one write and nothing else, and no closure is made per step.
class DocumentUpdate<Event, State, A> {
  private readonly name: string
  private readonly key: string
  private readonly cache: DocumentCache
  private readonly owner: Projection.Projection<never, unknown>
  // Started on a first conflict only, so an update that succeeds pays for nothing more.
  private driver: Schedule.ScheduleDriver<unknown, DocumentConflict, never> | undefined

  constructor(
    private readonly store: ProjectionStoreService,
    private readonly projection: Projection.Projection<Event, State>,
    private readonly documentId: string,
    private readonly items: ReadonlyArray<Item<Event>>,
    private readonly gaps: Projection.GapPolicy,
    private readonly retry: Schedule.Schedule<unknown, DocumentConflict>,
    private readonly labels: ReadonlyArray<MetricLabel.MetricLabel>,
    // What the caller makes of the outcome, applied where it is known (no effect of its own).
    private readonly finish: (outcome: Outcome<State>) => A
  ) {
    this.name = projection.name
    this.key = `${projection.name}${Layout.separator}${documentId}`
    this.cache = cacheOf(store)
    this.owner = projection as unknown as Projection.Projection<never, unknown>
  }

  // Looks the cache up when it is called: the first attempt at once, a retry when it runs.
  attempt(): Effect.Effect<A, Api.ApplyError> {
    const cached = this.cache.get(this.key, this.owner)
    if (cached === undefined) return this.fromStore()
    const folded = fold(this.projection, cached.document as Projection.Document<State>, this.items, this.gaps)
    if ("gap" in folded || folded.applied < this.items.length) return this.fromStore()
    return this.write(folded, cached.revision, true)
  }

  private done(outcome: Outcome<State>): Effect.Effect<A> {
    count(this.name, this.labels, outcome)
    return Effect.succeed(this.finish(outcome))
  }

  // Conflicts retried with the semantics of `Effect.retry`: the schedule decides whether, and
  // when, to read and apply again.
  private retryAfter(conflict: DocumentConflict): Effect.Effect<A, Api.ApplyError> {
    if (this.driver !== undefined) return this.next(this.driver, conflict)
    return Effect.flatMap(Schedule.driver(this.retry), (driver) => {
      this.driver = driver
      return this.next(driver, conflict)
    })
  }

  private next(
    driver: Schedule.ScheduleDriver<unknown, DocumentConflict, never>,
    conflict: DocumentConflict
  ): Effect.Effect<A, Api.ApplyError> {
    return Effect.flatMap(
      Effect.either(driver.next(conflict)),
      (next) => Either.isLeft(next) ? Effect.fail(conflict) : this.attempt()
    )
  }

  // `fromCache`: the revision came from the cache, so a conflict reads at once, as an update
  // without the cache would have, before counting on the schedule.
  private write(
    folded: Folded<State>,
    revision: Revision | undefined,
    fromCache: boolean
  ): Effect.Effect<A, Api.ApplyError> {
    const { applied, document, lastApplied, skipped } = folded
    if (applied === 0) return this.done({ state: document.state, applied, skipped, lastApplied, revision })
    const put = this.store.put(
      this.name,
      this.documentId,
      { state: this.projection.encodeState(document.state), positions: document.positions },
      revision ?? "new"
    )
    return Effect.flatMap(Effect.either(put), (written) => {
      if (Either.isLeft(written)) {
        // A conflict means the cached revision is stale; any other failure may hide a write
        // that landed. Either way, the next attempt reads.
        this.cache.forget(this.key)
        const error = written.left
        if (!isConflict(error)) return Effect.fail(error)
        return fromCache ? this.fromStore() : this.retryAfter(error)
      }
      this.cache.remember(this.key, { projection: this.owner, document, revision: written.right })
      return this.done({ state: document.state, applied, skipped, lastApplied, revision: written.right })
    })
  }

  private decide(start: Projection.Document<State>, revision: Revision | undefined): Effect.Effect<A, Api.ApplyError> {
    const folded = fold(this.projection, start, this.items, this.gaps)
    if ("gap" in folded) {
      return Effect.fail(
        new ProjectionGap({
          projection: this.name,
          documentId: this.documentId,
          streamId: folded.gap.position.streamId,
          version: folded.gap.position.version,
          lastApplied: folded.lastApplied
        })
      )
    }
    return this.write(folded, revision, false)
  }

  private fromStore(): Effect.Effect<A, Api.ApplyError> {
    return Effect.flatMap(this.store.get(this.name, this.documentId), (stored) => {
      if (Option.isNone(stored)) {
        this.cache.forget(this.key)
        return this.decide(Projection.empty(this.projection), undefined)
      }
      const state = this.projection.decodeState(stored.value.state)
      if (Either.isLeft(state)) {
        this.cache.forget(this.key)
        return Effect.fail(
          new DocumentDecodeError({ projection: this.name, documentId: this.documentId, reason: state.left })
        )
      }
      const document: Projection.Document<State> = { state: state.right, positions: stored.value.positions }
      this.cache.remember(this.key, { projection: this.owner, document, revision: stored.value.revision })
      return this.decide(document, stored.value.revision)
    })
  }
}

const reserved = (projection: string, documentId: string): Effect.Effect<never, InvalidDocumentId> =>
  Effect.fail(
    new InvalidDocumentId({
      projection,
      documentId,
      reason: `document ids starting with "${reservedPrefix}" are reserved for the projector`
    })
  )

const checkDocumentId = (projection: string, documentId: string): Effect.Effect<string, InvalidDocumentId> =>
  documentId.startsWith(reservedPrefix) ? reserved(projection, documentId) : Effect.succeed(documentId)

const ignored: Effect.Effect<Api.ProjectResult<never>> = Effect.succeed({ _tag: "Ignored" })

// The update of the event's document, in the span when there is one. A module-level function,
// not a closure per call.
const update = <Event, State>(
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  projection: Projection.Projection<Event, State>,
  documentId: string,
  event: Event,
  recorded: RecordedEvent,
  options: Api.ProjectOptions,
  span: Tracer.Span | undefined
): Effect.Effect<Api.ProjectResult<State>, Api.ApplyError> => {
  if (documentId.startsWith(reservedPrefix)) return reserved(projection.name, documentId)
  return new DocumentUpdate<Event, State, Api.ProjectResult<State>>(
    Context.unsafeGet(fiber.currentContext, ProjectionStore),
    projection,
    documentId,
    // The recorded event is its own position for `evolve`.
    [{ event, position: recorded }],
    options.gaps ?? Projection.defaultGapPolicy,
    options.retry ?? defaultConflictRetry,
    fiber.getFiberRef(FiberRef.currentMetricLabels),
    (outcome): Api.ProjectResult<State> => {
      const result: Api.ProjectResult<State> = outcome.applied === 0
        ? { _tag: "Skipped", documentId, lastApplied: outcome.lastApplied }
        : { _tag: "Updated", documentId, state: outcome.state, revision: outcome.revision as Revision }
      span?.attribute("outcome", result._tag)
      return result
    }
  ).attempt()
}

export const project = <Event extends Tagged, State>(
  projection: Projection.Projection<Event, State>,
  codec: EventCodec<Event>,
  recorded: RecordedEvent,
  options: Api.ProjectOptions = {}
): Effect.Effect<Api.ProjectResult<State>, Api.ProjectError, ProjectionStore> =>
  Effect.withFiberRuntime((fiber): Effect.Effect<Api.ProjectResult<State>, Api.ProjectError> => {
    const decoded = codec.decodeEither(recorded)
    if (Either.isLeft(decoded)) return Effect.fail<DecodeError>(decoded.left)
    const event = decoded.right
    // The recorded event is its own envelope.
    const documentId = projection.documentId(event, recorded)
    if (documentId === undefined) return ignored
    if (!isTracing(fiber)) return update(fiber, projection, documentId, event, recorded, options, undefined)
    return Effect.useSpan("Projection.apply", {
      captureStackTrace: false,
      attributes: { projection: projection.name, documentId, streamId: recorded.streamId, version: recorded.version }
    }, (span) => Effect.withParentSpan(update(fiber, projection, documentId, event, recorded, options, span), span))
  })

// Rebuild

interface Checkpoint {
  /** How many streams of the list, from its start, are fully applied. */
  readonly completed: number
  readonly lastCompleted: string | null
  readonly finished: boolean
}

const readCheckpoint = (
  store: ProjectionStoreService,
  projection: string
): Effect.Effect<{ readonly checkpoint: Checkpoint; readonly revision: Revision | "new" }, Api.RebuildError> =>
  Effect.flatMap(store.get(projection, checkpointId), (stored): Effect.Effect<
    { readonly checkpoint: Checkpoint; readonly revision: Revision | "new" },
    Api.RebuildError
  > => {
    if (Option.isNone(stored)) {
      return Effect.succeed({
        checkpoint: { completed: 0, lastCompleted: null, finished: false },
        revision: "new" as const
      })
    }
    const state = stored.value.state
    const valid = typeof state === "object" && state !== null && "completed" in state &&
      typeof state.completed === "number" && "lastCompleted" in state &&
      (typeof state.lastCompleted === "string" || state.lastCompleted === null) && "finished" in state &&
      typeof state.finished === "boolean"
    return valid
      ? Effect.succeed({ checkpoint: state as Checkpoint, revision: stored.value.revision })
      : Effect.fail(
        new DocumentDecodeError({ projection, documentId: checkpointId, reason: "not a rebuild checkpoint" })
      )
  })

export const rebuild = <Event extends Tagged, State, E = never, R = never>(
  projection: Projection.Projection<Event, State>,
  codec: EventCodec<Event>,
  options: Api.RebuildOptions<E, R>
): Effect.Effect<Api.RebuildProgress, Api.RebuildError | E, EventStore | R> =>
  Effect.gen(function*() {
    const events = yield* EventStore
    const labels = yield* FiberRef.get(FiberRef.currentMetricLabels)
    const target = options.target
    const name = projection.name
    const retry = options.retry ?? defaultConflictRetry
    const checkpointEvery = Math.max(1, Math.floor(options.checkpointEvery ?? 10))
    const streams: Stream.Stream<string, E, R> = Array.isArray(options.streams)
      ? Stream.fromIterable(options.streams as ReadonlyArray<string>)
      : options.streams as Stream.Stream<string, E, R>
    const total = Array.isArray(options.streams) ? options.streams.length : options.total

    let { checkpoint, revision } = yield* readCheckpoint(target, name)
    const startedAt = yield* Clock.currentTimeMillis
    let eventsRead = 0
    let eventsApplied = 0
    let index = 0
    let completed = checkpoint.completed
    let lastStream: string | null = checkpoint.lastCompleted
    const resumedFrom = checkpoint.completed

    const progress = (done: boolean): Effect.Effect<Api.RebuildProgress> =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const seconds = (now - startedAt) / 1000
        return {
          projection: name,
          streamsCompleted: completed,
          streamsTotal: total,
          resumedFrom,
          eventsRead,
          eventsApplied,
          eventsPerSecond: seconds > 0 ? eventsRead / seconds : 0,
          percentage: total === undefined || total === 0
            ? (done ? 100 : undefined)
            : Math.min(100, (100 * completed) / total),
          lastStream,
          done
        }
      })
    const report = (done: boolean) =>
      options.onProgress === undefined ? Effect.void : Effect.flatMap(progress(done), options.onProgress)

    const saveCheckpoint = (finished: boolean) =>
      Effect.gen(function*() {
        const next: Checkpoint = { completed, lastCompleted: lastStream, finished }
        revision = yield* target.put(name, checkpointId, { state: next, positions: {} }, revision)
        checkpoint = next
      })

    if (checkpoint.finished) return yield* progress(true)

    // Streams before the checkpoint are skipped, if the list still starts the same way; otherwise
    // the rebuild starts over, and the positions make every event already applied a no-op.
    let skipping = checkpoint.completed
    if (skipping > 0 && Array.isArray(options.streams)) {
      const list = options.streams as ReadonlyArray<string>
      if (list[skipping - 1] !== checkpoint.lastCompleted) {
        yield* Effect.logWarning("The rebuild checkpoint does not match the list of streams; starting over").pipe(
          Effect.annotateLogs({ projection: name, lastCompleted: checkpoint.lastCompleted })
        )
        skipping = 0
        completed = 0
      }
    }

    const replay = (streamId: string) =>
      Effect.gen(function*() {
        const recorded = yield* events.read(streamId)
        // Grouped by document in first-seen order: each document is read and written once per
        // stream, with its events applied in version order.
        const groups = new Map<string, Array<Item<Event>>>()
        for (const record of recorded) {
          const decoded = codec.decodeEither(record)
          if (Either.isLeft(decoded)) return yield* Effect.fail(decoded.left)
          const documentId = projection.documentId(decoded.right, record)
          if (documentId === undefined) continue
          yield* checkDocumentId(name, documentId)
          let group = groups.get(documentId)
          if (group === undefined) {
            group = []
            groups.set(documentId, group)
          }
          group.push({ event: decoded.right, position: record })
        }
        for (const [documentId, items] of groups) {
          // A stream is read whole and in order, so nothing can arrive late: an event past a gap
          // (the stream's other events went to other documents) is applied.
          const outcome = yield* new DocumentUpdate(
            target,
            projection,
            documentId,
            items,
            "apply",
            retry,
            labels,
            identity
          ).attempt()
          eventsApplied += outcome.applied
        }
        eventsRead += recorded.length
      }).pipe(Effect.withSpan("Projector.rebuildStream", { attributes: { projection: name, streamId } }))

    yield* Stream.runForEach(streams, (streamId) =>
      Effect.gen(function*() {
        index++
        if (index <= skipping) return
        yield* replay(streamId)
        completed = index
        lastStream = streamId
        if (completed % checkpointEvery === 0) yield* saveCheckpoint(false)
        yield* report(false)
      }))
    yield* saveCheckpoint(true)
    const final = yield* progress(true)
    if (options.onProgress !== undefined) yield* options.onProgress(final)
    return final
  }).pipe(Effect.withSpan("Projector.rebuild", { attributes: { projection: projection.name } }))

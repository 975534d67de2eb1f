import type { TableClient, TableEntityResult, TransactionAction } from "@azure/data-tables"
import { odata } from "@azure/data-tables"
import type { Config, Schedule, Scope } from "effect"
import { Duration, Effect, Either, Option, Queue } from "effect"
import type * as Api from "../AzureTableEventStore.js"
import type {
  AppendError,
  AppendResult,
  EventData,
  EventStoreService,
  LoadedStream,
  ReadOptions,
  RecordedEvent
} from "../EventStore.js"
import type { DecodeError } from "../EventStoreError.js"
import { ConcurrencyConflict, EventStoreFailure, EventStoreUnavailable } from "../EventStoreError.js"
import type { Committed, OutboxStoreService, PendingEntry, Progress } from "../OutboxStore.js"
import { bucketOf, defaultBucketSize } from "../OutboxStore.js"
import type { EncodedAppend } from "./eventLimits.js"
import { encodeAppend } from "./eventLimits.js"
import * as EventStoreMetrics from "./eventStoreMetrics.js"
import type { Rejection } from "./tableClient.js"
import * as Table from "./tableClient.js"
import { codeOf, isEntityMissing } from "./tableClient.js"
import * as Layout from "./tableLayout.js"

const measureAppend = EventStoreMetrics.measure("azure-table")

// Options and configuration

export const defaultTableName = "events"
export const defaultTimeout: Duration.Duration = Duration.seconds(30)
export const defaultHeadCacheCapacity = 10_000
export const defaultMaxAppendDuration: Duration.Duration = Duration.minutes(1)

// The policy shared with the projection store; the schedule never looks at its input.
export const defaultRetrySchedule: Schedule.Schedule<unknown, EventStoreUnavailable> = Table
  .defaultRetrySchedule as Schedule.Schedule<unknown, unknown>

export const config: Config.Config<Api.Options> = Table.accountConfig({
  variable: "EVENT_STORE_TABLE",
  defaultName: defaultTableName,
  description: "Name of the table holding the events.",
  store: "event store"
})

const timeoutOf = (options: Api.StoreOptions): Duration.Duration => Duration.decode(options.timeout ?? defaultTimeout)

export const makeClient = (options: Api.Options): Effect.Effect<TableClient, EventStoreFailure> =>
  Table.makeClient({ ...options, tableName: options.tableName ?? defaultTableName }, timeoutOf(options)).pipe(
    Effect.mapError((reason) => new EventStoreFailure({ operation: "configure", reason }))
  )

const toFailure = (operation: string, streamId: string | undefined, rejection: Rejection) =>
  new EventStoreFailure({ operation, streamId, code: codeOf(rejection), reason: rejection.message })

// What an append's batch answers when the head is not where the ETag or the insert expected it.
const isConcurrencyRejection = (rejection: Rejection): boolean =>
  rejection.status === 412 ||
  (rejection.status === 409 && (rejection.code === undefined || rejection.code === "EntityAlreadyExists")) ||
  isEntityMissing(rejection)

// A small LRU of stream heads. It only saves the point read before an append: the `If-Match` on
// the head row, not the cache, is what makes appends correct.
class HeadCache {
  private readonly heads = new Map<string, Layout.Head>()
  constructor(private readonly capacity: number) {}
  get(streamId: string): Layout.Head | undefined {
    const head = this.heads.get(streamId)
    if (head !== undefined) {
      this.heads.delete(streamId)
      this.heads.set(streamId, head)
    }
    return head
  }
  // A slow read may finish after a newer append: never go back to an older head.
  remember(streamId: string, head: Layout.Head): void {
    if (this.capacity <= 0) return
    const known = this.heads.get(streamId)
    if (known !== undefined && known.version > head.version) return
    this.heads.delete(streamId)
    this.heads.set(streamId, head)
    if (this.heads.size > this.capacity) {
      const oldest = this.heads.keys().next()
      if (oldest.done !== true) this.heads.delete(oldest.value)
    }
  }
  forget(streamId: string): void {
    this.heads.delete(streamId)
  }
}

// The events just written, as recorded. Their data and metadata are the caller's values, which
// are JSON values by contract, so a later read returns equal ones; parsing back the JSON just
// written would cost more than the rest of the adapter's work on an append.
const recordedOf = (
  streamId: string,
  expectedVersion: number,
  events: ReadonlyArray<EventData>
): Array<RecordedEvent> =>
  events.map((event, index) => ({
    streamId,
    version: expectedVersion + index + 1,
    eventId: event.eventId,
    type: event.type,
    schemaVersion: event.schemaVersion,
    data: event.data,
    metadata: event.metadata
  }))

const rangeOf = (options: ReadOptions | undefined): Option.Option<{ readonly from: number; readonly to: number }> => {
  const from = Math.max(1, Math.ceil(options?.fromVersion ?? 1))
  const to = Math.min(Layout.maxVersion, Math.floor(options?.toVersion ?? Layout.maxVersion))
  return Number.isNaN(from) || Number.isNaN(to) || to < from ? Option.none() : Option.some({ from, to })
}

// The streams this store has put in the pending index, with the bucket: an append in the same
// bucket skips the index write. Bounded like the head cache; forgetting only costs a write.
class IndexedCache {
  private readonly buckets = new Map<string, number>()
  constructor(private readonly capacity: number) {}
  has(streamId: string, bucket: number): boolean {
    return this.buckets.get(streamId) === bucket
  }
  remember(streamId: string, bucket: number): void {
    if (this.capacity <= 0) return
    this.buckets.delete(streamId)
    this.buckets.set(streamId, bucket)
    if (this.buckets.size > this.capacity) {
      const oldest = this.buckets.keys().next()
      if (oldest.done !== true) this.buckets.delete(oldest.value)
    }
  }
}

const deadlineCode = "AppendDeadlineExceeded"

const lastInstant = Date.UTC(9999, 11, 31, 23, 59, 59, 999)

export interface Stores {
  readonly eventStore: EventStoreService
  readonly outboxStore: OutboxStoreService
}

export const fromClient = (
  client: TableClient,
  options: Api.StoreOptions = {}
): Effect.Effect<EventStoreService, EventStoreFailure | EventStoreUnavailable> =>
  Effect.map(makeService(client, options, false), (stores) => stores.eventStore)

export const storesFromClient = (
  client: TableClient,
  options: Api.StoreOptions = {}
): Effect.Effect<Stores, EventStoreFailure | EventStoreUnavailable> => makeService(client, options, false)

const makeService = (
  client: TableClient,
  options: Api.StoreOptions,
  pipelineTimeout: boolean
): Effect.Effect<Stores, EventStoreFailure | EventStoreUnavailable> =>
  Effect.gen(function*() {
    const timeout = timeoutOf(options)
    const schedule = options.retry ?? defaultRetrySchedule
    const cache = new HeadCache(options.headCacheCapacity ?? defaultHeadCacheCapacity)
    const indexed = new IndexedCache(options.headCacheCapacity ?? defaultHeadCacheCapacity)
    const bucketSize = Duration.decode(options.pendingBucketSize ?? defaultBucketSize)
    const bucketMillis = Duration.toMillis(bucketSize)
    const maxAppendDuration = Duration.decode(options.maxAppendDuration ?? defaultMaxAppendDuration)
    const maxAppendMillis = Duration.toMillis(maxAppendDuration)
    const clock = yield* Effect.clock
    const subscribers = new Set<Queue.Queue<Committed>>()
    const notify = (committed: Committed): void => {
      for (const queue of subscribers) queue.unsafeOffer(committed)
    }

    // Every SDK call goes through `request`: a timeout per attempt, failures classified once,
    // transient ones retried under the schedule.
    const request: Request = Table.makeRequest<string | undefined, EventStoreUnavailable>({
      timeout,
      pipelineTimeout,
      schedule,
      unavailable: (operation, streamId, code, reason) =>
        new EventStoreUnavailable({ operation, streamId, code, reason }),
      retryMessage: "Transient event store failure"
    })

    const orFail = <A>(operation: string, streamId: string | undefined) =>
    (
      answer: Either.Either<A, Rejection>
    ): Effect.Effect<A, EventStoreFailure> =>
      Either.match(answer, {
        onLeft: (rejection) => Effect.fail(toFailure(operation, streamId, rejection)),
        onRight: Effect.succeed
      })

    const query = (
      operation: string,
      streamId: string,
      filter: string,
      select: ReadonlyArray<string>
    ): Effect.Effect<Array<Layout.StoredRow>, EventStoreUnavailable | EventStoreFailure> =>
      request(operation, streamId, async (signalOptions) => {
        const rows: Array<Layout.StoredRow> = []
        const entities = client.listEntities<Record<string, unknown>>({
          ...signalOptions,
          queryOptions: { filter, select: [...select] }
        })
        for await (const entity of entities) rows.push(entity)
        return rows
      }).pipe(Effect.flatMap(orFail(operation, streamId)))

    // The head row, or none for a stream that does not exist yet.
    const getHead = (
      operation: string,
      streamId: string,
      select: ReadonlyArray<string> | undefined
    ): Effect.Effect<Option.Option<Layout.StoredRow>, EventStoreUnavailable | EventStoreFailure> =>
      request(
        operation,
        streamId,
        (signalOptions): Promise<TableEntityResult<Record<string, unknown>>> =>
          client.getEntity<Record<string, unknown>>(streamId, Layout.headRowKey, {
            ...signalOptions,
            ...(select === undefined ? {} : { queryOptions: { select: [...select] } })
          })
      ).pipe(
        Effect.flatMap(Either.match({
          onLeft: (rejection) =>
            isEntityMissing(rejection)
              ? Effect.succeed(Option.none())
              : Effect.fail(toFailure(operation, streamId, rejection)),
          onRight: (row) => Effect.succeed(Option.some<Layout.StoredRow>(row))
        }))
      )

    const decodeHead = (streamId: string, row: Layout.StoredRow): Effect.Effect<Layout.Head, DecodeError> =>
      Layout.decodeHead(streamId, row).pipe(Effect.tap((head) => cache.remember(streamId, head)))

    // The head's version and ETag, for an append. An unreadable head is a failure there: nothing
    // can be appended safely on top of it.
    const readVersion = (
      streamId: string
    ): Effect.Effect<Option.Option<Layout.Head>, EventStoreUnavailable | EventStoreFailure> =>
      getHead("append", streamId, Layout.headVersionSelect).pipe(
        Effect.flatMap(Effect.transposeMapOption((row) =>
          decodeHead(streamId, row).pipe(
            Effect.mapError((error) =>
              new EventStoreFailure({ operation: "append", streamId, code: "DecodeError", reason: error.message })
            )
          )
        ))
      )

    // The events of query results, in key order (version order). A head row among them refreshes
    // the cache; other stream-level rows are skipped.
    const decodeRows = (
      streamId: string,
      rows: ReadonlyArray<Layout.StoredRow>
    ): Effect.Effect<Array<RecordedEvent>, DecodeError> =>
      Effect.gen(function*() {
        const events: Array<RecordedEvent> = []
        for (const row of rows) {
          const rowKey = row.rowKey ?? ""
          if (Layout.isEventRowKey(rowKey)) events.push(yield* Layout.decodeEvent(streamId, row))
          else if (rowKey === Layout.headRowKey) yield* decodeHead(streamId, row)
        }
        return events
      })

    const rangeFilter = (streamId: string, from: number, to: number): string =>
      to >= Layout.maxVersion
        ? odata`PartitionKey eq ${streamId} and RowKey ge ${Layout.eventRowKey(from)}`
        : odata`PartitionKey eq ${streamId} and RowKey ge ${Layout.eventRowKey(from)} and RowKey le ${
          Layout.eventRowKey(to)
        }`

    const conflict = (streamId: string, expectedVersion: number, actualVersion: number) =>
      new ConcurrencyConflict({ streamId, expectedVersion, actualVersion })

    // The append was refused, or the head is not at the expected version. Either another writer
    // got there first (a conflict), or an earlier attempt of this very append was committed
    // although its answer was lost (a timeout, a reset): then the rows at the versions this append
    // would take carry its event ids, and the append succeeds without writing twice.
    const resolveRefusal = (
      streamId: string,
      expectedVersion: number,
      events: ReadonlyArray<EventData>,
      knownHead: Option.Option<Layout.Head> | undefined
    ): Effect.Effect<AppendResult, ConcurrencyConflict | EventStoreUnavailable | EventStoreFailure> =>
      Effect.gen(function*() {
        cache.forget(streamId)
        const head = knownHead ?? (yield* readVersion(streamId))
        const actualVersion = Option.match(head, { onNone: () => 0, onSome: (head) => head.version })
        const last = expectedVersion + events.length
        if (
          events.length === 0 || !Number.isInteger(expectedVersion) || expectedVersion < 0 || actualVersion < last
        ) {
          return yield* Effect.fail(conflict(streamId, expectedVersion, actualVersion))
        }
        const stored = yield* query(
          "append",
          streamId,
          rangeFilter(streamId, expectedVersion + 1, last),
          Layout.eventIdSelect
        )
        const storedIds = stored.filter((row) => Layout.isEventRowKey(row.rowKey ?? "")).map((row) =>
          row[Layout.column.eventId]
        )
        const isOwn = storedIds.length === events.length &&
          events.every((event, index) => storedIds[index] === event.eventId)
        if (!isOwn) return yield* Effect.fail(conflict(streamId, expectedVersion, actualVersion))
        yield* Effect.annotateCurrentSpan("idempotentRetry", true)
        return { streamId, version: last, events: recordedOf(streamId, expectedVersion, events) }
      })

    // Nothing to write, but the caller still learns whether its version is current.
    const appendNothing = (streamId: string, expectedVersion: number) =>
      Effect.flatMap(readVersion(streamId), (head): Effect.Effect<AppendResult, AppendError> => {
        const actualVersion = Option.match(head, { onNone: () => 0, onSome: (head) => head.version })
        return actualVersion === expectedVersion
          ? Effect.succeed({ streamId, version: actualVersion, events: [] })
          : Effect.fail(conflict(streamId, expectedVersion, actualVersion))
      })

    const submit = (
      streamId: string,
      expectedVersion: number,
      events: ReadonlyArray<EventData>,
      encoded: EncodedAppend,
      etag: string | undefined,
      replace: boolean,
      deadline: number
    ): Effect.Effect<AppendResult, AppendError> => {
      // The head goes first: when it is the operation refused, the error names index 0. A new
      // snapshot replaces the head (dropping the chunks of an older, longer one); without one,
      // a merge updates the version and keeps the stored snapshot.
      const actions: Array<TransactionAction> = [
        etag === undefined
          ? ["create", encoded.head]
          : ["update", encoded.head, replace ? "Replace" : "Merge", { etag }]
      ]
      for (const row of encoded.events) actions.push(["create", row])
      // Until the service answers, the outcome is unknown: the cached head may be stale.
      cache.forget(streamId)
      return Effect.flatMap(
        // No attempt starts after the deadline: the outbox's sweep counts on every append having
        // made its last write within `appendWindow` of its start (see the pending index).
        request("append", streamId, (signalOptions) =>
          clock.unsafeCurrentTimeMillis() > deadline
            ? Promise.reject({ code: deadlineCode, message: "the append's deadline passed" })
            : client.submitTransaction(actions, signalOptions)),
        (answer): Effect.Effect<AppendResult, AppendError> => {
          if (Either.isLeft(answer)) {
            if (answer.left.code === deadlineCode) {
              return Effect.fail(
                new EventStoreUnavailable({
                  operation: "append",
                  streamId,
                  code: deadlineCode,
                  reason: `not committed within ${Duration.format(maxAppendDuration)} (maxAppendDuration)`
                })
              )
            }
            return isConcurrencyRejection(answer.left)
              ? Effect.tap(resolveRefusal(streamId, expectedVersion, events, undefined), notifyResult)
              : Effect.fail(toFailure("append", streamId, answer.left))
          }
          const version = expectedVersion + events.length
          const headEtag = answer.right.subResponses[0]?.etag
          if (headEtag !== undefined) cache.remember(streamId, { version, etag: headEtag })
          notify({ streamId, version })
          return Effect.succeed({
            streamId,
            version,
            events: recordedOf(streamId, expectedVersion, events)
          })
        }
      )
    }

    const notifyResult = (result: AppendResult): void => {
      if (result.events.length > 0) notify({ streamId: result.streamId, version: result.version })
    }

    // The pending index entry of this stream in this bucket, written before the append's batch so
    // that a crash right after the commit still leaves the stream findable by the sweep.
    const indexPending = (
      streamId: string,
      bucket: number
    ): Effect.Effect<void, EventStoreUnavailable | EventStoreFailure> =>
      request(
        "append",
        streamId,
        (signalOptions) =>
          client.upsertEntity(
            { partitionKey: Layout.pendingPartition(bucket), rowKey: streamId },
            "Replace",
            signalOptions
          )
      ).pipe(
        Effect.flatMap(Either.match({
          onLeft: (rejection) => Effect.fail(toFailure("append", streamId, rejection)),
          onRight: () => Effect.sync(() => indexed.remember(streamId, bucket))
        }))
      )

    const appendIndexed = (
      streamId: string,
      expectedVersion: number,
      events: ReadonlyArray<EventData>,
      encoded: EncodedAppend,
      replace: boolean,
      deadline: number
    ): Effect.Effect<AppendResult, AppendError> => {
      if (expectedVersion === 0) return submit(streamId, 0, events, encoded, undefined, replace, deadline)
      const cached = cache.get(streamId)
      if (cached !== undefined && cached.version === expectedVersion) {
        return submit(streamId, expectedVersion, events, encoded, cached.etag, replace, deadline)
      }
      // The head's ETag is not known at this version: read it first.
      return Effect.flatMap(readVersion(streamId), (head) =>
        Option.isSome(head) && head.value.version === expectedVersion
          ? submit(streamId, expectedVersion, events, encoded, head.value.etag, replace, deadline)
          : Effect.tap(resolveRefusal(streamId, expectedVersion, events, head), notifyResult))
    }

    // Written with plain control flow rather than a generator: this is the hot path, and an
    // append with a warm cache is one request and little else.
    const append: EventStoreService["append"] = (streamId, expectedVersion, events, options) =>
      Effect.suspend((): Effect.Effect<AppendResult, AppendError> => {
        const valid = Layout.validateStreamId(streamId)
        if (Either.isLeft(valid)) return Effect.fail(valid.left)
        const encoded = encodeAppend(streamId, expectedVersion, events, options?.snapshot)
        if (Either.isLeft(encoded)) return Effect.fail(encoded.left)
        if (events.length === 0) return appendNothing(streamId, expectedVersion)
        const replace = options?.snapshot !== undefined
        const startedAt = clock.unsafeCurrentTimeMillis()
        const deadline = startedAt + maxAppendMillis
        const bucket = bucketOf(startedAt, bucketMillis)
        if (indexed.has(streamId, bucket)) {
          return appendIndexed(streamId, expectedVersion, events, encoded.right, replace, deadline)
        }
        return Effect.zipRight(
          indexPending(streamId, bucket),
          appendIndexed(streamId, expectedVersion, events, encoded.right, replace, deadline)
        )
      }).pipe(
        (append) => measureAppend(append, events.length),
        Effect.withSpan("AzureTableEventStore.append", {
          // A stack trace per call costs more than the rest of the adapter's work, and would only
          // point here.
          captureStackTrace: false,
          attributes: {
            streamId,
            expectedVersion,
            eventCount: events.length,
            snapshot: options?.snapshot !== undefined
          }
        })
      )

    const read: EventStoreService["read"] = (streamId, options) =>
      Effect.gen(function*() {
        yield* Layout.validateStreamId(streamId)
        const range = rangeOf(options)
        if (Option.isNone(range)) {
          return []
        }
        const { from, to } = range.value
        // Open-ended, the range also meets the head row (it sorts last) and refreshes the cache.
        const rows = yield* query("read", streamId, rangeFilter(streamId, from, to), Layout.eventSelect)
        const events = yield* decodeRows(streamId, rows)
        return events
      }).pipe(
        Effect.withSpan("AzureTableEventStore.read", {
          captureStackTrace: false,
          attributes: { streamId, fromVersion: options?.fromVersion, toVersion: options?.toVersion }
        })
      )

    const load: EventStoreService["load"] = (streamId, options) =>
      Effect.gen(function*() {
        yield* Layout.validateStreamId(streamId)
        const snapshotSchemaVersion = options?.snapshotSchemaVersion
        if (snapshotSchemaVersion === undefined) {
          // One query over the whole partition: every event, then the head.
          const rows = yield* query("load", streamId, odata`PartitionKey eq ${streamId}`, Layout.eventSelect)
          const events = yield* decodeRows(streamId, rows)
          return {
            streamId,
            version: events.length === 0 ? 0 : events[events.length - 1].version,
            snapshot: Option.none(),
            events
          }
        }
        // One point read of the head (with its snapshot), then the events after the snapshot up
        // to the head's version, if there are any.
        const row = yield* getHead("load", streamId, undefined)
        if (Option.isNone(row)) {
          const empty: LoadedStream = { streamId, version: 0, snapshot: Option.none(), events: [] }
          return empty
        }
        const head = yield* decodeHead(streamId, row.value)
        const snapshot = yield* Layout.decodeSnapshot(streamId, row.value, snapshotSchemaVersion)
        const from = Option.isSome(snapshot) ? snapshot.value.version + 1 : 1
        if (from > head.version) {
          return { streamId, version: head.version, snapshot, events: [] }
        }
        const rows = yield* query("load", streamId, rangeFilter(streamId, from, head.version), Layout.eventSelect)
        const events = yield* decodeRows(streamId, rows)
        return { streamId, version: head.version, snapshot, events }
      }).pipe(
        Effect.withSpan("AzureTableEventStore.load", {
          captureStackTrace: false,
          attributes: { streamId, snapshotSchemaVersion: options?.snapshotSchemaVersion }
        })
      )

    if (options.createTable !== false) {
      yield* request("createTable", undefined, (signalOptions) => client.createTable(signalOptions)).pipe(
        Effect.flatMap(Either.match({
          onLeft: (rejection) =>
            // Created meanwhile by another process: fine.
            rejection.status === 409 ? Effect.void : Effect.fail(toFailure("createTable", undefined, rejection)),
          onRight: () => Effect.void
        })),
        Effect.withSpan("AzureTableEventStore.createTable", { attributes: { table: client.tableName } })
      )
    }

    const service: EventStoreService = { read, load, append }
    const outboxStore = makeOutboxStore({
      client,
      request,
      orFail,
      query,
      decodeHead,
      bucketSize,
      appendWindow: Duration.sum(maxAppendDuration, timeout),
      subscribers
    })
    return { eventStore: service, outboxStore }
  })

export const makeStores = (
  options: Api.Options
): Effect.Effect<Stores, EventStoreFailure | EventStoreUnavailable> =>
  Effect.flatMap(makeClient(options), (client) => makeService(client, options, true))

export const make = (
  options: Api.Options
): Effect.Effect<EventStoreService, EventStoreFailure | EventStoreUnavailable> =>
  Effect.map(makeStores(options), (stores) => stores.eventStore)

// The outbox side of the store, on the same client and request machinery.

type Request = Table.Request<string | undefined, EventStoreUnavailable>

interface OutboxParts {
  readonly client: TableClient
  readonly request: Request
  readonly orFail: <A>(
    operation: string,
    streamId: string | undefined
  ) => (answer: Either.Either<A, Rejection>) => Effect.Effect<A, EventStoreFailure>
  readonly query: (
    operation: string,
    streamId: string,
    filter: string,
    select: ReadonlyArray<string>
  ) => Effect.Effect<Array<Layout.StoredRow>, EventStoreUnavailable | EventStoreFailure>
  readonly decodeHead: (streamId: string, row: Layout.StoredRow) => Effect.Effect<Layout.Head, DecodeError>
  readonly bucketSize: Duration.Duration
  readonly appendWindow: Duration.Duration
  readonly subscribers: Set<Queue.Queue<Committed>>
}

const makeOutboxStore = (parts: OutboxParts): OutboxStoreService => {
  const { client, decodeHead, orFail, query, request, subscribers } = parts
  const bucketMillis = Duration.toMillis(parts.bucketSize)

  const progress: OutboxStoreService["progress"] = (streamId, options) =>
    Effect.gen(function*() {
      yield* Layout.validateStreamId(streamId)
      const from = options?.fromVersion
      // With a version: the events from it, then the head and the position (they sort last), in
      // one query. Without: the stream-level rows only.
      const filter = from === undefined
        ? odata`PartitionKey eq ${streamId} and RowKey ge ${Layout.reservedPrefix}`
        : odata`PartitionKey eq ${streamId} and RowKey ge ${
          Layout.eventRowKey(Math.min(Layout.maxVersion, Math.max(1, Math.ceil(from))))
        }`
      const rows = yield* query(
        "progress",
        streamId,
        filter,
        from === undefined ? ["RowKey", Layout.column.version, Layout.column.dispatched] : Layout.progressSelect
      )
      const events: Array<RecordedEvent> = []
      let version = 0
      let dispatched = 0
      let token: string | undefined
      for (const row of rows) {
        const rowKey = row.rowKey ?? ""
        if (Layout.isEventRowKey(rowKey)) events.push(yield* Layout.decodeEvent(streamId, row))
        else if (rowKey === Layout.headRowKey) version = (yield* decodeHead(streamId, row)).version
        else if (rowKey === Layout.outboxRowKey) {
          const value = row[Layout.column.dispatched]
          dispatched = typeof value === "number" ? value : 0
          token = row.etag
        }
      }
      const result: Progress = { streamId, version, dispatched, token, events }
      return result
    }).pipe(Effect.withSpan("AzureTableEventStore.progress", { captureStackTrace: false, attributes: { streamId } }))

  const recordDispatched: OutboxStoreService["recordDispatched"] = (streamId, token, version) => {
    const entity = { partitionKey: streamId, rowKey: Layout.outboxRowKey, [Layout.column.dispatched]: version }
    return request("recordDispatched", streamId, (signalOptions) =>
      token === undefined
        ? client.createEntity(entity, signalOptions)
        : client.updateEntity(entity, "Replace", { ...signalOptions, etag: token })).pipe(
        Effect.flatMap(Either.match({
          // Another writer moved the position (or created it) first.
          onLeft: (rejection) =>
            rejection.status === 409 || rejection.status === 412 || isEntityMissing(rejection)
              ? Effect.succeed(undefined)
              : Effect.fail(toFailure("recordDispatched", streamId, rejection)),
          onRight: (headers) => Effect.succeed(headers.etag)
        })),
        Effect.withSpan("AzureTableEventStore.recordDispatched", {
          captureStackTrace: false,
          attributes: { streamId, version }
        })
      )
  }

  const readMark = request(
    "sweepMark",
    undefined,
    (signalOptions) =>
      client.getEntity<Record<string, unknown>>(Layout.sweepPartition, Layout.sweepRowKey, signalOptions)
  ).pipe(
    Effect.flatMap(Either.match({
      onLeft: (rejection) =>
        isEntityMissing(rejection)
          ? Effect.succeed(undefined)
          : Effect.fail(toFailure("sweepMark", undefined, rejection)),
      onRight: (row) => {
        const bucket = row[Layout.column.bucket]
        const millis = typeof bucket === "string" ? Date.parse(bucket) : Number.NaN
        return Effect.succeed(Number.isNaN(millis) ? undefined : millis)
      }
    }))
  )

  const pending: OutboxStoreService["pending"] = ({ endedBefore, fromBucket }) =>
    Effect.gen(function*() {
      const from = fromBucket ?? (yield* readMark) ?? 0
      // Buckets that ended at or before `endedBefore` start before `upper`.
      // Clamped to the last instant ISO 8601 writes with four digits (partition keys must sort).
      const upper = Math.min(bucketOf(endedBefore - bucketMillis, bucketMillis) + bucketMillis, lastInstant)
      if (upper <= from) return []
      const rows = yield* request("pending", undefined, async (signalOptions) => {
        const rows: Array<PendingEntry> = []
        const entities = client.listEntities<Record<string, unknown>>({
          ...signalOptions,
          queryOptions: {
            filter: odata`PartitionKey ge ${Layout.pendingPartition(from)} and PartitionKey lt ${
              Layout.pendingPartition(upper)
            }`,
            select: ["PartitionKey", "RowKey"]
          }
        })
        for await (const entity of entities) {
          rows.push({ bucket: Layout.bucketOfPartition(entity.partitionKey ?? ""), streamId: entity.rowKey ?? "" })
        }
        return rows
      }).pipe(Effect.flatMap(orFail("pending", undefined)))
      return rows
    }).pipe(Effect.withSpan("AzureTableEventStore.pending", { captureStackTrace: false }))

  const deleteOne = (entry: PendingEntry) =>
    request(
      "clearPending",
      entry.streamId,
      (signalOptions) => client.deleteEntity(Layout.pendingPartition(entry.bucket), entry.streamId, signalOptions)
    ).pipe(
      Effect.flatMap(Either.match({
        onLeft: (rejection) =>
          isEntityMissing(rejection) ? Effect.void : Effect.fail(toFailure("clearPending", entry.streamId, rejection)),
        onRight: () => Effect.void
      }))
    )

  // One batch of deletes per bucket and 100 entries; when a batch is refused (another sweeper
  // deleted one of its rows first), the entries are deleted one by one.
  const clearPending: OutboxStoreService["clearPending"] = (entries) => {
    const groups = new Map<number, Array<PendingEntry>>()
    for (const entry of entries) {
      const group = groups.get(entry.bucket) ?? []
      group.push(entry)
      groups.set(entry.bucket, group)
    }
    const chunks: Array<Array<PendingEntry>> = []
    for (const group of groups.values()) {
      for (let index = 0; index < group.length; index += 100) chunks.push(group.slice(index, index + 100))
    }
    return Effect.forEach(
      chunks,
      (chunk) =>
        request("clearPending", undefined, (signalOptions) =>
          client.submitTransaction(
            chunk.map((entry): TransactionAction => [
              "delete",
              { partitionKey: Layout.pendingPartition(entry.bucket), rowKey: entry.streamId }
            ]),
            signalOptions
          )).pipe(
            Effect.flatMap(Either.match({
              onLeft: () => Effect.forEach(chunk, deleteOne, { discard: true }),
              onRight: () => Effect.void
            }))
          ),
      { discard: true }
    ).pipe(
      Effect.withSpan("AzureTableEventStore.clearPending", {
        captureStackTrace: false,
        attributes: { entries: entries.length }
      })
    )
  }

  const setSweepMark: OutboxStoreService["setSweepMark"] = (bucket) =>
    request("setSweepMark", undefined, (signalOptions) =>
      client.upsertEntity(
        {
          partitionKey: Layout.sweepPartition,
          rowKey: Layout.sweepRowKey,
          [Layout.column.bucket]: new Date(bucket).toISOString()
        },
        "Replace",
        signalOptions
      )).pipe(Effect.flatMap(orFail("setSweepMark", undefined)), Effect.asVoid)

  return {
    bucketSize: parts.bucketSize,
    appendWindow: parts.appendWindow,
    commits: Effect.acquireRelease(
      Effect.tap(Queue.unbounded<Committed>(), (queue) => Effect.sync(() => subscribers.add(queue))),
      (queue) => Effect.zipRight(Effect.sync(() => subscribers.delete(queue)), Queue.shutdown(queue))
    ) as Effect.Effect<Queue.Dequeue<Committed>, never, Scope.Scope>,
    progress,
    recordDispatched,
    pending,
    clearPending,
    sweepMark: readMark,
    setSweepMark
  }
}

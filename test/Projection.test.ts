import { assert, describe, it } from "@effect/vitest"
import {
  Array as Arr,
  Deferred,
  Effect,
  Either,
  Exit,
  FastCheck,
  Fiber,
  Metric,
  Option,
  Schedule,
  Schema,
  Stream,
  Tracer
} from "effect"
import * as EventCodec from "../src/EventCodec.js"
import type { RecordedEvent } from "../src/EventStore.js"
import * as EventStore from "../src/EventStore.js"
import * as Projection from "../src/Projection.js"
import { isTransient } from "../src/ProjectionError.js"
import * as ProjectionStore from "../src/ProjectionStore.js"
import * as Projector from "../src/Projector.js"

// A small ledger: deposits and withdrawals per account, notes the projection ignores. The state
// keeps the order of the amounts, so a fold in another order would show.

class Deposited extends Schema.TaggedClass<Deposited>()("Deposited", { account: Schema.String, amount: Schema.Int }) {}
class Withdrawn extends Schema.TaggedClass<Withdrawn>()("Withdrawn", { account: Schema.String, amount: Schema.Int }) {}
class Noted extends Schema.TaggedClass<Noted>()("Noted", { text: Schema.String }) {}

const Event = Schema.Union(Deposited, Withdrawn, Noted)
type Event = typeof Event.Type
const codec = EventCodec.make(Event)

const Ledger = Schema.Struct({ balance: Schema.Int, amounts: Schema.Array(Schema.Int) })
type Ledger = typeof Ledger.Type

const evolve = (state: Ledger, event: Event): Ledger => {
  switch (event._tag) {
    case "Deposited":
      return { balance: state.balance + event.amount, amounts: [...state.amounts, event.amount] }
    case "Withdrawn":
      return { balance: state.balance - event.amount, amounts: [...state.amounts, -event.amount] }
    case "Noted":
      return state
  }
}

let names = 0
const ledger = (
  documentId: (event: Event) => string | undefined = (event) => event._tag === "Noted" ? undefined : event.account
) =>
  Projection.make({
    name: `ledger${++names}`,
    initialState: { balance: 0, amounts: [] } as Ledger,
    evolve,
    documentId,
    state: Ledger
  })

const metadata = { timestamp: "2024-05-01T10:00:00.000Z" }

const record = (streamId: string, version: number, event: Event): RecordedEvent => ({
  ...codec.encode(event, { eventId: `${streamId}:${version}`, metadata }),
  streamId,
  version
})

/** A stream's events, recorded at versions 1, 2, ... */
const history = (streamId: string, account: string, amounts: ReadonlyArray<number>): Array<RecordedEvent> =>
  amounts.map((amount, index) =>
    record(
      streamId,
      index + 1,
      amount >= 0 ? new Deposited({ account, amount }) : new Withdrawn({ account, amount: -amount })
    )
  )

const foldOf = (amounts: ReadonlyArray<number>): Ledger => ({
  balance: amounts.reduce((sum, amount) => sum + amount, 0),
  amounts: [...amounts]
})

const documentOf = (projection: Projection.Projection<Event, Ledger>, documentId: string) =>
  Effect.flatMap(ProjectionStore.ProjectionStore, (store) => store.get(projection.name, documentId)).pipe(
    Effect.map(Option.map((stored) => ({ state: stored.state, positions: stored.positions })))
  )

const counterValue = (counter: Metric.Metric.Counter<number>, projection: string) =>
  Effect.map(Metric.value(Metric.tagged(counter, "projection", projection)), (state) => state.count)

// No delays: conflicts between fibers of one process resolve as fast as they can be retried.
const fastRetry = Schedule.recurs(1000)

describe("Projection.apply", () => {
  const counts = Projection.make({
    name: "counts",
    initialState: 0,
    evolve: (count: number, _event: string) => count + 1,
    documentId: () => "all",
    state: Schema.Int
  })

  it("applies an event and records its position", () => {
    const result = Projection.apply(counts, undefined, "a", { streamId: "s", version: 1 })
    assert.deepStrictEqual(result, { _tag: "Updated", document: { state: 1, positions: { s: 1 } } })
  })

  it("an event at or below the stream's position is unchanged", () => {
    const document = { state: 5, positions: { s: 3, t: 1 } }
    for (const version of [1, 2, 3]) {
      assert.deepStrictEqual(Projection.apply(counts, document, "a", { streamId: "s", version }), {
        _tag: "Unchanged",
        lastApplied: 3
      })
    }
  })

  it("a gap is refused under \"fail\" and applied under \"apply\"", () => {
    const document = { state: 5, positions: { s: 3 } }
    assert.deepStrictEqual(Projection.apply(counts, document, "a", { streamId: "s", version: 5 }), {
      _tag: "Gap",
      lastApplied: 3
    })
    assert.deepStrictEqual(Projection.apply(counts, undefined, "a", { streamId: "new", version: 2 }), {
      _tag: "Gap",
      lastApplied: 0
    })
    assert.deepStrictEqual(Projection.apply(counts, document, "a", { streamId: "s", version: 5 }, { gaps: "apply" }), {
      _tag: "Updated",
      document: { state: 6, positions: { s: 5 } }
    })
  })

  it("stream ids that name Object.prototype members are positions like any other", () => {
    const result = Projection.apply(counts, undefined, "a", { streamId: "constructor", version: 1 })
    assert.deepStrictEqual(result, { _tag: "Updated", document: { state: 1, positions: { constructor: 1 } } })
  })

  it("make refuses an invalid name", () => {
    assert.throws(() => Projection.make({ ...counts, name: "no spaces", state: Schema.Int }), /invalid name/)
  })
})

describe("Projector.project", () => {
  const run = <A, E>(effect: Effect.Effect<A, E, ProjectionStore.ProjectionStore>) =>
    Effect.provide(effect, ProjectionStore.layerMemory)

  it.effect("folds events into their documents, and ignores what the projection ignores", () =>
    run(Effect.gen(function*() {
      const projection = ledger()
      const events = [...history("acc-a", "a", [10, -3]), record("acc-a", 3, new Noted({ text: "hi" }))]
      const results = yield* Effect.forEach(events, (event) => Projector.project(projection, codec, event))
      assert.deepStrictEqual(results.map((result) => result._tag), ["Updated", "Updated", "Ignored"])
      assert.deepStrictEqual(
        yield* documentOf(projection, "a"),
        Option.some({ state: { balance: 7, amounts: [10, -3] }, positions: { "acc-a": 2 } })
      )
    })))

  it.effect("duplicated and redelivered events change nothing", () =>
    run(Effect.gen(function*() {
      const projection = ledger()
      const events = history("acc-b", "b", [5, 6, 7])
      for (const event of events) yield* Projector.project(projection, codec, event)
      const before = Option.getOrThrow(
        yield* Effect.flatMap(ProjectionStore.ProjectionStore, (store) => store.get(projection.name, "b"))
      )
      for (const event of [...events, events[0], events[2], events[1]]) {
        const result = yield* Projector.project(projection, codec, event)
        assert.strictEqual(result._tag, "Skipped")
        if (result._tag === "Skipped") assert.strictEqual(result.lastApplied, 3)
      }
      const after = Option.getOrThrow(
        yield* Effect.flatMap(ProjectionStore.ProjectionStore, (store) => store.get(projection.name, "b"))
      )
      // Not even a write: the revision is the same.
      assert.deepStrictEqual(after, before)
      assert.strictEqual(yield* counterValue(Projector.updates, projection.name), 3)
      assert.strictEqual(yield* counterValue(Projector.duplicates, projection.name), 6)
    })))

  it.effect("under the default policy, an event past a gap fails with a transient ProjectionGap until the gap fills", () =>
    run(Effect.gen(function*() {
      const projection = ledger()
      const [first, second, third] = history("acc-c", "c", [1, 2, 3])
      yield* Projector.project(projection, codec, first)
      const gap = yield* Effect.flip(Projector.project(projection, codec, third))
      assert.deepInclude(gap, {
        _tag: "ProjectionGap",
        projection: projection.name,
        documentId: "c",
        streamId: "acc-c",
        version: 3,
        lastApplied: 1
      })
      assert.isTrue(isTransient(gap))
      assert.include(gap.message, "retry it later")
      // The redelivery after the earlier event landed succeeds.
      yield* Projector.project(projection, codec, second)
      yield* Projector.project(projection, codec, third)
      assert.deepStrictEqual(
        yield* documentOf(projection, "c"),
        Option.some({ state: foldOf([1, 2, 3]), positions: { "acc-c": 3 } })
      )
    })))

  it.effect("under the \"apply\" policy, an event past a gap is applied and the late earlier one is dropped", () =>
    run(Effect.gen(function*() {
      const projection = ledger()
      const [first, second, third] = history("acc-d", "d", [1, 2, 3])
      const options = { gaps: "apply" } as const
      yield* Projector.project(projection, codec, first, options)
      assert.strictEqual((yield* Projector.project(projection, codec, third, options))._tag, "Updated")
      assert.strictEqual((yield* Projector.project(projection, codec, second, options))._tag, "Skipped")
      assert.deepStrictEqual(
        yield* documentOf(projection, "d"),
        Option.some({ state: foldOf([1, 3]), positions: { "acc-d": 3 } })
      )
    })))

  it.effect("an event that does not decode is a DecodeError, a reserved document id an InvalidDocumentId", () =>
    run(Effect.gen(function*() {
      const projection = ledger()
      const broken: RecordedEvent = { ...history("acc-e", "e", [1])[0], data: { account: 42 } }
      assert.strictEqual((yield* Effect.flip(Projector.project(projection, codec, broken)))._tag, "DecodeError")
      const reserved = yield* Effect.flip(Projector.project(projection, codec, history("acc-e", "~x", [1])[0]))
      assert.deepInclude(reserved, { _tag: "InvalidDocumentId", documentId: "~x" })
    })))

  it.effect("a stored state that no longer matches the schema is a DocumentDecodeError", () =>
    run(Effect.gen(function*() {
      const projection = ledger()
      const store = yield* ProjectionStore.ProjectionStore
      yield* store.put(projection.name, "f", { state: { balance: "lots" }, positions: {} }, "new")
      const error = yield* Effect.flip(Projector.project(projection, codec, history("acc-f", "f", [1])[0]))
      assert.deepInclude(error, { _tag: "DocumentDecodeError", projection: projection.name, documentId: "f" })
    })))

  it.live("concurrent updates of one document apply each event exactly once", () =>
    run(Effect.gen(function*() {
      // Twelve streams, each delivered in order by its own fiber, all into one document.
      const projection = ledger(() => "all")
      const streams = Arr.makeBy(12, (n) => history(`acc-${n}`, "all", Arr.makeBy(5, (i) => n * 10 + i + 1)))
      yield* Effect.forEach(
        streams,
        (events) =>
          Effect.forEach(events, (event) => Projector.project(projection, codec, event, { retry: fastRetry })),
        { concurrency: "unbounded", discard: true }
      )
      const document = Option.getOrThrow(yield* documentOf(projection, "all")) as {
        readonly state: Ledger
        readonly positions: Projection.Positions
      }
      const all = streams.flatMap((events) => events.map((event) => (event.data as { amount: number }).amount))
      assert.strictEqual(document.state.balance, foldOf(all).balance)
      assert.sameMembers([...document.state.amounts], all)
      assert.strictEqual(document.state.amounts.length, all.length)
      assert.deepStrictEqual(document.positions, Object.fromEntries(streams.map((_, n) => [`acc-${n}`, 5])))
      assert.strictEqual(yield* counterValue(Projector.updates, projection.name), all.length)
    })))

  it.live("concurrent redeliveries of one stream converge to the sequential fold", () =>
    run(Effect.gen(function*() {
      // Eight fibers each deliver the whole stream, in their own shuffled order; a gap is
      // retried, as a message processor would retry an abandoned message.
      const projection = ledger()
      const amounts = Arr.makeBy(10, (i) => i + 1)
      const events = history("acc-g", "g", amounts)
      const deliver = (event: RecordedEvent) =>
        Projector.project(projection, codec, event, { retry: fastRetry }).pipe(
          Effect.retry({ while: (error) => error._tag === "ProjectionGap", schedule: Schedule.spaced("1 millis") })
        )
      yield* Effect.forEach(
        Arr.makeBy(8, (fiber) => fiber % 2 === 0 ? events : [...events].reverse()),
        (order) => Effect.forEach(order, deliver, { discard: true }),
        { concurrency: "unbounded", discard: true }
      )
      assert.deepStrictEqual(
        yield* documentOf(projection, "g"),
        Option.some({ state: foldOf(amounts), positions: { "acc-g": 10 } })
      )
      assert.strictEqual(yield* counterValue(Projector.updates, projection.name), amounts.length)
    })))

  // Any order of deliveries, with duplicates: events refused for a gap go back to the end of the
  // queue, as abandoned messages come back later. Every order converges to the fold.
  it.effect.prop(
    "any permutation with duplicates converges to the fold under the default policy",
    {
      amounts: FastCheck.array(FastCheck.integer({ min: -50, max: 50 }), { minLength: 1, maxLength: 8 }),
      picks: FastCheck.array(FastCheck.nat(), { minLength: 0, maxLength: 24 }),
      seed: FastCheck.integer()
    },
    ({ amounts, picks, seed }) =>
      run(Effect.gen(function*() {
        const projection = ledger()
        const events = history("acc-p", "p", amounts)
        // A permutation (by the seed) followed by duplicates (by the picks).
        const shuffled = events.map((event, index) => ({ event, key: Math.sin(seed + index) }))
          .sort((a, b) => a.key - b.key)
          .map(({ event }) => event)
        const queue = [...shuffled, ...picks.map((pick) => events[pick % events.length])]
        let deliveries = 0
        while (queue.length > 0) {
          const event = queue.shift()!
          deliveries++
          const result = yield* Effect.either(Projector.project(projection, codec, event))
          if (Either.isLeft(result)) {
            assert.strictEqual(result.left._tag, "ProjectionGap")
            queue.push(event)
          }
          assert.isBelow(deliveries, 1000)
        }
        assert.deepStrictEqual(
          yield* documentOf(projection, "p"),
          Option.some({ state: foldOf(amounts), positions: { "acc-p": amounts.length } })
        )
      }))
  )

  it.effect.prop(
    "under the \"apply\" policy, duplicates never change the result",
    {
      amounts: FastCheck.array(FastCheck.integer({ min: -50, max: 50 }), { minLength: 1, maxLength: 8 }),
      order: FastCheck.array(FastCheck.nat(), { minLength: 1, maxLength: 16 })
    },
    ({ amounts, order }) =>
      run(Effect.gen(function*() {
        const events = history("acc-q", "q", amounts)
        const deliveries = order.map((pick) => events[pick % events.length])
        // Once with every delivery, once with the duplicates removed (first delivery kept).
        const once = deliveries.filter((event, index) => deliveries.indexOf(event) === index)
        const withDuplicates = ledger()
        const withoutDuplicates = ledger()
        for (const event of deliveries) yield* Projector.project(withDuplicates, codec, event, { gaps: "apply" })
        for (const event of once) yield* Projector.project(withoutDuplicates, codec, event, { gaps: "apply" })
        assert.deepStrictEqual(yield* documentOf(withDuplicates, "q"), yield* documentOf(withoutDuplicates, "q"))
      }))
  )
})

describe("Projector.rebuild", () => {
  const streamIds = Arr.makeBy(10, (n) => `acc-${n}`)
  // Accounts a and b take the even and odd streams; notes are interleaved and ignored.
  const seed = Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    for (const [n, streamId] of streamIds.entries()) {
      const account = n % 2 === 0 ? "a" : "b"
      const events = [
        new Deposited({ account, amount: 100 + n }),
        new Noted({ text: `note ${n}` }),
        new Withdrawn({ account, amount: n + 1 }),
        new Deposited({ account, amount: 1 })
      ]
      yield* store.append(
        streamId,
        0,
        events.map((event, index) => codec.encode(event, { eventId: `${streamId}:${index}`, metadata }))
      )
    }
  })

  const snapshot = (store: ProjectionStore.ProjectionStoreService, projection: string) =>
    Effect.forEach(
      ["a", "b"],
      (id) => Effect.map(store.get(projection, id), Option.map(({ positions, state }) => ({ state, positions })))
    )

  const withEvents = <A, E>(effect: Effect.Effect<A, E, EventStore.EventStore>) =>
    Effect.provide(Effect.zipRight(seed, effect), EventStore.layerMemory)

  it.effect("replays every stream and reports progress", () =>
    withEvents(Effect.gen(function*() {
      const projection = ledger()
      const target = yield* ProjectionStore.makeMemory
      const reports: Array<Projector.RebuildProgress> = []
      const final = yield* Projector.rebuild(projection, codec, {
        streams: streamIds,
        target,
        onProgress: (progress) => Effect.sync(() => reports.push(progress))
      })
      assert.deepStrictEqual(reports.map((report) => report.percentage), [...Arr.makeBy(10, (n) => (n + 1) * 10), 100])
      assert.deepStrictEqual(reports.map((report) => report.streamsCompleted), [...Arr.makeBy(10, (n) => n + 1), 10])
      assert.isTrue(reports[reports.length - 1].done)
      assert.deepInclude(final, { eventsRead: 40, eventsApplied: 30, streamsTotal: 10, resumedFrom: 0, done: true })
      assert.strictEqual(final.lastStream, "acc-9")
      const [a, b] = yield* snapshot(target, projection.name)
      const evenAmounts = [0, 2, 4, 6, 8].flatMap((n) => [100 + n, -(n + 1), 1])
      assert.deepStrictEqual(
        a,
        Option.some({
          state: foldOf(evenAmounts),
          positions: Object.fromEntries([0, 2, 4, 6, 8].map((n) => [`acc-${n}`, 4]))
        })
      )
      assert.isTrue(Option.isSome(b))
      // A rerun of a finished rebuild does nothing.
      const again = yield* Projector.rebuild(projection, codec, { streams: streamIds, target })
      assert.deepInclude(again, { eventsRead: 0, streamsCompleted: 10, done: true })
    })))

  it.effect("an interrupted rebuild, resumed, builds the same documents as an uninterrupted one", () =>
    withEvents(Effect.gen(function*() {
      const projection = ledger()
      const reference = yield* ProjectionStore.makeMemory
      yield* Projector.rebuild(projection, codec, { streams: streamIds, target: reference })

      const target = yield* ProjectionStore.makeMemory
      const reached = yield* Deferred.make<void>()
      // Stops for good in the middle of the seventh stream's report, after a checkpoint at six.
      const fiber = yield* Projector.rebuild(projection, codec, {
        streams: Stream.fromIterable(streamIds),
        target,
        checkpointEvery: 3,
        onProgress: (progress) =>
          progress.streamsCompleted === 7
            ? Effect.zipRight(Deferred.succeed(reached, undefined), Effect.never)
            : Effect.void
      }).pipe(Effect.fork)
      yield* Deferred.await(reached)
      yield* Fiber.interrupt(fiber)
      assert.isTrue(Exit.isInterrupted(yield* Fiber.await(fiber)))

      const reports: Array<Projector.RebuildProgress> = []
      const resumed = yield* Projector.rebuild(projection, codec, {
        streams: Stream.fromIterable(streamIds),
        total: streamIds.length,
        target,
        checkpointEvery: 3,
        onProgress: (progress) => Effect.sync(() => reports.push(progress))
      })
      // Six streams skipped; the seventh, applied before the interruption, replayed as a no-op.
      assert.deepInclude(resumed, { resumedFrom: 6, streamsCompleted: 10, eventsRead: 16, eventsApplied: 9 })
      assert.deepStrictEqual(reports[0].percentage, 70)
      assert.deepStrictEqual(yield* snapshot(target, projection.name), yield* snapshot(reference, projection.name))
    })))
})

describe("the event envelope", () => {
  // One document per stream: the events do not name their stream, the envelope does. The state
  // keeps where each applied event came from, so a wrong position would show.
  const Summary = Schema.Struct({
    stream: Schema.String,
    balance: Schema.Int,
    applied: Schema.Array(Schema.Tuple(Schema.String, Schema.Int))
  })
  type Summary = typeof Summary.Type

  const makeSummaries = (seen: Array<Projection.EventEnvelope>) =>
    Projection.make({
      name: `summary${++names}`,
      initialState: { stream: "", balance: 0, applied: [] } as Summary,
      evolve: (summary: Summary, event: Event, { streamId, version }): Summary => ({
        stream: streamId,
        balance: summary.balance +
          (event._tag === "Deposited" ? event.amount : event._tag === "Withdrawn" ? -event.amount : 0),
        applied: [...summary.applied, [streamId, version] as const]
      }),
      documentId: (event: Event, envelope) => {
        seen.push(envelope)
        return event._tag === "Noted" ? undefined : `summary-of-${envelope.streamId}`
      },
      state: Summary
    })

  it("apply gives evolve the position", () => {
    const summaries = makeSummaries([])
    const first = Projection.apply(summaries, undefined, new Deposited({ account: "x", amount: 4 }), {
      streamId: "s-1",
      version: 1
    })
    assert.strictEqual(first._tag, "Updated")
    if (first._tag !== "Updated") return
    const second = Projection.apply(summaries, first.document, new Withdrawn({ account: "x", amount: 1 }), {
      streamId: "s-1",
      version: 2
    })
    assert.deepStrictEqual(second, {
      _tag: "Updated",
      document: { state: { stream: "s-1", balance: 3, applied: [["s-1", 1], ["s-1", 2]] }, positions: { "s-1": 2 } }
    })
  })

  it.effect("project routes by the envelope and folds with the position", () =>
    Effect.gen(function*() {
      const seen: Array<Projection.EventEnvelope> = []
      const summaries = makeSummaries(seen)
      const events = [
        ...history("acc-1", "same-account", [10, -4]),
        record("acc-1", 3, new Noted({ text: "ignored" })),
        ...history("acc-2", "same-account", [7])
      ]
      const results = yield* Effect.forEach(events, (event) => Projector.project(summaries, codec, event))
      assert.deepStrictEqual(results.map((result) => result._tag), ["Updated", "Updated", "Ignored", "Updated"])
      // Every field of the recorded event but its payload reaches documentId.
      assert.deepStrictEqual(
        seen.map(({ eventId, metadata, schemaVersion, streamId, type, version }) => ({
          eventId,
          metadata,
          schemaVersion,
          streamId,
          type,
          version
        })),
        events.map(({ eventId, metadata, schemaVersion, streamId, type, version }) => ({
          eventId,
          metadata,
          schemaVersion,
          streamId,
          type,
          version
        }))
      )
      assert.deepStrictEqual(
        yield* documentOf(summaries as never, "summary-of-acc-1"),
        Option.some({
          state: { stream: "acc-1", balance: 6, applied: [["acc-1", 1], ["acc-1", 2]] },
          positions: { "acc-1": 2 }
        })
      )
      assert.deepStrictEqual(
        yield* documentOf(summaries as never, "summary-of-acc-2"),
        Option.some({ state: { stream: "acc-2", balance: 7, applied: [["acc-2", 1]] }, positions: { "acc-2": 1 } })
      )
    }).pipe(Effect.provide(ProjectionStore.layerMemory)))

  it.effect("rebuild passes the same envelope and position as project", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      for (const streamId of ["acc-1", "acc-2"]) {
        yield* store.append(
          streamId,
          0,
          [
            new Deposited({ account: "x", amount: 5 }),
            new Noted({ text: "n" }),
            new Withdrawn({ account: "x", amount: 2 })
          ]
            .map((event, index) => codec.encode(event, { eventId: `${streamId}:${index}`, metadata }))
        )
      }
      const seen: Array<Projection.EventEnvelope> = []
      const summaries = makeSummaries(seen)
      const target = yield* ProjectionStore.makeMemory
      yield* Projector.rebuild(summaries, codec, { streams: ["acc-1", "acc-2"], target })
      assert.deepStrictEqual(
        seen.map(({ eventId, streamId, version }) => [eventId, streamId, version]),
        [["acc-1:0", "acc-1", 1], ["acc-1:1", "acc-1", 2], ["acc-1:2", "acc-1", 3], ["acc-2:0", "acc-2", 1], [
          "acc-2:1",
          "acc-2",
          2
        ], ["acc-2:2", "acc-2", 3]]
      )
      const stored = yield* target.get(summaries.name, "summary-of-acc-2")
      assert.deepStrictEqual(
        Option.map(stored, ({ positions, state }) => ({ state, positions })),
        Option.some({
          state: { stream: "acc-2", balance: 3, applied: [["acc-2", 1], ["acc-2", 3]] },
          positions: { "acc-2": 3 }
        })
      )
    }).pipe(Effect.provide(EventStore.layerMemory)))
})

describe("Projector.project tracing and metrics", () => {
  // A tracer that records the spans it starts, on top of the native one.
  const recordingTracer = Effect.map(Effect.tracer, (native) => {
    const spans: Array<Tracer.Span> = []
    const tracer = Tracer.make({
      span: (name, parent, context, links, startTime, kind, options) => {
        const span = native.span(name, parent, context, links, startTime, kind, options)
        spans.push(span)
        return span
      },
      context: native.context
    })
    return { spans, tracer }
  })

  it.effect("with a tracer installed, runs in a Projection.apply span that the store sees, with its outcome", () =>
    Effect.gen(function*() {
      const { spans, tracer } = yield* recordingTracer
      const memory = yield* ProjectionStore.makeMemory
      const parents: Array<string> = []
      // A store that notes the span it runs in.
      const store: ProjectionStore.ProjectionStoreService = {
        get: (projection, documentId) =>
          Effect.zipRight(
            Effect.flatMap(
              Effect.option(Effect.currentSpan),
              (span) =>
                Effect.sync(() =>
                  parents.push(Option.match(span, { onNone: () => "none", onSome: (span) => span.name }))
                )
            ),
            memory.get(projection, documentId)
          ),
        put: memory.put
      }
      const projection = ledger()
      const [event] = history("acc-t", "t", [3])
      const results = yield* Effect.all([
        Projector.project(projection, codec, event),
        Projector.project(projection, codec, event)
      ]).pipe(Effect.provideService(ProjectionStore.ProjectionStore, store), Effect.withTracer(tracer))
      assert.deepStrictEqual(results.map((result) => result._tag), ["Updated", "Skipped"])
      const applied = spans.filter((span) => span.name === "Projection.apply")
      assert.deepStrictEqual(
        applied.map((span) => Object.fromEntries(span.attributes)),
        ["Updated", "Skipped"].map((outcome) => ({
          projection: projection.name,
          documentId: "t",
          streamId: "acc-t",
          version: 1,
          outcome
        }))
      )
      assert.isTrue(applied.every((span) => span.status._tag === "Ended"))
      // The first update reads (nothing cached), the duplicate reads (only a read decides it).
      assert.deepStrictEqual(parents, ["Projection.apply", "Projection.apply"])
    }))

  it.effect("without a tracer installed, builds no span of its own: the store runs in the caller's", () =>
    Effect.gen(function*() {
      const memory = yield* ProjectionStore.makeMemory
      const parents: Array<string> = []
      const store: ProjectionStore.ProjectionStoreService = {
        get: memory.get,
        put: (projection, documentId, document, expected) =>
          Effect.zipRight(
            Effect.flatMap(
              Effect.option(Effect.currentSpan),
              (span) =>
                Effect.sync(() =>
                  parents.push(Option.match(span, { onNone: () => "none", onSome: (span) => span.name }))
                )
            ),
            memory.put(projection, documentId, document, expected)
          )
      }
      const [event] = history("acc-u", "u", [3])
      const result = yield* Projector.project(ledger(), codec, event).pipe(
        Effect.provideService(ProjectionStore.ProjectionStore, store),
        Effect.withSpan("caller")
      )
      assert.strictEqual(result._tag, "Updated")
      assert.deepStrictEqual(parents, ["caller"])
    }))

  it.effect("counts with the fiber's metric tags as well as the projection's", () =>
    Effect.gen(function*() {
      const projection = ledger()
      const events = history("acc-m", "m", [1, 2])
      yield* Effect.forEach([...events, events[0]], (event) => Projector.project(projection, codec, event)).pipe(
        Effect.tagMetrics("tenant", "t-1"),
        Effect.provide(ProjectionStore.layerMemory)
      )
      const value = (counter: Metric.Metric.Counter<number>) =>
        Effect.map(
          Metric.value(Metric.tagged(Metric.tagged(counter, "projection", projection.name), "tenant", "t-1")),
          (state) => state.count
        )
      assert.strictEqual(yield* value(Projector.updates), 2)
      assert.strictEqual(yield* value(Projector.duplicates), 1)
    }))
})

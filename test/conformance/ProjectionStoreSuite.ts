// The contract every projection store passes: registered once per implementation, so the memory
// store and the Azure adapter are held to the same semantics. Each test uses document ids of its
// own, so a layer over a shared table works too.
import { assert, describe, it } from "@effect/vitest"
import type { Layer } from "effect"
import { Array as Arr, Effect, Either, Option } from "effect"
import type { DocumentData } from "../../src/ProjectionStore.js"
import { limits, ProjectionStore } from "../../src/ProjectionStore.js"

/**
 * Registers the projection store contract tests under `name`, against the store the layer provides.
 */
export const projectionStoreSuite = <E>(name: string, storeLayer: Layer.Layer<ProjectionStore, E>): void => {
  const run = Math.random().toString(36).slice(2, 8)
  let counter = 0
  const newId = (label: string) => `${label}-${run}-${++counter}`
  const projection = "suite"

  // Live services: stores may retry transient failures on a schedule and time out requests.
  const test = <A, E2>(title: string, body: () => Effect.Effect<A, E2, ProjectionStore>) =>
    it.live(title, () => Effect.provide(body(), storeLayer))

  const doc = (state: unknown, positions: Record<string, number> = {}): DocumentData => ({ state, positions })

  describe(name, () => {
    test("stores a new document and reads it back with its revision", () =>
      Effect.gen(function*() {
        const store = yield* ProjectionStore
        const id = newId("new")
        assert.deepStrictEqual(yield* store.get(projection, id), Option.none())
        const revision = yield* store.put(projection, id, doc({ total: 3, items: ["a", "b"] }, { "s-1": 2 }), "new")
        const read = Option.getOrThrow(yield* store.get(projection, id))
        assert.deepStrictEqual(read, {
          projection,
          documentId: id,
          state: { total: 3, items: ["a", "b"] },
          positions: { "s-1": 2 },
          revision
        })
      }))

    test("updates with the current revision, and every put gives a new revision", () =>
      Effect.gen(function*() {
        const store = yield* ProjectionStore
        const id = newId("update")
        const first = yield* store.put(projection, id, doc({ n: 1 }, { a: 1 }), "new")
        const second = yield* store.put(projection, id, doc({ n: 2 }, { a: 2 }), first)
        assert.notStrictEqual(second, first)
        const third = yield* store.put(projection, id, doc({ n: 3 }, { a: 3, b: 1 }), second)
        const read = Option.getOrThrow(yield* store.get(projection, id))
        assert.deepStrictEqual(read.state, { n: 3 })
        assert.deepStrictEqual(read.positions, { a: 3, b: 1 })
        assert.strictEqual(read.revision, third)
      }))

    test("a stale revision, a new document that exists, or a revision of a missing one conflicts and writes nothing", () =>
      Effect.gen(function*() {
        const store = yield* ProjectionStore
        const id = newId("conflict")
        const first = yield* store.put(projection, id, doc({ n: 1 }), "new")
        const second = yield* store.put(projection, id, doc({ n: 2 }), first)

        const stale = yield* Effect.flip(store.put(projection, id, doc({ n: 99 }), first))
        assert.deepInclude(stale, { _tag: "DocumentConflict", projection, documentId: id, expected: first })
        const exists = yield* Effect.flip(store.put(projection, id, doc({ n: 98 }), "new"))
        assert.deepInclude(exists, { _tag: "DocumentConflict", expected: "new" })
        const missing = yield* Effect.flip(store.put(projection, newId("missing"), doc({ n: 97 }), second))
        assert.strictEqual(missing._tag, "DocumentConflict")

        const read = Option.getOrThrow(yield* store.get(projection, id))
        assert.deepStrictEqual(read.state, { n: 2 })
        assert.strictEqual(read.revision, second)
      }))

    test("of concurrent writers with the same expectation exactly one wins", () =>
      Effect.gen(function*() {
        const store = yield* ProjectionStore
        const id = newId("race")
        const writers = 6
        const created = yield* Effect.all(
          Arr.makeBy(writers, (n) => Effect.either(store.put(projection, id, doc({ writer: n }), "new"))),
          { concurrency: "unbounded" }
        )
        assert.strictEqual(created.filter(Either.isRight).length, 1)
        const read = Option.getOrThrow(yield* store.get(projection, id))
        const updated = yield* Effect.all(
          Arr.makeBy(writers, (n) => Effect.either(store.put(projection, id, doc({ writer: 10 + n }), read.revision))),
          { concurrency: "unbounded" }
        )
        const won = updated.flatMap((result, n) => Either.isRight(result) ? [n] : [])
        assert.strictEqual(won.length, 1)
        for (const result of updated) {
          if (Either.isLeft(result)) assert.strictEqual(result.left._tag, "DocumentConflict")
        }
        assert.deepStrictEqual(Option.getOrThrow(yield* store.get(projection, id)).state, { writer: 10 + won[0] })
      }))

    test("large documents are split across columns and read back whole, shorter ones replace them", () =>
      Effect.gen(function*() {
        const store = yield* ProjectionStore
        const id = newId("large")
        // 200K characters with astral characters around every 32K boundary: no chunk may cut a pair.
        const text = Arr.makeBy(40, (n) => "x".repeat(5000) + "😀" + String(n)).join("")
        const positions = Object.fromEntries(Arr.makeBy(2000, (n) => [`stream-${n}`, n + 1]))
        const revision = yield* store.put(projection, id, doc({ text }, positions), "new")
        const read = Option.getOrThrow(yield* store.get(projection, id))
        assert.deepStrictEqual(read.state, { text })
        assert.deepStrictEqual(read.positions, positions)
        yield* store.put(projection, id, doc({ text: "short" }, { a: 1 }), revision)
        const shorter = Option.getOrThrow(yield* store.get(projection, id))
        assert.deepStrictEqual(shorter.state, { text: "short" })
        assert.deepStrictEqual(shorter.positions, { a: 1 })
      }))

    test("a document over the entity limit is refused before anything is written", () =>
      Effect.gen(function*() {
        const store = yield* ProjectionStore
        const id = newId("too-large")
        const text = "y".repeat(limits.maxDocumentBytes / 2)
        const error = yield* Effect.flip(store.put(projection, id, doc({ text }), "new"))
        assert.strictEqual(error._tag, "DocumentTooLarge")
        if (error._tag === "DocumentTooLarge") {
          assert.isAbove(error.bytes, error.maxBytes)
          assert.strictEqual(error.maxBytes, limits.maxDocumentBytes)
        }
        assert.deepStrictEqual(yield* store.get(projection, id), Option.none())
        // Just under the limit fits.
        yield* store.put(projection, id, doc({ text: "y".repeat(limits.maxDocumentBytes / 2 - 2048) }), "new")
      }))

    test("invalid projection names and document ids are refused on reads and writes", () =>
      Effect.gen(function*() {
        const store = yield* ProjectionStore
        const cases: ReadonlyArray<readonly [string, string]> = [
          [projection, ""],
          [projection, "a/b"],
          [projection, "a\\b"],
          [projection, "a#b"],
          [projection, "a?b"],
          [projection, "a\u0001b"],
          [projection, "é".repeat(600)],
          ["", "doc"],
          ["has:colon", "doc"],
          ["has space", "doc"],
          ["-leading", "doc"]
        ]
        for (const [name, id] of cases) {
          const read = yield* Effect.flip(store.get(name, id))
          assert.deepInclude(read, { _tag: "InvalidDocumentId", projection: name, documentId: id })
          const write = yield* Effect.flip(store.put(name, id, doc({}), "new"))
          assert.strictEqual(write._tag, "InvalidDocumentId", `${name} / ${id}`)
        }
      }))

    test("positions round trip, whatever the stream ids", () =>
      Effect.gen(function*() {
        const store = yield* ProjectionStore
        const id = newId("positions")
        const positions = {
          "booking-1": 7,
          "room:101": 1,
          "constructor": 3,
          "ünïcödé-😀": 12,
          "big": 9_999_999_999
        }
        yield* store.put(projection, id, doc(null, positions), "new")
        const read = Option.getOrThrow(yield* store.get(projection, id))
        assert.deepStrictEqual(read.positions, positions)
        assert.strictEqual(read.state, null)
      }))

    test("documents are separate per projection, and ids may contain the separator", () =>
      Effect.gen(function*() {
        const store = yield* ProjectionStore
        const id = `${newId("shared")}:with:colons`
        yield* store.put("first", id, doc("one"), "new")
        yield* store.put("second", id, doc("two"), "new")
        assert.strictEqual(Option.getOrThrow(yield* store.get("first", id)).state, "one")
        assert.strictEqual(Option.getOrThrow(yield* store.get("second", id)).state, "two")
        assert.deepStrictEqual(yield* store.get("third", id), Option.none())
      }))
  })
}

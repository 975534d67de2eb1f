import { assert, describe, it } from "@effect/vitest"
import { Either, Schema } from "effect"
import * as Decider from "../src/Decider.js"
import { DeciderSpecError } from "../src/testing/DeciderSpec.js"
import * as DeciderSpec from "../src/testing/DeciderSpec.js"

class Tag extends Schema.TaggedClass<Tag>()("Tag", { labels: Schema.Array(Schema.String), at: Schema.Date }) {}
class Explode extends Schema.TaggedClass<Explode>()("Explode", {}) {}
class Tagged extends Schema.TaggedClass<Tagged>()("Tagged", { labels: Schema.Array(Schema.String), at: Schema.Date }) {}
class Poisoned extends Schema.TaggedClass<Poisoned>()("Poisoned", {}) {}
class TooMany extends Schema.TaggedError<TooMany>()("TooMany", { count: Schema.Int }) {}

type Event = Tagged | Poisoned

// Keeps a set of labels, at most three; tagging with known labels only changes nothing.
const labels = Decider.make<Tag | Explode, Event, ReadonlyArray<string>, TooMany>({
  initialState: [],
  evolve: (state, event) => {
    if (event._tag === "Poisoned") throw new Error("poisoned history")
    return [...state, ...event.labels]
  },
  decide: (command, state) => {
    if (command._tag === "Explode") throw new Error("decide exploded")
    const fresh = command.labels.filter((label) => !state.includes(label))
    if (fresh.length === 0) return Either.right([])
    if (state.length + fresh.length > 3) return Either.left(new TooMany({ count: state.length + fresh.length }))
    return Either.right([new Tagged({ labels: fresh, at: command.at })])
  }
})

const at = new Date("2030-05-01T12:00:00Z")
const spec = DeciderSpec.for(labels)

const failure = (run: () => void): DeciderSpecError => {
  try {
    run()
  } catch (error) {
    assert.instanceOf(error, DeciderSpecError)
    return error as DeciderSpecError
  }
  return assert.fail("the specification should have failed")
}

describe("DeciderSpec", () => {
  it("then passes when the events are structurally equal (arrays and dates included)", () => {
    spec.given().when(new Tag({ labels: ["a", "b"], at })).then([
      new Tagged({ labels: ["a", "b"], at: new Date(at.getTime()) })
    ])
    spec.given([new Tagged({ labels: ["a"], at })]).when(new Tag({ labels: ["a", "b"], at })).then([
      new Tagged({ labels: ["b"], at })
    ])
  })

  it("then fails with the history, the command, and the expected and actual events", () => {
    const error = failure(() =>
      spec.given([new Tagged({ labels: ["a"], at })]).when(new Tag({ labels: ["b"], at })).then([
        new Tagged({ labels: ["c"], at })
      ])
    )
    assert.strictEqual(error.name, "AssertionError")
    assert.include(error.message, "the command produced other events")
    assert.include(error.message, "Given:\n  1. Tagged {\"labels\":[\"a\"],\"at\":\"2030-05-01T12:00:00.000Z\"}")
    assert.include(error.message, "When:\n  Tag {\"labels\":[\"b\"]")
    assert.include(error.message, "Expected events:\n  1. Tagged {\"labels\":[\"c\"]")
    assert.include(error.message, "Actual events:\n  1. Tagged {\"labels\":[\"b\"]")
    // Plain data, so that runners can diff it.
    assert.deepStrictEqual(error.expected, [{ _tag: "Tagged", labels: ["c"], at: "2030-05-01T12:00:00.000Z" }])
    assert.deepStrictEqual(error.actual, [{ _tag: "Tagged", labels: ["b"], at: "2030-05-01T12:00:00.000Z" }])
  })

  it("then fails when the command is refused, showing the error", () => {
    const history = [new Tagged({ labels: ["a", "b", "c"], at })]
    const error = failure(() => spec.given(history).when(new Tag({ labels: ["d"], at })).then([]))
    assert.include(error.message, "the command was refused")
    assert.include(error.message, "TooMany {\"count\":4}")
  })

  it("thenFails accepts any error, an equal error, or a predicate", () => {
    const full = spec.given([new Tagged({ labels: ["a", "b", "c"], at })]).when(new Tag({ labels: ["d"], at }))
    full.thenFails()
    full.thenFails(new TooMany({ count: 4 }))
    full.thenFails((error) => error.count > 3)
    const other = failure(() => full.thenFails(new TooMany({ count: 5 })))
    assert.include(other.message, "refused with another error")
    assert.include(other.message, "Expected: refused with TooMany {\"count\":5}")
    assert.include(other.message, "Actual: refused with\n  TooMany {\"count\":4}")
    const predicate = failure(() => full.thenFails((error) => error.count === 0))
    assert.include(predicate.message, "an error matching the predicate")
  })

  it("thenFails fails when the command is accepted", () => {
    const error = failure(() => spec.given().when(new Tag({ labels: ["a"], at })).thenFails())
    assert.include(error.message, "the command was accepted")
    assert.include(error.message, "Actual events:\n  1. Tagged")
  })

  it("thenNothing passes when no events are produced, and fails otherwise", () => {
    spec.given([new Tagged({ labels: ["a"], at })]).when(new Tag({ labels: ["a"], at })).thenNothing()
    const error = failure(() => spec.given().when(new Tag({ labels: ["a"], at })).thenNothing())
    assert.include(error.message, "Expected events:\n  (none)")
  })

  it("a decider that throws fails the specification instead of crashing it", () => {
    const decide = failure(() => spec.given().when(new Explode()).thenNothing())
    assert.include(decide.message, "decide threw")
    assert.include(decide.message, "decide exploded")
    const evolve = failure(() => spec.given([new Poisoned()]).when(new Tag({ labels: ["a"], at })).thenFails())
    assert.include(evolve.message, "evolve threw while folding the history")
    assert.include(evolve.message, "poisoned history")
  })

  it("refuses to be awaited half-finished", async () => {
    const unfinished = spec.given().when(new Tag({ labels: ["a"], at }))
    let caught: unknown
    try {
      await (unfinished as unknown as Promise<unknown>)
    } catch (error) {
      caught = error
    }
    assert.instanceOf(caught, TypeError)
    assert.include(String(caught), "did you forget to finish a specification")
  })
})

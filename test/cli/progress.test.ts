import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { Progress } from "../../src/cli/index.js"
import type { Projector } from "../../src/index.js"

const progress = (overrides: Partial<Projector.RebuildProgress>): Projector.RebuildProgress => ({
  projection: "rooms",
  streamsCompleted: 3,
  streamsTotal: 10,
  resumedFrom: 0,
  eventsRead: 1234,
  eventsApplied: 1200,
  eventsPerSecond: 850.4,
  percentage: 30,
  lastStream: "s-3",
  done: false,
  ...overrides
})

describe("Progress", () => {
  it("renders a bar with the counts", () => {
    assert.strictEqual(
      Progress.render(progress({}), { width: 10 }),
      "rooms [###.......]  30% 3/10 streams, 1,234 events, 850 events/s"
    )
    assert.strictEqual(
      Progress.render(progress({ streamsTotal: undefined, percentage: undefined, done: true })),
      "rooms 3 streams, 1,234 events, 850 events/s, done"
    )
  })

  it.effect("prints about ten lines when not on a terminal, and redraws in place on one", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const report = Progress.reporter({ write: (text) => lines.push(text) }, { width: 4 })
      for (let done = 1; done <= 100; done++) {
        yield* report(progress({ streamsCompleted: done, streamsTotal: 100, percentage: done, done: done === 100 }))
      }
      assert.strictEqual(lines.length, 11) // 0% to 100%, by tenths
      assert.include(lines[10], "100/100 streams")
      const drawn: Array<string> = []
      const live = Progress.reporter({ write: (text) => drawn.push(text), isTTY: true })
      yield* live(progress({}))
      yield* live(progress({ done: true }))
      assert.isTrue(drawn[0].startsWith("\r\x1b[2K"))
      assert.isTrue(drawn[1].endsWith("\n"))
    }))
})

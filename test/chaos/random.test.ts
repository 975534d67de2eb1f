// The chaos run's generator: a seed gives the same draws every time, and named streams are
// independent of each other's draws (so the fault schedule does not move with the load).
import { assert, describe, it } from "@effect/vitest"
import * as Random from "./random.js"

const draws = (random: Random.Random, count: number) => Array.from({ length: count }, () => random.int(0, 1_000_000))

describe("chaos Random", () => {
  it("the same seed gives the same draws", () => {
    assert.deepStrictEqual(draws(Random.make(7), 50), draws(Random.make(7), 50))
    assert.notDeepEqual(draws(Random.make(7), 50), draws(Random.make(8), 50))
  })

  it("a forked stream does not depend on the parent's draws", () => {
    const a = Random.make(7)
    const b = Random.make(7)
    draws(b, 13)
    assert.deepStrictEqual(draws(a.fork("faults"), 20), draws(b.fork("faults"), 20))
  })

  it("stays in range, and weighted picks follow their weights", () => {
    const random = Random.make("range")
    for (const value of draws(random, 1_000)) assert.isTrue(value >= 0 && value <= 1_000_000)
    const picks = Array.from({ length: 10_000 }, () => random.weighted([["a", 9], ["b", 1]] as const))
    const share = picks.filter((pick) => pick === "a").length / picks.length
    assert.isTrue(share > 0.85 && share < 0.95, String(share))
  })
})

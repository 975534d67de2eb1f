import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import type { FilterInput } from "../../src/emulator/internal/filter.js"
import { compile, FilterSyntaxError, sql } from "../../src/emulator/internal/filter.js"

const input = (system: Record<string, unknown>, user: Record<string, unknown>): FilterInput => ({
  system: (name) => system[name.toLowerCase()],
  user: (name) => user[name]
})

describe("subscription filters", () => {
  it.effect("evaluates the SQL subset Service Bus rules use", () =>
    Effect.sync(() => {
      const message = input({ label: "created", messageid: "m-1" }, { region: "eu", amount: 150, vip: true })
      const cases: ReadonlyArray<readonly [string, boolean]> = [
        ["1=1", true],
        ["sys.label = 'created'", true],
        ["sys.Label = 'deleted'", false],
        ["user.region = 'eu' AND sys.label = 'created'", true],
        ["region = 'us' OR amount > 100", true],
        ["NOT (region = 'eu')", false],
        ["amount >= 150 AND amount < 151", true],
        ["region <> 'eu'", false],
        ["region != 'us'", true],
        ["missing IS NULL", true],
        ["region IS NOT NULL", true],
        ["region IN ('us', 'eu')", true],
        ["region NOT IN ('us', 'eu')", false],
        ["sys.MessageId LIKE 'm-%'", true],
        ["sys.MessageId LIKE 'x%'", false],
        ["EXISTS(region)", true],
        ["EXISTS(nope)", false],
        ["vip = TRUE", true],
        ["missing = 'x'", false],
        ["[region] = 'eu'", true],
        ["user.[region] = 'eu'", true],
        ["region = 'it''s'", false]
      ]
      for (const [text, expected] of cases) assert.strictEqual(sql(text)(message), expected, text)
    }))

  it.effect("rejects malformed SQL with a readable error", () =>
    Effect.sync(() => {
      for (const text of ["region = ", "region = 'eu", "(a = 1", "a = 1 b", "foo.bar = 1"]) {
        assert.throws(() => sql(text), FilterSyntaxError)
      }
    }))

  it.effect("compiles boolean and correlation filters", () =>
    Effect.sync(() => {
      const message = input({ correlationid: "c-1", label: "x" }, { kind: "a", n: 1 })
      assert.isTrue(compile(true)(message))
      assert.isFalse(compile(false)(message))
      assert.isTrue(
        compile({ correlation: { correlationId: "c-1", applicationProperties: { kind: "a", n: 1 } } })(message)
      )
      assert.isFalse(compile({ correlation: { correlationId: "c-1", subject: "y" } })(message))
    }))
})

import { assert, describe, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import * as StreamId from "../src/StreamId.js"

describe("StreamId", () => {
  it("accepts ordinary ids", () => {
    assert.deepStrictEqual(StreamId.validate("booking-123"), Either.right("booking-123"))
    assert.deepStrictEqual(StreamId.validate("ü-ñ-日本"), Either.right("ü-ñ-日本"))
  })

  it.effect("refuses forbidden characters, empty and oversized ids with a reason", () =>
    Effect.gen(function*() {
      for (const bad of ["", "a/b", "a\\b", "a#b", "a?b", "a\u0000b", "a\tb", "a\u007fb", "x".repeat(1025)]) {
        const error = yield* Effect.flip(StreamId.check(bad))
        assert.strictEqual(error._tag, "InvalidStreamId")
        assert.strictEqual(error.streamId, bad)
        assert.isAbove(error.reason.length, 0)
      }
      // 1024 bytes exactly is allowed; 512 two-byte characters are 1024 bytes.
      assert.isTrue(Either.isRight(StreamId.validate("é".repeat(512))))
      assert.isTrue(Either.isLeft(StreamId.validate("é".repeat(513))))
    }))

  it("splits categories", () => {
    assert.strictEqual(StreamId.category(StreamId.make("booking", "42-a")), "booking")
    assert.strictEqual(StreamId.category("plain"), "plain")
  })
})

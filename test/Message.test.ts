import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Schema } from "effect"
import { decodeBodyBytes, encodeAll, packBatches, splitProperties } from "../src/internal/messageCodec.js"
import * as Message from "../src/Message.js"

const Payment = Schema.Struct({
  paymentId: Schema.String,
  at: Schema.Date,
  amount: Schema.Number.pipe(Schema.positive())
})

const received = (body: unknown): Message.ReceivedMessage => ({
  body,
  messageId: "m-1",
  subject: "PaymentMade",
  entity: "payments",
  sequenceNumber: 1n,
  deliveryCount: 1,
  enqueuedTime: new Date(0),
  state: "active"
})

describe("Message", () => {
  it.effect("make encodes the body with the schema, and decodeBody decodes it back", () =>
    Effect.gen(function*() {
      const at = new Date("2024-05-01T10:00:00.000Z")
      const message = yield* Message.make(Payment, { paymentId: "p-1", at, amount: 10 }, {
        messageId: "m-1",
        subject: "PaymentMade"
      })
      assert.deepStrictEqual(message.body, { paymentId: "p-1", at: "2024-05-01T10:00:00.000Z", amount: 10 })
      assert.strictEqual(message.subject, "PaymentMade")
      const decoded = yield* Message.decodeBody(Payment)(received(message.body))
      assert.deepStrictEqual(decoded, { paymentId: "p-1", at, amount: 10 })
    }))

  it.effect("encoding and decoding failures are typed and say why", () =>
    Effect.gen(function*() {
      const encodeError = yield* Effect.flip(
        Message.make(Payment, { paymentId: "p", at: new Date(), amount: -1 }, { messageId: "m-2" })
      )
      assert.strictEqual(encodeError._tag, "MessageEncodeError")
      assert.strictEqual(encodeError.messageId, "m-2")
      assert.include(encodeError.reason, "amount")

      const mismatch = yield* Effect.flip(Message.decodeBody(Payment)(received({ paymentId: 1 })))
      assert.strictEqual(mismatch._tag, "MessageDecodeError")
      assert.strictEqual(mismatch.entity, "payments")
      assert.strictEqual(mismatch.subject, "PaymentMade")

      const bytes = yield* Effect.flip(Message.decodeBody(Payment)(received(new Uint8Array([0xff, 0x00]))))
      assert.include(bytes.reason, "not JSON")
    }))

  it("ids from events are the event ids when valid, else a stable hash", () => {
    assert.strictEqual(Message.idFromEvent("evt-42"), "evt-42")
    const long = "e".repeat(200)
    const hashed = Message.idFromEvent(long)
    assert.match(hashed, /^[0-9a-f]{32}$/)
    assert.strictEqual(Message.idFromEvent(long), hashed)
    assert.notStrictEqual(Message.idFromEvent(`${long}x`), hashed)
    assert.match(Message.idFromEvent(""), /^[0-9a-f]{32}$/)
  })

  it("ids from a received message and an index are stable and distinct", () => {
    const first = Message.idFromMessage("incoming-1", 0)
    assert.strictEqual(Message.idFromMessage("incoming-1", 0), first)
    const all = new Set([first, Message.idFromMessage("incoming-1", 1), Message.idFromMessage("incoming-2", 0)])
    assert.strictEqual(all.size, 3)
    for (const id of all) assert.isAtMost(id.length, Message.maxIdLength)
    // Part boundaries count: ("ab", "c") and ("a", "bc") differ.
    assert.notStrictEqual(Message.deterministicId("ab", "c"), Message.deterministicId("a", "bc"))
  })

  it("traceparentOf accepts W3C ids only", () => {
    assert.strictEqual(
      Message.traceparentOf({ traceId: "0af7651916cd43dd8448eb211c80319c", spanId: "b7ad6b7169203331" }),
      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )
    assert.isUndefined(Message.traceparentOf({ traceId: "custom", spanId: "1" }))
  })

  it("the schemas refuse what Service Bus refuses", () => {
    const decode = Schema.decodeUnknownEither(Message.OutgoingMessage)
    assert.isTrue(Either.isRight(decode({ body: 1, messageId: "x".repeat(128) })))
    assert.isTrue(Either.isLeft(decode({ body: 1, messageId: "x".repeat(129) })))
    assert.isTrue(Either.isLeft(decode({ body: 1, messageId: "" })))
    assert.isTrue(Either.isLeft(decode({ body: 1, messageId: "a", applicationProperties: { x: {} } })))
  })
})

describe("message codec", () => {
  it.effect("checks messages before anything is sent", () =>
    Effect.gen(function*() {
      const bad = [
        { body: 1, messageId: "ok", sessionId: "a", partitionKey: "b" },
        { body: 1, messageId: "ok", scheduledEnqueueTime: new Date(Number.NaN) },
        { body: 1n, messageId: "ok" },
        { body: 1, messageId: "ok", applicationProperties: { x: Number.POSITIVE_INFINITY } }
      ] as unknown as ReadonlyArray<Message.OutgoingMessage>
      for (const message of bad) {
        const error = yield* Effect.flip(encodeAll("orders", [{ body: 0, messageId: "first" }, message]))
        assert.strictEqual(error._tag, "InvalidMessage")
        assert.strictEqual(error.index, 1)
      }
    }))

  it.effect("packs batches in order, up to the limit", () =>
    Effect.gen(function*() {
      const messages = yield* encodeAll(
        "orders",
        Array.from({ length: 50 }, (_, i) => ({ body: "z".repeat(1000), messageId: `m-${i}` }))
      )
      const { batches, tooLarge } = packBatches(messages, 10_000)
      assert.isUndefined(tooLarge)
      assert.strictEqual(batches.flat().length, 50)
      assert.deepStrictEqual(batches.flat().map((m) => m.message.messageId), messages.map((m) => m.message.messageId))
      assert.isAbove(batches.length, 5)
      assert.strictEqual(packBatches(messages, 500).tooLarge, 0)
    }))

  it("keeps the library's properties apart from the caller's", () => {
    const split = splitProperties({
      causationId: "c-1",
      "Diagnostic-Id": "00-a-b-01",
      DeadLetterReason: "x",
      tenant: "t",
      when: new Date(5),
      big: 7n
    })
    assert.deepStrictEqual(split, {
      causationId: "c-1",
      traceparent: "00-a-b-01",
      properties: { tenant: "t", when: 5, big: 7 }
    })
    assert.deepStrictEqual(splitProperties({ traceparent: "00-w3c" }).traceparent, "00-w3c")
  })

  it("parses JSON bodies and keeps other bytes as bytes", () => {
    assert.deepStrictEqual(decodeBodyBytes(Buffer.from("{\"a\":1}")), { a: 1 })
    const raw = decodeBodyBytes(Buffer.from([0xff, 0xfe]))
    assert.instanceOf(raw, Uint8Array)
    assert.deepStrictEqual(decodeBodyBytes({ already: "parsed" }), { already: "parsed" })
  })
})

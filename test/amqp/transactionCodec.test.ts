// Frame-level checks of the transaction codec against bytes assembled by hand from the AMQP 1.0
// type system (part 1) and the transaction definitions (part 4), plus round trips.
import { assert, describe, it } from "@effect/vitest"
import { Either, FastCheck, Option } from "effect"
import rhea from "rhea"
import { parseFrames, Performative, performativeCode, performativeField } from "../../src/internal/amqp/amqpFrames.js"
import * as Codec from "../../src/internal/amqp/transactionCodec.js"

const bytes = (...parts: ReadonlyArray<number | string | ReadonlyArray<number> | Uint8Array>): Buffer =>
  Buffer.concat(
    parts.map((p) =>
      typeof p === "number" ? Buffer.from([p]) : typeof p === "string" ? Buffer.from(p, "ascii") : Buffer.from(p)
    )
  )

const right = <A, E>(e: Either.Either<A, E>): A => {
  if (Either.isLeft(e)) assert.fail(`expected success, got ${String(e.left)}`)
  return (e as Either.Right<E, A>).right
}

const leftReason = <A>(e: Either.Either<A, Codec.AmqpCodecError>): string => {
  assert.isTrue(Either.isLeft(e), "expected a failure")
  const error = (e as Either.Left<Codec.AmqpCodecError, A>).left
  assert.strictEqual(error._tag, "AmqpCodecError")
  return error.reason
}

const TXN = [0x01, 0x02, 0x03, 0x04]
// vbin8 of the 4-byte txn-id: a0 04 01 02 03 04
const TXN_VBIN8 = [0xa0, 0x04, ...TXN]
// An amqp-value section header: described (0x00), smallulong (0x53) 0x77.
const AMQP_VALUE = [0x00, 0x53, 0x77]

// The two rhea internals the disposition check reads frames with (not exposed by its typings).
interface RheaFrames {
  readonly disposition: (fields: Record<string, unknown>) => unknown
  readonly amqp_frame: (channel: number, performative: unknown, payload?: Buffer) => unknown
  readonly write_frame: (frame: unknown) => Buffer
  readonly read_frame: (buffer: Buffer) => { readonly performative: { readonly state: unknown } }
}
import { createRequire } from "node:module"
const rheaFrames = createRequire(import.meta.url)("rhea/lib/frames.js") as RheaFrames

describe("declare (0x31)", () => {
  it("encodes a local declare as one amqp-value section: declare(list [null])", () => {
    const expected = bytes(AMQP_VALUE, 0x00, 0x53, 0x31, 0xc0, 0x02, 0x01, 0x40)
    assert.deepStrictEqual(Codec.encodeDeclare(), expected)
    const declare = right(Codec.decodeDeclare(expected))
    assert.strictEqual(declare._tag, "Declare")
    assert.isTrue(Option.isNone(declare.globalId))
  })

  it("decodes the other valid encodings: list0, symbolic descriptor, ulong descriptor, other sections first", () => {
    for (
      const payload of [
        bytes(AMQP_VALUE, 0x00, 0x53, 0x31, 0x45),
        // proton writes control messages with symbolic descriptors
        bytes(AMQP_VALUE, 0x00, 0xa3, 17, "amqp:declare:list", 0xc0, 0x02, 0x01, 0x40),
        bytes(0x00, 0x80, [0, 0, 0, 0, 0, 0, 0, 0x77], 0x00, 0x80, [0, 0, 0, 0, 0, 0, 0, 0x31], 0xd0, [0, 0, 0, 4], [
          0,
          0,
          0,
          0
        ]),
        // a header section (0x70, list0) and a properties section before the body
        bytes(0x00, 0x53, 0x70, 0x45, 0x00, 0x53, 0x73, 0x45, AMQP_VALUE, 0x00, 0x53, 0x31, 0x45)
      ]
    ) {
      const declare = right(Codec.decodeDeclare(payload))
      assert.isTrue(Option.isNone(declare.globalId))
    }
  })

  it("keeps a global id", () => {
    const payload = bytes(AMQP_VALUE, 0x00, 0x53, 0x31, 0xc0, 0x05, 0x01, 0xa1, 0x02, "g1")
    const declare = right(Codec.decodeDeclare(payload))
    assert.deepStrictEqual(declare.globalId, Option.some(Codec.Amqp.string("g1")))
  })

  it("refuses what is not a declare, with a reason", () => {
    assert.include(leftReason(Codec.decodeDeclare(Codec.encodeDischarge(Buffer.from(TXN), false))), "expected declare")
    assert.include(leftReason(Codec.decodeDeclare(bytes(0x00, 0x53, 0x75, 0xa0, 0x00))), "amqp-value")
    assert.include(leftReason(Codec.decodeDeclare(bytes(AMQP_VALUE, 0x00, 0x53, 0x31, 0xc0, 0x05))), "overruns")
    assert.include(leftReason(Codec.decodeDeclare(bytes(AMQP_VALUE, 0xff))), "unknown type constructor 0xff")
    assert.include(leftReason(Codec.decodeDeclare(Buffer.alloc(0))), "amqp-value")
  })
})

describe("discharge (0x32)", () => {
  it("encodes discharge(txn-id, fail) as hand-assembled", () => {
    // list8: size 8 = count(1) + vbin8(6) + true(1); count 2
    const commit = bytes(AMQP_VALUE, 0x00, 0x53, 0x32, 0xc0, 0x08, 0x02, TXN_VBIN8, 0x42)
    const rollback = bytes(AMQP_VALUE, 0x00, 0x53, 0x32, 0xc0, 0x08, 0x02, TXN_VBIN8, 0x41)
    assert.deepStrictEqual(Codec.encodeDischarge(Buffer.from(TXN), false), commit)
    assert.deepStrictEqual(Codec.encodeDischarge(Buffer.from(TXN), true), rollback)
    assert.deepStrictEqual(right(Codec.decodeDischarge(commit)), {
      _tag: "Discharge",
      txnId: Buffer.from(TXN),
      fail: false
    })
    assert.isTrue(right(Codec.decodeDischarge(rollback)).fail)
  })

  it("decodes other encodings: absent fail (commit), 0x56 boolean, vbin32, symbolic descriptor", () => {
    const noFail = bytes(AMQP_VALUE, 0x00, 0x53, 0x32, 0xc0, 0x07, 0x01, TXN_VBIN8)
    assert.isFalse(right(Codec.decodeDischarge(noFail)).fail)
    const wideBoolean = bytes(AMQP_VALUE, 0x00, 0x53, 0x32, 0xc0, 0x09, 0x02, TXN_VBIN8, 0x56, 0x01)
    assert.isTrue(right(Codec.decodeDischarge(wideBoolean)).fail)
    const vbin32 = bytes(
      AMQP_VALUE,
      0x00,
      0xa3,
      19,
      "amqp:discharge:list",
      0xc0,
      0x0b,
      0x02,
      0xb0,
      [0, 0, 0, 4],
      TXN,
      0x40
    )
    assert.deepStrictEqual(right(Codec.decodeDischarge(vbin32)).txnId, Buffer.from(TXN))
    const dispatched = right(Codec.decodeControl(vbin32))
    assert.strictEqual(dispatched._tag, "Discharge")
    assert.strictEqual(right(Codec.decodeControl(Codec.encodeDeclare()))._tag, "Declare")
  })

  it("refuses a discharge without a binary txn-id or with a non-boolean fail", () => {
    const stringId = bytes(AMQP_VALUE, 0x00, 0x53, 0x32, 0xc0, 0x04, 0x01, 0xa1, 0x01, "x")
    assert.include(leftReason(Codec.decodeDischarge(stringId)), "txn-id must be binary")
    const badFail = bytes(AMQP_VALUE, 0x00, 0x53, 0x32, 0xc0, 0x08, 0x02, TXN_VBIN8, 0x43)
    assert.include(leftReason(Codec.decodeDischarge(badFail)), "fail must be a boolean")
    const badBoolean = bytes(AMQP_VALUE, 0x00, 0x53, 0x32, 0xc0, 0x09, 0x02, TXN_VBIN8, 0x56, 0x02)
    assert.include(leftReason(Codec.decodeDischarge(badBoolean)), "boolean byte")
    const lyingSize = bytes(AMQP_VALUE, 0x00, 0x53, 0x32, 0xc0, 0x09, 0x02, TXN_VBIN8, 0x41, 0x40)
    assert.include(leftReason(Codec.decodeDischarge(lyingSize)), "different size")
    assert.include(
      leftReason(Codec.decodeControl(bytes(AMQP_VALUE, 0x00, 0x53, 0x24, 0x45))),
      "only declare or discharge"
    )
  })

  it.prop(
    "round-trips any txn-id and fail flag",
    { txnId: FastCheck.uint8Array({ maxLength: 300 }), fail: FastCheck.boolean() },
    ({ fail, txnId }) => {
      const decoded = right(Codec.decodeDischarge(Codec.encodeDischarge(txnId, fail)))
      assert.deepStrictEqual(decoded.txnId, Buffer.from(txnId))
      assert.strictEqual(decoded.fail, fail)
    }
  )
})

describe("declared (0x33)", () => {
  const expected = bytes(0x00, 0x53, 0x33, 0xc0, 0x07, 0x01, TXN_VBIN8)

  it("encodes declared(txn-id) as hand-assembled, and rhea writes the same bytes", () => {
    assert.deepStrictEqual(Codec.encodeDeclared(Buffer.from(TXN)), expected)
    const writer = new (rhea.types as unknown as { Writer: new() => { write(v: unknown): void; toBuffer(): Buffer } })
      .Writer()
    writer.write(Codec.declared(Buffer.from(TXN)))
    assert.deepStrictEqual(writer.toBuffer(), expected)
  })

  it("decodes from bytes, from a rhea value, and as rhea hands a disposition state over", () => {
    assert.deepStrictEqual(right(Codec.decodeDeclared(expected)).txnId, Buffer.from(TXN))
    assert.deepStrictEqual(right(Codec.decodeDeclared(Codec.declared(Buffer.from(TXN)))).txnId, Buffer.from(TXN))
    // What a client's rhea reads: a disposition frame with that state, parsed by rhea itself.
    const frame = rheaFrames.write_frame(
      rheaFrames.amqp_frame(
        0,
        rheaFrames.disposition({ role: true, first: 0, settled: true, state: Codec.declared(Buffer.from(TXN)) })
      )
    )
    const state = rheaFrames.read_frame(frame).performative.state
    assert.deepStrictEqual(right(Codec.decodeDeclared(state)).txnId, Buffer.from(TXN))
    const symbolic = bytes(0x00, 0xa3, 18, "amqp:declared:list", 0xc0, 0x07, 0x01, TXN_VBIN8)
    assert.deepStrictEqual(right(Codec.decodeDeclared(symbolic)).txnId, Buffer.from(TXN))
  })

  it("reports a rejected declare with its condition", () => {
    const reason = leftReason(
      Codec.decodeDeclared(
        Codec.deliveryState(Either.getOrThrow(Codec.rejected({ condition: "amqp:resource-limit-exceeded" })))
      )
    )
    assert.include(reason, "rejected (amqp:resource-limit-exceeded)")
    assert.include(leftReason(Codec.decodeDeclared("nope")), "expected AMQP bytes")
  })
})

describe("transactional-state (0x34)", () => {
  it("encodes each outcome as hand-assembled", () => {
    // transactional-state(txn, accepted): list8 size 11 = 1 + 6 + accepted(00 53 24 45)
    assert.deepStrictEqual(
      Codec.encodeTransactionalState(Buffer.from(TXN), Codec.accepted),
      bytes(0x00, 0x53, 0x34, 0xc0, 0x0b, 0x02, TXN_VBIN8, 0x00, 0x53, 0x24, 0x45)
    )
    // A send carries the txn-id only.
    assert.deepStrictEqual(
      Codec.encodeTransactionalState(Buffer.from(TXN)),
      bytes(0x00, 0x53, 0x34, 0xc0, 0x07, 0x01, TXN_VBIN8)
    )
    assert.deepStrictEqual(
      Codec.encodeTransactionalState(Buffer.from(TXN), Codec.released),
      bytes(0x00, 0x53, 0x34, 0xc0, 0x0b, 0x02, TXN_VBIN8, 0x00, 0x53, 0x26, 0x45)
    )
    // rejected(error(condition :amqp:transaction:rollback, description "no"))
    const condition = "amqp:transaction:rollback"
    const error = bytes(0x00, 0x53, 0x1d, 0xc0, 0x20, 0x02, 0xa3, 25, condition, 0xa1, 0x02, "no")
    const rejectedOutcome = bytes(0x00, 0x53, 0x25, 0xc0, error.length + 1, 0x01, error)
    assert.deepStrictEqual(
      Codec.encodeTransactionalState(
        Buffer.from(TXN),
        Either.getOrThrow(Codec.rejected({ condition, description: "no" }))
      ),
      bytes(0x00, 0x53, 0x34, 0xc0, 1 + 6 + rejectedOutcome.length, 0x02, TXN_VBIN8, rejectedOutcome)
    )
    // modified(delivery-failed true, undeliverable-here false, {:x-opt-reason: "r"})
    const annotations = bytes(0xc1, 0x12, 0x02, 0xa3, 0x0c, "x-opt-reason", 0xa1, 0x01, "r")
    const modifiedOutcome = bytes(0x00, 0x53, 0x27, 0xc0, 3 + annotations.length, 0x03, 0x41, 0x42, annotations)
    assert.deepStrictEqual(
      Codec.encodeTransactionalState(
        Buffer.from(TXN),
        Either.getOrThrow(Codec.modified({
          deliveryFailed: true,
          undeliverableHere: false,
          messageAnnotations: [[Codec.Amqp.symbol("x-opt-reason"), Codec.Amqp.string("r")]]
        }))
      ),
      bytes(0x00, 0x53, 0x34, 0xc0, 1 + 6 + modifiedOutcome.length, 0x02, TXN_VBIN8, modifiedOutcome)
    )
  })

  it("decodes as rhea hands it over on a disposition (raw described value)", () => {
    const state = Codec.transactionalState(Buffer.from(TXN), Codec.accepted)
    const frame = rheaFrames.write_frame(
      rheaFrames.amqp_frame(0, rheaFrames.disposition({ role: true, first: 7, settled: true, state }))
    )
    // Our own frame reader sees a disposition whose state field is transactional-state.
    const parsed = right(parseFrames(frame)).frames[0]
    assert.strictEqual(performativeCode(parsed), Performative.disposition)
    assert.deepStrictEqual(
      performativeField(parsed, 4),
      right(Codec.decodeValue(bytes(0x00, 0x53, 0x34, 0xc0, 0x0b, 0x02, TXN_VBIN8, 0x00, 0x53, 0x24, 0x45)))
    )
    // And rhea's reader followed by our decoder gives it back.
    const decoded = right(Codec.decodeTransactionalState(rheaFrames.read_frame(frame).performative.state))
    assert.deepStrictEqual(decoded, { _tag: "TransactionalState", txnId: Buffer.from(TXN), outcome: Codec.accepted })
  })

  it("reads the shape rhea leaves for a transfer's state", () => {
    const acceptedTyped = Codec.deliveryState(Codec.accepted)
    assert.deepStrictEqual(
      right(Codec.decodeTransferState([Buffer.from(TXN)])),
      Option.some({ _tag: "TransactionalState" as const, txnId: Buffer.from(TXN) })
    )
    assert.deepStrictEqual(
      right(Codec.decodeTransferState([Buffer.from(TXN), acceptedTyped])),
      Option.some({ _tag: "TransactionalState" as const, txnId: Buffer.from(TXN), outcome: Codec.accepted })
    )
    assert.isTrue(Option.isNone(right(Codec.decodeTransferState(undefined))))
    assert.isTrue(Option.isNone(right(Codec.decodeTransferState(null))))
    // accepted / released with their descriptor dropped: not transactional
    assert.isTrue(Option.isNone(right(Codec.decodeTransferState([]))))
    // received(0, 0) with its descriptor dropped
    assert.isTrue(Option.isNone(right(Codec.decodeTransferState([0, 0]))))
    // a raw described value and bytes are read too
    assert.isTrue(Option.isSome(right(Codec.decodeTransferState(Codec.transactionalState(Buffer.from(TXN))))))
    assert.isTrue(Option.isNone(right(Codec.decodeTransferState(Codec.deliveryState(Codec.accepted)))))
    assert.include(leftReason(Codec.decodeTransferState("state")), "expected AMQP bytes")
    assert.include(
      leftReason(Codec.decodeTransferState([Buffer.from(TXN), Codec.declared(Buffer.from(TXN))])),
      "must be an outcome"
    )
  })

  it("refuses a transactional-state whose outcome is not an outcome, or with no txn-id", () => {
    const declaredInside = bytes(
      0x00,
      0x53,
      0x34,
      0xc0,
      0x13,
      0x02,
      TXN_VBIN8,
      0x00,
      0x53,
      0x33,
      0xc0,
      0x07,
      0x01,
      TXN_VBIN8
    )
    assert.include(leftReason(Codec.decodeTransactionalState(declaredInside)), "must be accepted, rejected")
    assert.include(leftReason(Codec.decodeTransactionalState(bytes(0x00, 0x53, 0x34, 0x45))), "txn-id must be binary")
    assert.include(leftReason(Codec.decodeTransactionalState(Codec.encodeDeclared(Buffer.from(TXN)))), "got declared")
  })

  const outcomeArb: FastCheck.Arbitrary<Codec.Outcome | undefined> = FastCheck.oneof(
    FastCheck.constant(undefined),
    FastCheck.constant(Codec.accepted),
    FastCheck.constant(Codec.released),
    FastCheck.option(
      FastCheck.record({
        condition: FastCheck.constantFrom("amqp:transaction:unknown-id", "amqp:transaction:rollback", "x:y"),
        description: FastCheck.string()
      }),
      { nil: undefined }
    ).map((error) => Either.getOrThrow(Codec.rejected(error))),
    FastCheck.record({ deliveryFailed: FastCheck.boolean(), undeliverableHere: FastCheck.boolean() }, {
      requiredKeys: []
    }).map((fields) => Either.getOrThrow(Codec.modified(fields)))
  )

  it.prop(
    "round-trips txn-ids and outcomes through bytes and through rhea's reader and writer",
    { txnId: FastCheck.uint8Array({ minLength: 1, maxLength: 64 }), outcome: outcomeArb },
    ({ outcome, txnId }) => {
      const expected: Codec.TransactionalState = outcome === undefined
        ? { _tag: "TransactionalState", txnId: Buffer.from(txnId) }
        : { _tag: "TransactionalState", txnId: Buffer.from(txnId), outcome }
      assert.deepStrictEqual(
        right(Codec.decodeTransactionalState(Codec.encodeTransactionalState(txnId, outcome))),
        expected
      )
      assert.deepStrictEqual(right(Codec.decodeTransactionalState(Codec.transactionalState(txnId, outcome))), expected)
    }
  )
})

describe("coordinator target (0x30)", () => {
  it("encodes the capabilities as an array of symbols", () => {
    const local = "amqp:local-transactions"
    const multi = "amqp:multi-txns-per-ssn"
    // array8: size = count(1) + constructor(1) + (1 + 23) + (1 + 23) = 50
    const array = bytes(0xe0, 50, 0x02, 0xa3, local.length, local, multi.length, multi)
    assert.deepStrictEqual(
      Codec.encodeCoordinator([local, multi]),
      bytes(0x00, 0x53, 0x30, 0xc0, array.length + 1, 0x01, array)
    )
    assert.deepStrictEqual(right(Codec.decodeCoordinator(Codec.coordinatorTarget([local, multi]))).capabilities, [
      local,
      multi
    ])
  })

  it("reads a single-symbol capability, none, and tells coordinators from other targets", () => {
    const single = bytes(0x00, 0x53, 0x30, 0xc0, 0x1a, 0x01, 0xa3, 23, "amqp:local-transactions")
    assert.deepStrictEqual(right(Codec.decodeCoordinator(single)).capabilities, ["amqp:local-transactions"])
    assert.deepStrictEqual(right(Codec.decodeCoordinator(bytes(0x00, 0x53, 0x30, 0x45))).capabilities, [])
    assert.isTrue(Codec.isCoordinatorTarget(single))
    assert.isTrue(Codec.isCoordinatorTarget(Codec.coordinatorTarget()))
    // an ordinary target (0x29) with an address
    assert.isFalse(Codec.isCoordinatorTarget(bytes(0x00, 0x53, 0x29, 0xc0, 0x04, 0x01, 0xa1, 0x01, "q")))
    assert.isFalse(Codec.isCoordinatorTarget(undefined))
    assert.isFalse(Codec.isCoordinatorTarget({ address: "q" }))
  })
})

describe("AMQP values", () => {
  it("round-trips every encodable type and picks compact encodings", () => {
    const { Amqp } = Codec
    const values: ReadonlyArray<Codec.AmqpValue> = [
      Amqp.null,
      Amqp.boolean(true),
      Amqp.uint(0),
      Amqp.uint(255),
      Amqp.uint(70000),
      Amqp.ulong(0),
      Amqp.ulong(200),
      Amqp.ulong(2n ** 63n),
      { _tag: "Int", value: -5 },
      { _tag: "Int", value: 100000 },
      { _tag: "Long", value: -(2n ** 40n) },
      { _tag: "Double", value: 1.5 },
      { _tag: "Timestamp", value: 1700000000000n },
      { _tag: "Uuid", value: Buffer.alloc(16, 7) },
      Amqp.string("é".repeat(200)),
      Amqp.binary(Buffer.alloc(300, 1)),
      Amqp.list([Amqp.symbol("a"), Amqp.list([])]),
      Amqp.map([[Amqp.symbol("k"), Amqp.uint(1)]]),
      Amqp.array([Amqp.symbol("a"), Amqp.symbol("b".repeat(300))]),
      Amqp.array([Amqp.uint(1), Amqp.uint(2)]),
      Amqp.described("x:y", Amqp.list(Array.from({ length: 300 }, () => Amqp.null)))
    ]
    for (const v of values) {
      assert.deepStrictEqual(right(Codec.decodeValue(right(Codec.encodeValue(v)))), v)
    }
    assert.deepStrictEqual(right(Codec.encodeValue(Amqp.ulong(200))), bytes(0x53, 200))
    assert.deepStrictEqual(right(Codec.encodeValue(Amqp.list([]))), bytes(0x45))
  })

  it("writes back every array the decoder can produce: empty, described, of compound values", () => {
    const { Amqp } = Codec
    const arrays: ReadonlyArray<Codec.AmqpValue> = [
      Amqp.array([]),
      Amqp.array([Amqp.described(0x24, Amqp.list([])), Amqp.described(0x24, Amqp.list([Amqp.null]))]),
      Amqp.array([Amqp.list([Amqp.uint(1)]), Amqp.list([])]),
      Amqp.array([Amqp.map([[Amqp.symbol("k"), Amqp.boolean(false)]])]),
      Amqp.array([Amqp.array([Amqp.symbol("x")]), Amqp.array([Amqp.symbol("y")])]),
      Amqp.array([Amqp.boolean(true), Amqp.boolean(false)]),
      Amqp.array([{ _tag: "Long", value: 1n }, { _tag: "Long", value: -(2n ** 60n) }])
    ]
    for (const v of arrays) {
      assert.deepStrictEqual(right(Codec.decodeValue(right(Codec.encodeValue(v)))), v)
    }
    // array8 of 0 elements with the null constructor
    assert.deepStrictEqual(right(Codec.encodeValue(Amqp.array([]))), bytes(0xe0, 0x02, 0x00, 0x40))
  })

  it("refuses outcomes whose caller-supplied parts cannot be encoded", () => {
    assert.include(leftReason(Codec.rejected({ condition: "amqp:é" })), "not ASCII")
    assert.include(
      leftReason(Codec.modified({ messageAnnotations: [[Codec.Amqp.symbol("k"), Codec.Amqp.uint(-1)]] })),
      "not a valid uint"
    )
    assert.isTrue(Either.isRight(Codec.rejected()))
    assert.isTrue(Either.isRight(Codec.modified()))
  })

  it("reports unencodable values as failures", () => {
    assert.isTrue(Either.isLeft(Codec.encodeValue(Codec.Amqp.array([Codec.Amqp.uint(1), Codec.Amqp.symbol("a")]))))
    assert.isTrue(Either.isLeft(Codec.encodeValue(Codec.Amqp.symbol("ü"))))
    assert.isTrue(Either.isLeft(Codec.encodeValue(Codec.Amqp.uint(-1))))
    assert.isTrue(Either.isLeft(Codec.decodeValue(bytes(0x40, 0x40))))
  })
})

// The rhea extension for transactional transfers: what rhea actually writes on the socket, and the
// start-up self-check, including how it fails when the extension no longer fits rhea.
import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Option, Queue } from "effect"
import rhea from "rhea"
import type { Sender, Session } from "rhea"
import {
  type AmqpFrame,
  parseFrames,
  Performative,
  performativeCode,
  performativeField
} from "../../src/internal/amqp/amqpFrames.js"
import {
  attachCoordinator,
  enableTransactionalTransfers,
  sendTransactional,
  TransactionSupportError,
  verifyTransactionSupport
} from "../../src/internal/amqp/transactionalTransfer.js"
import * as Codec from "../../src/internal/amqp/transactionCodec.js"
import { connectClient, nextEvent, startServer } from "./rheaTestKit.js"

const framesOf = (written: ReadonlyArray<Buffer>): ReadonlyArray<AmqpFrame> => {
  const parsed = parseFrames(Buffer.concat(written))
  if (Either.isLeft(parsed)) return assert.fail(parsed.left.reason)
  return parsed.right.frames
}

const encoded = (value: Codec.AmqpValue | undefined): Buffer | undefined => {
  if (value === undefined) return undefined
  return Either.getOrThrow(Codec.encodeValue(value))
}

const openSender = (session: Session, address: string) =>
  Effect.gen(function*() {
    const sender = session.attach_sender({ target: { address } })
    yield* nextEvent(sender, "sendable")
    return sender
  })

const failureOf = <A>(effect: Effect.Effect<A, TransactionSupportError>) =>
  Effect.map(Effect.flip(effect), (error) => {
    assert.instanceOf(error, TransactionSupportError)
    assert.include(error.message, "rhea 3.0.5")
    return error.reason
  })

describe("transactional transfer on the wire", () => {
  it.scoped("a transactional send carries transactional-state(txn-id) in the transfer's state field; a plain one none", () =>
    Effect.gen(function*() {
      const server = yield* startServer()
      const client = yield* connectClient(server.port)
      const sender: Sender = yield* openSender(client.session, "queue-a")
      const txnId = Buffer.from([0xca, 0xfe, 0x00, 0x01])
      const txnPayload = Buffer.from([0x00, 0x53, 0x77, 0xa1, 0x02, 0x68, 0x69]) // amqp-value "hi"
      const plainPayload = Buffer.from([0x00, 0x53, 0x77, 0xa1, 0x02, 0x68, 0x6f]) // amqp-value "ho"

      assert.isTrue(Either.isRight(sendTransactional(sender, txnPayload, txnId)))
      sender.send(plainPayload, undefined, 0)
      const first = yield* Queue.take(server.transfers)
      const second = yield* Queue.take(server.transfers)

      const transfers = framesOf(client.written).filter((f) => performativeCode(f) === Performative.transfer)
      assert.strictEqual(transfers.length, 2)
      const [txnFrame, plainFrame] = transfers
      assert.deepStrictEqual(txnFrame.payload, txnPayload)
      assert.deepStrictEqual(plainFrame.payload, plainPayload)
      // field 7 (state) = transactional-state: 00 53 34, list8 of 1 field: vbin8 of 4 bytes
      assert.deepStrictEqual(
        encoded(performativeField(txnFrame, 7)),
        Buffer.from([0x00, 0x53, 0x34, 0xc0, 0x07, 0x01, 0xa0, 0x04, 0xca, 0xfe, 0x00, 0x01])
      )
      assert.isUndefined(performativeField(plainFrame, 7))
      // the other fields rhea wrote are intact: handle 0... delivery-ids 0 and 1, not settled
      assert.deepStrictEqual(performativeField(txnFrame, 1), Codec.Amqp.uint(0))
      assert.deepStrictEqual(performativeField(plainFrame, 1), Codec.Amqp.uint(1))
      assert.deepStrictEqual(performativeField(txnFrame, 4), Codec.Amqp.boolean(false))

      // and the server reads the same from rhea's parse of the transfer
      assert.strictEqual(first.address, "queue-a")
      assert.deepStrictEqual(Option.map(first.txn, (t) => t.txnId), Option.some(txnId))
      assert.isTrue(Option.isNone(second.txn))
    }))

  it.scoped("every transfer frame of a multi-frame transactional delivery carries the state", () =>
    Effect.gen(function*() {
      const server = yield* startServer({ maxFrameSize: 512 })
      const client = yield* connectClient(server.port)
      const sender = yield* openSender(client.session, "queue-big")
      const txnId = Buffer.from("big-transaction")
      const body = Buffer.alloc(2000, 0x61)
      const payload = Buffer.concat([Buffer.from([0x00, 0x53, 0x75, 0xb0, 0x00, 0x00, 0x07, 0xd0]), body]) // data section
      assert.isTrue(Either.isRight(sendTransactional(sender, payload, txnId)))
      const received = yield* Queue.take(server.transfers)
      assert.deepStrictEqual(Option.map(received.txn, (t) => t.txnId), Option.some(txnId))
      assert.deepStrictEqual(received.payload, Option.some(payload))

      const transfers = framesOf(client.written).filter((f) => performativeCode(f) === Performative.transfer)
      assert.isAbove(transfers.length, 3)
      for (const frame of transfers) {
        const state = Codec.decodeTransactionalState(encoded(performativeField(frame, 7)))
        assert.deepStrictEqual(Either.map(state, (s) => s.txnId), Either.right(txnId))
      }
      assert.deepStrictEqual(Buffer.concat(transfers.map((f) => f.payload)), payload)
    }))

  it.scoped("the coordinator sender's attach carries the coordinator target, written before the attach", () =>
    Effect.gen(function*() {
      const server = yield* startServer()
      const client = yield* connectClient(server.port)
      const sender = Either.getOrThrow(
        attachCoordinator(client.session, {
          name: "txn-controller",
          capabilities: [Codec.TxnCapability.localTransactions, Codec.TxnCapability.multiTxnsPerSsn]
        })
      )
      yield* nextEvent(sender, "sender_open")
      const attached = yield* Queue.take(server.coordinatorAttached)
      assert.deepStrictEqual(attached.capabilities, ["amqp:local-transactions", "amqp:multi-txns-per-ssn"])

      const attach = framesOf(client.written).find((f) => performativeCode(f) === Performative.attach)
      assert.isDefined(attach)
      const local = "amqp:local-transactions"
      const multi = "amqp:multi-txns-per-ssn"
      const caps = Buffer.concat([
        Buffer.from([0xe0, 50, 0x02, 0xa3, local.length]),
        Buffer.from(local),
        Buffer.from([multi.length]),
        Buffer.from(multi)
      ])
      assert.deepStrictEqual(
        encoded(performativeField(attach!, 6)),
        Buffer.concat([Buffer.from([0x00, 0x53, 0x30, 0xc0, caps.length + 1, 0x01]), caps])
      )
      // role sender (false), a source named after the link
      assert.deepStrictEqual(performativeField(attach!, 2), Codec.Amqp.boolean(false))
      const name = "txn-controller"
      assert.deepStrictEqual(
        encoded(performativeField(attach!, 5)),
        Buffer.concat([
          Buffer.from([0x00, 0x53, 0x28, 0xc0, name.length + 3, 0x01, 0xa1, name.length]),
          Buffer.from(name)
        ])
      )
      // the coordinator answered with a coordinator target too
      assert.isTrue(Codec.isCoordinatorTarget(sender.target))
    }))
})

describe("start-up self-check", () => {
  it.live("passes with the installed rhea", () => verifyTransactionSupport())

  it.live("fails when the hook cannot reach the transfer frames", () =>
    Effect.gen(function*() {
      const reason = yield* failureOf(
        verifyTransactionSupport({
          hooks: {
            attachCoordinator,
            // What a rhea that writes transfers some other way looks like: the send goes out plain.
            sendTransactional: (sender, body) => Either.right(sender.send(body as Buffer, undefined, 0))
          }
        })
      )
      assert.include(reason, "without the transactional-state")
    }))

  it.live("fails when the coordinator target does not reach the attach", () =>
    Effect.gen(function*() {
      const reason = yield* failureOf(
        verifyTransactionSupport({
          hooks: {
            sendTransactional,
            // What a rhea that rewrites the target option looks like: a plain target.
            attachCoordinator: (session) => Either.right(session.attach_sender({ target: { address: "coordinator" } }))
          }
        })
      )
      assert.include(reason, "did not write the coordinator target")
    }))

  it.live("fails when rhea's outgoing deliveries are no longer where the hook looks", () =>
    Effect.gen(function*() {
      const probe = rhea.create_container({ id: "probe" }).create_connection({ reconnect: false } as never)
      const session = probe.create_session() as unknown as { outgoing: { deliveries: object } }
      const bufferProto = Object.getPrototypeOf(session.outgoing.deliveries) as Record<string, unknown>
      const byId = bufferProto.by_id
      const reason = yield* Effect.acquireUseRelease(
        Effect.sync(() => {
          delete bufferProto.by_id
        }),
        () =>
          Effect.gen(function*() {
            const direct = enableTransactionalTransfers(probe.create_session())
            assert.isTrue(Either.isLeft(direct))
            return yield* failureOf(verifyTransactionSupport())
          }),
        () =>
          Effect.sync(() => {
            bufferProto.by_id = byId
          })
      )
      assert.include(reason, "outgoing.deliveries.by_id")
    }))

  it.live("fails when a rhea function the decoding patches wrap is gone", () =>
    Effect.gen(function*() {
      const message = rhea.message as unknown as Record<string, unknown>
      const original = message.unwrap_outcome
      const reason = yield* Effect.acquireUseRelease(
        Effect.sync(() => {
          message.unwrap_outcome = undefined
        }),
        () => failureOf(verifyTransactionSupport()),
        () =>
          Effect.sync(() => {
            message.unwrap_outcome = original
          })
      )
      assert.include(reason, "message.unwrap_outcome is no longer a function")
    }))

  it("refuses sessions without the shape the hook relies on", () => {
    const reasonOf = (session: unknown) => {
      const result = enableTransactionalTransfers(session)
      assert.isTrue(Either.isLeft(result))
      return (result as Either.Left<TransactionSupportError, void>).left.reason
    }
    assert.include(reasonOf(undefined), "session object")
    assert.include(reasonOf({}), "output(frame, payload)")
    assert.include(reasonOf({ output: () => {}, outgoing: {} }), "outgoing.deliveries.by_id")
    assert.include(
      reasonOf({ output: () => {}, outgoing: { deliveries: {} } }),
      "outgoing.deliveries.by_id"
    )
    const sessionLike = { output: () => {}, outgoing: { deliveries: { by_id: () => undefined } } }
    assert.isTrue(Either.isRight(enableTransactionalTransfers(sessionLike)))
    // idempotent
    const hooked = sessionLike.output
    assert.isTrue(Either.isRight(enableTransactionalTransfers(sessionLike)))
    assert.strictEqual(sessionLike.output, hooked)
    const noCreate = attachCoordinator(sessionLike as never)
    assert.isTrue(Either.isLeft(noCreate))
  })
})

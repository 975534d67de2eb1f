// A whole transaction between two rhea containers on 127.0.0.1, with the test coordinator playing
// the broker: attach the coordinator, declare, settle a received message and send inside the
// transaction, then discharge.
import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Option, Queue } from "effect"
import type { Delivery } from "rhea"
import { parseFrames, Performative, performativeCode, performativeField } from "../../src/internal/amqp/amqpFrames.js"
import {
  attachCoordinator,
  sendTransactional,
  TransactionEvents
} from "../../src/internal/amqp/transactionalTransfer.js"
import * as Codec from "../../src/internal/amqp/transactionCodec.js"
import { connectClient, nextEvent, startServer } from "./rheaTestKit.js"

const getRight = <A, E>(e: Either.Either<A, E>): A => {
  if (Either.isLeft(e)) return assert.fail(`expected success, got ${String(e.left)}`)
  return e.right
}

describe("transaction round trip over a loopback connection", () => {
  it.scoped("declare, settle a received message, send, and commit, all seen by the coordinator", () =>
    Effect.gen(function*() {
      const server = yield* startServer({ outbox: ["to be completed"] })
      const client = yield* connectClient(server.port)

      // 1. coordinator link
      const coordinator = getRight(attachCoordinator(client.session))
      yield* nextEvent(coordinator, "sender_open")
      assert.deepStrictEqual((yield* Queue.take(server.coordinatorAttached)).capabilities, ["amqp:local-transactions"])

      // 2. declare: the answer is raised as a "declared" event with a raw described state
      const declare: Delivery = coordinator.send(Codec.encodeDeclare(), undefined, 0)
      const declaredEvent = yield* nextEvent(coordinator, TransactionEvents.declared, (c) => c.delivery === declare)
      const txnId = getRight(Codec.decodeDeclared(declaredEvent.delivery?.remote_state)).txnId
      assert.deepStrictEqual(txnId, yield* Queue.take(server.declared))

      // 3. settle a received message inside the transaction
      const receiver = client.session.attach_receiver({ source: { address: "inbox" }, autoaccept: false })
      const received = yield* nextEvent(receiver, "message")
      assert.strictEqual(received.message?.body, "to be completed")
      received.delivery?.update(true, Codec.transactionalState(txnId, Codec.accepted))
      const settlement = yield* Queue.take(server.settlements)
      assert.strictEqual(settlement.event, TransactionEvents.transactionalState)
      assert.isTrue(settlement.settled)
      assert.deepStrictEqual(
        settlement.state,
        Either.right({ _tag: "TransactionalState" as const, txnId, outcome: Codec.accepted })
      )

      // 4. send inside the transaction (a rhea message, encoded by rhea)
      const sender = client.session.attach_sender({ target: { address: "outbox" } })
      yield* nextEvent(sender, "sendable")
      const sent = getRight(sendTransactional(sender, { body: "enlisted", message_id: "m-1" }, txnId))
      const transfer = yield* Queue.take(server.transfers)
      assert.strictEqual(transfer.address, "outbox")
      assert.deepStrictEqual(Option.map(transfer.txn, (t) => t.txnId), Option.some(txnId))
      const answered = yield* nextEvent(sender, TransactionEvents.transactionalState, (c) => c.delivery === sent)
      assert.deepStrictEqual(
        Codec.decodeTransactionalState(answered.delivery?.remote_state),
        Either.right({ _tag: "TransactionalState" as const, txnId, outcome: Codec.accepted })
      )

      // 5. commit
      const discharge = coordinator.send(Codec.encodeDischarge(txnId, false), undefined, 0)
      yield* nextEvent(coordinator, "accepted", (c) => c.delivery === discharge)
      assert.deepStrictEqual(yield* Queue.take(server.discharges), { _tag: "Discharge", txnId, fail: false })
      assert.strictEqual(server.openTransactions.size, 0)

      // What the client wrote: the settlement is a disposition (role receiver) whose state is
      // transactional-state(txn-id, accepted), byte for byte.
      const parsed = getRight(parseFrames(Buffer.concat(client.written)))
      const dispositions = parsed.frames.filter((f) =>
        performativeCode(f) === Performative.disposition &&
        Option.isSome(Option.fromNullable(performativeField(f, 4)))
      )
      const ours = dispositions.find((f) => {
        const state = performativeField(f, 4)
        return state !== undefined &&
          Either.isRight(Codec.decodeTransactionalState(Codec.encodeValue(state).pipe(Either.getOrThrow)))
      })
      assert.isDefined(ours)
      assert.deepStrictEqual(performativeField(ours!, 0), Codec.Amqp.boolean(true))
      assert.deepStrictEqual(performativeField(ours!, 3), Codec.Amqp.boolean(true))
      const vbin = Buffer.concat([Buffer.from([0xa0, txnId.length]), txnId])
      assert.deepStrictEqual(
        Either.getOrThrow(Codec.encodeValue(performativeField(ours!, 4)!)),
        Buffer.concat([
          Buffer.from([0x00, 0x53, 0x34, 0xc0, 1 + vbin.length + 4, 0x02]),
          vbin,
          Buffer.from([0x00, 0x53, 0x24, 0x45])
        ])
      )
      // and the control messages went out as amqp-value payloads of declare and discharge
      const controls = parsed.frames.filter((f) =>
        performativeCode(f) === Performative.transfer && Either.isRight(Codec.decodeControl(f.payload))
      )
      assert.deepStrictEqual(controls.map((f) => f.payload), [
        Codec.encodeDeclare(),
        Codec.encodeDischarge(txnId, false)
      ])
    }))

  it.scoped("an unsettled transactional disposition still reaches the server as an event", () =>
    Effect.gen(function*() {
      const server = yield* startServer({ outbox: ["first", "second"] })
      const client = yield* connectClient(server.port)
      const txnId = Buffer.from("txn-unsettled")
      const receiver = client.session.attach_receiver({ source: { address: "inbox" }, autoaccept: false })
      const first = yield* nextEvent(receiver, "message")
      first.delivery?.update(false, Codec.transactionalState(txnId, Codec.released))
      const settlement = yield* Queue.take(server.settlements)
      assert.strictEqual(settlement.event, TransactionEvents.transactionalState)
      assert.isFalse(settlement.settled)
      assert.deepStrictEqual(
        settlement.state,
        Either.right({ _tag: "TransactionalState" as const, txnId, outcome: Codec.released })
      )
    }))

  it.scoped("a rollback and an unknown transaction are answered as the spec says", () =>
    Effect.gen(function*() {
      const server = yield* startServer()
      const client = yield* connectClient(server.port)
      const coordinator = getRight(attachCoordinator(client.session))
      yield* nextEvent(coordinator, "sender_open")
      const declare = coordinator.send(Codec.encodeDeclare(), undefined, 0)
      const event = yield* nextEvent(coordinator, TransactionEvents.declared, (c) => c.delivery === declare)
      const txnId = getRight(Codec.decodeDeclared(event.delivery?.remote_state)).txnId

      const rollback = coordinator.send(Codec.encodeDischarge(txnId, true), undefined, 0)
      yield* nextEvent(coordinator, "accepted", (c) => c.delivery === rollback)
      assert.isTrue((yield* Queue.take(server.discharges)).fail)

      const again = coordinator.send(Codec.encodeDischarge(txnId, false), undefined, 0)
      const rejected = yield* nextEvent(coordinator, "rejected", (c) => c.delivery === again)
      const state = getRight(Codec.decodeDeliveryState(rejected.delivery?.remote_state))
      assert.strictEqual(state._tag, "Rejected")
      assert.strictEqual(state._tag === "Rejected" ? state.error?.condition : undefined, "amqp:transaction:unknown-id")
    }))
})

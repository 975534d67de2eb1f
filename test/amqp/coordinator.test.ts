// The client-side coordinator helper against the test coordinator on 127.0.0.1.
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Either, Fiber, Option, Queue, TestClock } from "effect"
import * as Coordinator from "../../src/internal/amqp/coordinator.js"
import { sendTransactional } from "../../src/internal/amqp/transactionalTransfer.js"
import { TransactionErrorCondition } from "../../src/internal/amqp/transactionCodec.js"
import { connectClient, nextEvent, startServer } from "./rheaTestKit.js"

const setup = Effect.gen(function*() {
  const server = yield* startServer()
  const client = yield* connectClient(server.port)
  const coordinator = yield* Coordinator.make(client.session, { timeout: Duration.seconds(5) })
  return { server, client, coordinator }
})

describe("Coordinator", () => {
  it.scoped("declares, enlists a send, and commits", () =>
    Effect.gen(function*() {
      const { client, coordinator, server } = yield* setup
      const txnId = yield* coordinator.declare
      assert.deepStrictEqual(txnId, yield* Queue.take(server.declared))

      const sender = client.session.attach_sender({ target: { address: "orders" } })
      yield* nextEvent(sender, "sendable")
      assert.isTrue(Either.isRight(sendTransactional(sender, { body: "order placed" }, txnId)))
      const transfer = yield* Queue.take(server.transfers)
      assert.deepStrictEqual(Option.map(transfer.txn, (t) => t.txnId), Option.some(txnId))

      yield* coordinator.discharge(txnId, false)
      assert.deepStrictEqual(yield* Queue.take(server.discharges), { _tag: "Discharge", txnId, fail: false })
    }))

  it.scoped("rolls back, and then knows the transaction no more", () =>
    Effect.gen(function*() {
      const { coordinator, server } = yield* setup
      const txnId = yield* coordinator.declare
      yield* coordinator.discharge(txnId, true)
      assert.isTrue((yield* Queue.take(server.discharges)).fail)
      const error = yield* Effect.flip(coordinator.discharge(txnId, false))
      assert.strictEqual(error._tag, "TransactionUnknownId")
      assert.include(error.message, txnId.toString("hex"))
    }))

  it.scoped("maps the transaction error conditions of a rejected discharge to typed errors", () =>
    Effect.gen(function*() {
      const { coordinator, server } = yield* setup
      const cases = [
        [TransactionErrorCondition.rollback, "TransactionRolledBack"],
        [TransactionErrorCondition.timeout, "TransactionTimedOut"],
        ["amqp:internal-error", "TransactionRejected"]
      ] as const
      for (const [condition, tag] of cases) {
        const txnId = yield* coordinator.declare
        server.behaviour.discharge = condition
        const error = yield* Effect.flip(coordinator.discharge(txnId, false))
        assert.strictEqual(error._tag, tag)
        if (error._tag === "TransactionRejected") {
          assert.strictEqual(error.condition, "amqp:internal-error")
          assert.strictEqual(error.operation, "discharge")
        }
        server.behaviour.discharge = "accept"
      }
    }))

  it.scoped("reports a refused declare with its condition", () =>
    Effect.gen(function*() {
      const { coordinator, server } = yield* setup
      server.behaviour.declare = "reject"
      const error = yield* Effect.flip(coordinator.declare)
      assert.strictEqual(error._tag, "TransactionRejected")
      assert.include(error.message, "amqp:resource-limit-exceeded")
      assert.include(error.message, "too many transactions")
    }))

  it.scoped("times out when the coordinator does not answer", () =>
    Effect.gen(function*() {
      const { coordinator, server } = yield* setup
      server.behaviour.declare = "ignore"
      const fiber = yield* Effect.fork(Effect.flip(coordinator.declare))
      yield* Queue.take(server.declaresIgnored)
      yield* TestClock.adjust(Duration.seconds(5))
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error._tag, "CoordinatorTimeout")
      assert.include(error.message, "declare within 5000 ms")

      const txnId = yield* Effect.gen(function*() {
        server.behaviour.declare = "declare"
        return yield* coordinator.declare
      })
      server.behaviour.discharge = "ignore"
      const discharge = yield* Effect.fork(Effect.flip(coordinator.discharge(txnId, false)))
      yield* Queue.take(server.discharges)
      yield* TestClock.adjust(Duration.seconds(5))
      const dischargeError = yield* Fiber.join(discharge)
      assert.strictEqual(dischargeError._tag, "CoordinatorTimeout")
      assert.include(dischargeError.message, "outcome is unknown")
    }))

  it.scoped("fails pending and later operations when the coordinator link is closed", () =>
    Effect.gen(function*() {
      const { coordinator, server } = yield* setup
      server.behaviour.declare = "ignore"
      const pending = yield* Effect.fork(Effect.flip(coordinator.declare))
      yield* Queue.take(server.declaresIgnored)
      server.dropCoordinators()
      const error = yield* Fiber.join(pending)
      assert.strictEqual(error._tag, "CoordinatorUnavailable")
      assert.include(error.message, "amqp:internal-error")
      const later = yield* Effect.flip(coordinator.declare)
      assert.strictEqual(later._tag, "CoordinatorUnavailable")
    }))
})

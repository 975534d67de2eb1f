import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Layer, Option, Schedule, TestClock } from "effect"
import type * as Message from "../src/Message.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import * as MessageSender from "../src/MessageSender.js"
import { ServerBusy, Unauthorized } from "../src/ServiceBusError.js"
import type { Entities } from "./conformance/MessagingSuite.js"
import { MessagingFaults, messagingSuite } from "./conformance/MessagingSuite.js"

const memory = (entities: Entities) => {
  const broker = MessageSender.layerMemory({
    queues: entities.queues ?? [],
    topics: entities.topics ?? []
  })
  const faults = Layer.effect(
    MessagingFaults,
    Effect.map(MessageSender.MemoryBroker, (broker) => ({
      refuseNextSends: (count: number) =>
        broker.failNext("send", new ServerBusy({ operation: "send", reason: "injected" }), count)
    }))
  )
  return Layer.mergeAll(MessageReceiver.layerMemory, faults).pipe(Layer.provideMerge(broker))
}

messagingSuite("Messaging (memory)", memory)

// What only the memory broker can show: time under `TestClock`, and its inspection helpers.
describe("Messaging (memory, TestClock)", () => {
  const layer = (options: MessageSender.MemoryOptions) =>
    MessageReceiver.layerMemory.pipe(Layer.provideMerge(MessageSender.layerMemory(options)))
  const plain = (messageId: string): Message.OutgoingMessage => ({ body: { id: messageId }, messageId })
  const orders = MessageReceiver.queue("orders")

  it.scoped("a lock expires after the entity's lock duration, not before", () =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const receiver = yield* MessageReceiver.MessageReceiver
      yield* sender.send("orders", plain("m"))
      const [first] = yield* receiver.receive(orders, { maxWaitTime: 0, lockRenewal: false })
      yield* TestClock.adjust("29 seconds")
      assert.strictEqual((yield* receiver.receive(orders, { maxWaitTime: 0 })).length, 0)
      yield* TestClock.adjust("1 second")
      const [second] = yield* receiver.receive(orders, { maxWaitTime: 0 })
      assert.strictEqual(second.message.deliveryCount, 2)
      assert.strictEqual((yield* Effect.flip(first.complete))._tag, "MessageLockLost")
    }).pipe(Effect.provide(layer({ queues: [{ name: "orders", lockDuration: "30 seconds" }] }))))

  it.scoped("renewal stops after its maximum duration, and the lock then lapses", () =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const receiver = yield* MessageReceiver.MessageReceiver
      const broker = yield* MessageSender.MemoryBroker
      yield* sender.send("orders", plain("m"))
      const [delivery] = yield* receiver.receive(orders, { maxWaitTime: 0 })
      yield* TestClock.adjust("10 minutes")
      // Renewal runs for at most 5 minutes by default, then the lock lapses.
      const afterMax = yield* broker.messages(orders)
      assert.isUndefined(afterMax[0].lockToken)
      assert.strictEqual((yield* Effect.flip(delivery.complete))._tag, "MessageLockLost")
    }).pipe(Effect.provide(layer({ queues: [{ name: "orders", lockDuration: "30 seconds" }] }))))

  it.scoped("renewal keeps the lock for as long as the handler runs", () =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const receiver = yield* MessageReceiver.MessageReceiver
      const broker = yield* MessageSender.MemoryBroker
      yield* sender.send("orders", plain("m"))
      const [delivery] = yield* receiver.receive(orders, { maxWaitTime: 0 })
      for (let i = 0; i < 8; i++) {
        yield* TestClock.adjust("15 seconds")
        const [stored] = yield* broker.messages(orders)
        assert.isString(stored.lockToken)
      }
      yield* delivery.complete
      assert.deepStrictEqual(yield* broker.messages(orders), [])
    }).pipe(Effect.provide(layer({ queues: [{ name: "orders", lockDuration: "30 seconds" }] }))))

  it.scoped("a receive waits for a message sent later", () =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const receiver = yield* MessageReceiver.MessageReceiver
      const waiting = yield* Effect.fork(receiver.receive(orders, { maxWaitTime: "1 minute" }))
      yield* Effect.yieldNow()
      yield* sender.send("orders", plain("late"))
      const received = yield* waiting
      assert.deepStrictEqual(received.map((delivery) => delivery.message.messageId), ["late"])
    }).pipe(Effect.provide(layer({ queues: ["orders"] }))))

  it.scoped("a receive with nothing to get returns empty after its wait", () =>
    Effect.gen(function*() {
      const receiver = yield* MessageReceiver.MessageReceiver
      const waiting = yield* Effect.fork(receiver.receive(orders, { maxWaitTime: "10 seconds" }))
      yield* TestClock.adjust("10 seconds")
      assert.deepStrictEqual(yield* waiting, [])
    }).pipe(Effect.provide(layer({ queues: ["orders"] }))))

  it.scoped("duplicate detection forgets ids after its window", () =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const broker = yield* MessageSender.MemoryBroker
      yield* sender.send("orders", plain("a"))
      yield* TestClock.adjust("59 seconds")
      yield* sender.send("orders", plain("a"))
      assert.strictEqual(yield* broker.duplicatesDropped("orders"), 1)
      yield* TestClock.adjust("2 seconds")
      yield* sender.send("orders", plain("a"))
      assert.strictEqual((yield* broker.sent("orders")).length, 2)
    }).pipe(
      Effect.provide(layer({ queues: [{ name: "orders", duplicateDetectionHistoryTimeWindow: "1 minute" }] }))
    ))

  it.scoped("scheduled messages and time to live follow the clock", () =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const receiver = yield* MessageReceiver.MessageReceiver
      const now = yield* TestClock.currentTimeMillis
      yield* sender.send("orders", [
        { ...plain("scheduled"), scheduledEnqueueTime: new Date(now + 60_000) },
        { ...plain("short-lived"), timeToLive: Duration.seconds(30) }
      ])
      yield* TestClock.adjust("31 seconds")
      assert.deepStrictEqual(yield* receiver.receive(orders, { maxWaitTime: 0 }), [])
      yield* TestClock.adjust("29 seconds")
      const [due] = yield* receiver.receive(orders, { maxWaitTime: 0 })
      assert.strictEqual(due.message.messageId, "scheduled")
    }).pipe(Effect.provide(layer({ queues: ["orders"] }))))

  it.scoped("expired messages go to the dead-letter queue when the entity says so", () =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const receiver = yield* MessageReceiver.MessageReceiver
      yield* sender.send("orders", plain("stale"))
      yield* TestClock.adjust("2 minutes")
      assert.deepStrictEqual(yield* receiver.receive(orders, { maxWaitTime: 0 }), [])
      const [dead] = yield* receiver.receive(MessageReceiver.deadLetterOf(orders), { maxWaitTime: 0 })
      assert.strictEqual(dead.message.deadLetterReason, "TTLExpiredException")
    }).pipe(Effect.provide(layer({
      queues: [{ name: "orders", defaultMessageTimeToLive: "1 minute", deadLetteringOnMessageExpiration: true }]
    }))))

  it.scoped("inspection: sent messages, batches and duplicates", () =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const broker = yield* MessageSender.MemoryBroker
      yield* sender.send("orders", [plain("a"), plain("b")])
      yield* sender.send("orders", [plain("b"), plain("c")])
      const batches = yield* broker.batches("orders")
      assert.deepStrictEqual(batches.map((batch) => batch.map((message) => message.messageId)), [["a", "b"], ["c"]])
      assert.deepStrictEqual((yield* broker.sent("orders")).map((message) => message.body), [
        { id: "a" },
        { id: "b" },
        { id: "c" }
      ])
      assert.strictEqual(yield* broker.duplicatesDropped("orders"), 1)
      assert.strictEqual((yield* Effect.flip(broker.sent("nowhere")))._tag, "EntityNotFound")
    }).pipe(Effect.provide(layer({ queues: [{ name: "orders", requiresDuplicateDetection: true }] }))))

  it.scoped("a transient settle failure is retried under the schedule", () =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const broker = yield* MessageSender.MemoryBroker
      const receiver = yield* MessageReceiver.MessageReceiver
      yield* sender.send("orders", plain("a"))
      const [delivery] = yield* receiver.receive(orders, { maxWaitTime: 0 })
      yield* broker.failNext("settle", new ServerBusy({ operation: "complete", reason: "injected" }), 2)
      const completing = yield* Effect.fork(delivery.complete)
      // The default schedule backs off from 200 ms; the test clock lets it run.
      yield* TestClock.adjust("5 seconds")
      yield* completing
      assert.deepStrictEqual(yield* delivery.settlement, Option.some(MessageReceiver.complete))
      assert.deepStrictEqual(yield* broker.messages(orders), [])
    }).pipe(Effect.provide(layer({ queues: ["orders"] }))))

  it.scoped("a permanent failure is not retried", () =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const broker = yield* MessageSender.MemoryBroker
      yield* broker.failNext("send", new Unauthorized({ operation: "send", entity: "orders", reason: "injected" }))
      const error = yield* Effect.flip(sender.send("orders", plain("a")))
      assert.strictEqual(error._tag, "Unauthorized")
      assert.deepStrictEqual(yield* broker.sent("orders"), [])
      yield* sender.send("orders", plain("a"))
      assert.strictEqual((yield* broker.sent("orders")).length, 1)
    }).pipe(Effect.provide(layer({ queues: ["orders"] }))))

  it.effect("the retry schedule can be overridden", () =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const broker = yield* MessageSender.MemoryBroker
      yield* broker.failNext("send", new ServerBusy({ operation: "send", reason: "injected" }), 5)
      const error = yield* Effect.flip(sender.send("orders", plain("a")))
      assert.strictEqual(error._tag, "ServerBusy")
      assert.deepStrictEqual(yield* broker.sent("orders"), [])
    }).pipe(Effect.provide(layer({ queues: ["orders"], retry: Schedule.recurs(2) }))))
})

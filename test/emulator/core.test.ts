import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { attempt, bodies, client, emulator, receiveAll, run } from "./support.js"

const queue = (name: string, extra: Record<string, unknown> = {}) => ({ name, ...extra })

describe("ServiceBusEmulator with the official SDK", () => {
  it.scopedLive("sends one message and receives it with the broker's annotations", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("orders")] })
      const sb = yield* client(emu)
      const before = Date.now()
      yield* run(() =>
        sb.createSender("orders").sendMessages({
          body: { id: 1 },
          messageId: "m-1",
          subject: "created",
          correlationId: "c-1",
          contentType: "application/json",
          applicationProperties: { region: "eu", count: 3 }
        })
      )
      const receiver = sb.createReceiver("orders")
      const [message] = yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 5000 }))
      assert.deepStrictEqual(message.body, { id: 1 })
      assert.strictEqual(message.messageId, "m-1")
      assert.strictEqual(message.subject, "created")
      assert.strictEqual(message.correlationId, "c-1")
      assert.strictEqual(message.contentType, "application/json")
      assert.deepStrictEqual(message.applicationProperties, { region: "eu", count: 3 })
      assert.strictEqual(message.sequenceNumber?.toNumber(), 1)
      assert.strictEqual(message.deliveryCount, 0)
      assert.match(message.lockToken ?? "", /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
      assert.isAtLeast(message.enqueuedTimeUtc!.getTime(), before - 1000)
      assert.isAtLeast(message.lockedUntilUtc!.getTime(), Date.now() + 50_000)
      yield* run(() => receiver.completeMessage(message))
      const counts = yield* emu.admin.counts("orders")
      assert.deepStrictEqual(counts, { active: 0, locked: 0, deferred: 0, scheduled: 0, deadLettered: 0 })
    }))

  it.scopedLive("sends batches (arrays and createMessageBatch) in order", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("orders")] })
      const sb = yield* client(emu)
      const sender = sb.createSender("orders")
      yield* run(() => sender.sendMessages([{ body: "a" }, { body: "b" }, { body: "c" }]))
      const batch = yield* run(() => sender.createMessageBatch())
      for (const body of ["d", "e"]) assert.isTrue(batch.tryAddMessage({ body }))
      yield* run(() => sender.sendMessages(batch))
      const receiver = sb.createReceiver("orders", { receiveMode: "receiveAndDelete" })
      const messages = yield* receiveAll((n) => receiver.receiveMessages(n, { maxWaitTimeInMs: 2000 }), 5)
      assert.deepStrictEqual(bodies(messages), ["a", "b", "c", "d", "e"])
      assert.deepStrictEqual(messages.map((m) => m.sequenceNumber?.toNumber()), [1, 2, 3, 4, 5])
      assert.isTrue(messages.every((m) => typeof m.messageId === "string" && m.messageId.length > 0))
      assert.strictEqual((yield* emu.admin.counts("orders")).active, 0)
    }))

  it.scopedLive("settles in all four ways: complete, abandon, dead-letter, defer", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("orders")] })
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("orders").sendMessages(["c", "a", "x", "d"].map((body) => ({ body }))))
      const receiver = sb.createReceiver("orders")
      const received = yield* receiveAll((n) => receiver.receiveMessages(n, { maxWaitTimeInMs: 2000 }), 4)
      const [c, a, x, d] = received
      yield* run(() => receiver.completeMessage(c))
      yield* run(() => receiver.abandonMessage(a, { reason: "later" }))
      yield* run(() =>
        receiver.deadLetterMessage(x, { deadLetterReason: "Invalid", deadLetterErrorDescription: "bad body" })
      )
      yield* run(() => receiver.deferMessage(d))

      const [again] = yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 2000 }))
      assert.strictEqual(again.body, "a")
      assert.strictEqual(again.deliveryCount, 1)
      assert.deepStrictEqual(again.applicationProperties, { reason: "later" })
      yield* run(() => receiver.completeMessage(again))

      const [deferred] = yield* run(() => receiver.receiveDeferredMessages([d.sequenceNumber!]))
      assert.strictEqual(deferred.body, "d")
      assert.strictEqual(deferred.state, "deferred")
      yield* run(() => receiver.completeMessage(deferred))

      const dlq = sb.createReceiver("orders", { subQueueType: "deadLetter" })
      const [dead] = yield* run(() => dlq.receiveMessages(1, { maxWaitTimeInMs: 2000 }))
      assert.strictEqual(dead.body, "x")
      assert.strictEqual(dead.deadLetterReason, "Invalid")
      assert.strictEqual(dead.deadLetterErrorDescription, "bad body")
      assert.strictEqual(dead.deadLetterSource, "orders")
      yield* run(() => dlq.completeMessage(dead))
      assert.deepStrictEqual(yield* emu.admin.counts("orders"), {
        active: 0,
        locked: 0,
        deferred: 0,
        scheduled: 0,
        deadLettered: 0
      })
    }))

  it.scopedLive("redelivers a message when its lock expires, one delivery later", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("orders", { lockDuration: "1 second" })] })
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("orders").sendMessages({ body: "slow" }))
      // Without this the SDK renews the lock in the background and it never expires.
      const receiver = sb.createReceiver("orders", { maxAutoLockRenewalDurationInMs: 0 })
      const [first] = yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 2000 }))
      assert.strictEqual(first.deliveryCount, 0)
      const started = Date.now()
      const [second] = yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 5000 }))
      assert.strictEqual(second.body, "slow")
      assert.strictEqual(second.deliveryCount, 1)
      assert.isAtLeast(Date.now() - started, 500)
      const error = yield* Effect.flip(attempt(() => receiver.completeMessage(first)))
      assert.strictEqual(error.code, "MessageLockLost")
      yield* run(() => receiver.completeMessage(second))
    }))

  it.scopedLive("renews a lock", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("orders", { lockDuration: "2 seconds" })] })
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("orders").sendMessages({ body: "work" }))
      const receiver = sb.createReceiver("orders", { maxAutoLockRenewalDurationInMs: 0 })
      const [message] = yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 2000 }))
      const first = message.lockedUntilUtc!.getTime()
      yield* Effect.sleep("20 millis")
      const renewed = yield* run(() => receiver.renewMessageLock(message))
      assert.isAbove(renewed.getTime(), first)
      yield* run(() => receiver.completeMessage(message))
    }))

  it.scopedLive("dead-letters a message after maxDeliveryCount abandons", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("orders", { maxDeliveryCount: 3 })] })
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("orders").sendMessages({ body: "poison" }))
      const receiver = sb.createReceiver("orders")
      for (let i = 0; i < 3; i++) {
        const [message] = yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 2000 }))
        assert.strictEqual(message.deliveryCount, i)
        yield* run(() => receiver.abandonMessage(message))
      }
      assert.deepStrictEqual(yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 300 })), [])
      const dlq = sb.createReceiver("orders/$DeadLetterQueue", { receiveMode: "receiveAndDelete" })
      const [dead] = yield* run(() => dlq.receiveMessages(1, { maxWaitTimeInMs: 2000 }))
      assert.strictEqual(dead.body, "poison")
      assert.strictEqual(dead.deadLetterReason, "MaxDeliveryCountExceeded")
    }))

  it.scopedLive("schedules messages and cancels scheduled ones", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("orders")] })
      const sb = yield* client(emu)
      const sender = sb.createSender("orders")
      const at = new Date(Date.now() + 800)
      const [keep, cancel] = yield* run(() => sender.scheduleMessages([{ body: "keep" }, { body: "cancel" }], at))
      assert.strictEqual((yield* emu.admin.counts("orders")).scheduled, 2)
      const peeked = yield* run(() => sb.createReceiver("orders").peekMessages(10))
      assert.deepStrictEqual(peeked.map((m) => m.state), ["scheduled", "scheduled"])
      yield* run(() => sender.cancelScheduledMessages([cancel]))
      const receiver = sb.createReceiver("orders", { receiveMode: "receiveAndDelete" })
      const [message] = yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 5000 }))
      assert.strictEqual(message.body, "keep")
      assert.strictEqual(message.sequenceNumber?.toNumber(), keep.toNumber())
      assert.isAtLeast(message.enqueuedTimeUtc!.getTime(), at.getTime())
      assert.deepStrictEqual(yield* emu.admin.counts("orders"), {
        active: 0,
        locked: 0,
        deferred: 0,
        scheduled: 0,
        deadLettered: 0
      })
    }))

  it.scopedLive("expires messages: dead-lettered when the entity says so, dropped otherwise", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({
        queues: [queue("dlq-on-expiry", { deadLetteringOnMessageExpiration: true }), queue("drop-on-expiry")]
      })
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("dlq-on-expiry").sendMessages({ body: "old", timeToLive: 100 }))
      yield* run(() =>
        sb.createSender("drop-on-expiry").sendMessages([{ body: "old", timeToLive: 100 }, { body: "fresh" }])
      )
      const dlq = sb.createReceiver("dlq-on-expiry", { subQueueType: "deadLetter", receiveMode: "receiveAndDelete" })
      const [dead] = yield* run(() => dlq.receiveMessages(1, { maxWaitTimeInMs: 5000 }))
      assert.strictEqual(dead.body, "old")
      assert.strictEqual(dead.deadLetterReason, "TTLExpiredException")
      const receiver = sb.createReceiver("drop-on-expiry", { receiveMode: "receiveAndDelete" })
      const messages = yield* run(() => receiver.receiveMessages(5, { maxWaitTimeInMs: 500 }))
      assert.deepStrictEqual(bodies(messages), ["fresh"])
      assert.strictEqual((yield* emu.admin.counts("drop-on-expiry")).deadLettered, 0)
    }))

  it.scopedLive("drops duplicates by MessageId within the detection window", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("orders", { requiresDuplicateDetection: true })] })
      const sb = yield* client(emu)
      const sender = sb.createSender("orders")
      yield* run(() => sender.sendMessages({ body: "first", messageId: "same" }))
      yield* run(() => sender.sendMessages({ body: "second", messageId: "same" }))
      yield* run(() =>
        sender.sendMessages([{ body: "third", messageId: "same" }, { body: "other", messageId: "other" }])
      )
      const receiver = sb.createReceiver("orders", { receiveMode: "receiveAndDelete" })
      const messages = yield* receiveAll((n) => receiver.receiveMessages(n, { maxWaitTimeInMs: 500 }), 4)
      assert.deepStrictEqual(bodies(messages), ["first", "other"])
    }))

  it.scopedLive("peeks without locking, from a sequence number", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("orders")] })
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("orders").sendMessages(["a", "b", "c"].map((body) => ({ body }))))
      const receiver = sb.createReceiver("orders")
      const firstTwo = yield* run(() => receiver.peekMessages(2))
      assert.deepStrictEqual(bodies(firstTwo), ["a", "b"])
      assert.deepStrictEqual(bodies(yield* run(() => receiver.peekMessages(5))), ["c"])
      const fromTwo = yield* run(() =>
        receiver.peekMessages(5, { fromSequenceNumber: firstTwo[0].sequenceNumber!.add(1) })
      )
      assert.deepStrictEqual(bodies(fromTwo), ["b", "c"])
      assert.strictEqual((yield* emu.admin.counts("orders")).active, 3)
      const received = yield* receiveAll((n) => receiver.receiveMessages(n, { maxWaitTimeInMs: 1000 }), 3)
      assert.deepStrictEqual(bodies(received), ["a", "b", "c"])
    }))

  it.scopedLive("refuses a client with the wrong key", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("orders")], sharedAccessKey: Redacted.make("right-key") })
      const wrong = Redacted.value(emu.connectionString).replace("right-key", "wrong-key")
      const sb = yield* client(emu, { connectionString: wrong, maxRetries: 0 })
      const error = yield* Effect.flip(attempt(() => sb.createSender("orders").sendMessages({ body: "x" })))
      assert.strictEqual(error.code, "UnauthorizedAccess")
      const good = yield* client(emu)
      yield* run(() => good.createSender("orders").sendMessages({ body: "x" }))
    }))

  it.scopedLive("reports unknown entities as not found", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("orders")] })
      const sb = yield* client(emu, { maxRetries: 0 })
      const sendError = yield* Effect.flip(attempt(() => sb.createSender("nope").sendMessages({ body: "x" })))
      assert.strictEqual(sendError.code, "MessagingEntityNotFound")
      const receiveError = yield* Effect.flip(
        attempt(() => sb.createReceiver("nope").receiveMessages(1, { maxWaitTimeInMs: 1000 }))
      )
      assert.strictEqual(receiveError.code, "MessagingEntityNotFound")
      yield* run(() => sb.createSender("orders").sendMessages({ body: "still serving" }))
    }))

  it.scopedLive("refuses messages over the entity's size limit", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [queue("small", { maxMessageSizeInKilobytes: 1 })] })
      const sb = yield* client(emu, { maxRetries: 0 })
      const sender = sb.createSender("small")
      const error = yield* Effect.flip(attempt(() => sender.sendMessages({ body: "x".repeat(2000) })))
      assert.strictEqual(error.code, "MessageSizeExceeded")
      const batch = yield* run(() => sender.createMessageBatch())
      assert.strictEqual(batch.maxSizeInBytes, 1024)
      assert.isFalse(batch.tryAddMessage({ body: "x".repeat(2000) }))
      yield* run(() => sender.sendMessages({ body: "fits" }))
    }))
})

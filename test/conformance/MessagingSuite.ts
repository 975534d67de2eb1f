// The contract every messaging implementation passes: the same tests against the memory layers
// and against Service Bus (the emulator, through the official SDK). Each test declares the
// entities it needs and gets a fresh namespace with them, so no test sees another's messages.
// Tests run on the live clock: lock expiry is driven by short lock durations on the entities and
// observed through the broker's own redelivery, not by sleeping.
import { assert, describe, it } from "@effect/vitest"
import type { Layer, Scope } from "effect"
import { Array as Arr, Context, Duration, Effect, Option, Schema, Stream } from "effect"
import * as Message from "../../src/Message.js"
import type { OutgoingMessage } from "../../src/Message.js"
import type { Delivery, Source } from "../../src/MessageReceiver.js"
import * as MessageReceiver from "../../src/MessageReceiver.js"
import { MessageSender } from "../../src/MessageSender.js"

/** A queue as the tests declare it; the names follow Service Bus's entity properties. */
export interface QueueDefinition {
  readonly name: string
  readonly lockDuration?: Duration.DurationInput
  readonly maxDeliveryCount?: number
  readonly requiresDuplicateDetection?: boolean
  readonly duplicateDetectionHistoryTimeWindow?: Duration.DurationInput
}

/** A topic and its subscriptions (no filters). */
export interface TopicDefinition {
  readonly name: string
  readonly subscriptions: ReadonlyArray<{ readonly name: string; readonly lockDuration?: Duration.DurationInput }>
}

export interface Entities {
  readonly queues?: ReadonlyArray<QueueDefinition>
  readonly topics?: ReadonlyArray<TopicDefinition>
}

/** Fault injection, in whatever way the implementation offers it. */
export class MessagingFaults extends Context.Tag("test/MessagingFaults")<MessagingFaults, {
  /** Makes the next `count` sends fail with a transient "server busy" failure. */
  readonly refuseNextSends: (count: number) => Effect.Effect<void>
}>() {}

export type MessagingLayer = (
  entities: Entities
) => Layer.Layer<MessageSender | MessageReceiver.MessageReceiver | MessagingFaults, unknown>

const Order = Schema.Struct({ orderId: Schema.String, amount: Schema.Number })

const order = (orderId: string, amount = 1): Effect.Effect<OutgoingMessage> =>
  Message.make(Order, { orderId, amount }, { messageId: `msg-${orderId}`, subject: "OrderPlaced" }).pipe(Effect.orDie)

const plain = (messageId: string, body: unknown = { id: messageId }): OutgoingMessage => ({ body, messageId })

/** 1 KiB of text, so that a few hundred messages overflow a 256 KiB batch. */
const kilobyte = "x".repeat(1024)

const queue = MessageReceiver.queue

const bodyIds = (deliveries: ReadonlyArray<Delivery>): Array<unknown> =>
  deliveries.map((delivery) => (delivery.message.body as { readonly id: unknown }).id)

/** Receives one message, waiting up to `wait`; `None` when nothing came. */
const receiveOne = (source: Source, wait: Duration.DurationInput = "5 seconds", renewal = true) =>
  Effect.flatMap(
    MessageReceiver.MessageReceiver,
    (receiver) => receiver.receive(source, { maxWaitTime: wait, ...(renewal ? {} : { lockRenewal: false }) })
  ).pipe(
    Effect.map(Arr.head)
  )

const receiveSome = (source: Source, wait: Duration.DurationInput = "5 seconds") =>
  receiveOne(source, wait).pipe(
    Effect.flatMap(Effect.orElseFail(() => new Error(`nothing received from ${MessageReceiver.entityPath(source)}`))),
    Effect.orDie
  )

/** Receives `count` messages through the stream, completing each. */
const drain = (source: Source, count: number) =>
  Effect.flatMap(
    MessageReceiver.MessageReceiver,
    (receiver) =>
      receiver.stream(source, { maxMessages: 50, maxWaitTime: "5 seconds" }).pipe(
        Stream.take(count),
        Stream.mapEffect((delivery) => Effect.as(delivery.complete, delivery)),
        Stream.runCollect,
        Effect.map((chunk) => Array.from(chunk)),
        Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error(`fewer than ${count} messages`) })
      )
  )

/** Asserts that nothing is available now (waiting briefly for a straggler). */
const assertEmpty = (source: Source) =>
  Effect.gen(function*() {
    const receiver = yield* MessageReceiver.MessageReceiver
    const peeked = yield* receiver.peek(source, { maxMessages: 10 })
    assert.deepStrictEqual(peeked.map((message) => message.messageId), [])
  })

export const messagingSuite = (name: string, layer: MessagingLayer): void => {
  const test = <A, E>(
    title: string,
    entities: Entities,
    body: () => Effect.Effect<A, E, MessageSender | MessageReceiver.MessageReceiver | MessagingFaults | Scope.Scope>,
    timeout = 30_000
  ) => it.live(title, () => Effect.scoped(Effect.provide(body(), layer(entities))), timeout)

  const oneQueue = (options: Partial<QueueDefinition> = {}): Entities => ({ queues: [{ name: "orders", ...options }] })

  describe(name, () => {
    describe("sending", () => {
      test("a message arrives with its fields and delivery metadata", oneQueue(), () =>
        Effect.gen(function*() {
          const sender = yield* MessageSender
          const scheduled = new Date(Date.now() - 1_000)
          const message: OutgoingMessage = {
            ...(yield* order("o-1", 42)),
            correlationId: "corr-1",
            causationId: "cause-1",
            partitionKey: "p-1",
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            applicationProperties: { tenant: "t-1", priority: 3, urgent: true },
            timeToLive: Duration.hours(1),
            scheduledEnqueueTime: scheduled
          }
          const result = yield* sender.send("orders", message)
          assert.deepStrictEqual(result, { messageCount: 1, batchCount: 1 })

          const delivery = yield* receiveSome(queue("orders"))
          const received = delivery.message
          assert.deepStrictEqual(yield* Message.decodeBody(Order)(received), { orderId: "o-1", amount: 42 })
          assert.strictEqual(received.messageId, "msg-o-1")
          assert.strictEqual(received.subject, "OrderPlaced")
          assert.strictEqual(received.correlationId, "corr-1")
          assert.strictEqual(received.causationId, "cause-1")
          assert.strictEqual(received.partitionKey, "p-1")
          assert.strictEqual(received.traceparent, message.traceparent)
          assert.deepStrictEqual(received.applicationProperties, { tenant: "t-1", priority: 3, urgent: true })
          assert.strictEqual(Duration.toMillis(received.timeToLive!), Duration.toMillis(Duration.hours(1)))
          assert.strictEqual(received.entity, "orders")
          assert.strictEqual(received.deliveryCount, 1)
          assert.strictEqual(received.state, "active")
          assert.isTrue(received.sequenceNumber > 0n)
          assert.isString(received.lockToken)
          assert.isTrue(received.lockedUntil!.getTime() > Date.now())
          yield* delivery.complete
        }))

      test("a message without traceparent carries the sender's span", oneQueue(), () =>
        Effect.gen(function*() {
          const sender = yield* MessageSender
          const span = yield* Effect.makeSpan("test-parent")
          yield* sender.send("orders", plain("traced")).pipe(Effect.withParentSpan(span))
          const delivery = yield* receiveSome(queue("orders"))
          const traceparent = delivery.message.traceparent
          assert.isString(traceparent)
          assert.match(traceparent!, new RegExp(`^00-${span.traceId}-[0-9a-f]{16}-01$`))
          yield* delivery.complete
        }))

      test("a batch arrives whole and in order", oneQueue(), () =>
        Effect.gen(function*() {
          const sender = yield* MessageSender
          const ids = Arr.makeBy(20, (i) => `m-${i}`)
          const result = yield* sender.send("orders", ids.map((id) => plain(id)))
          assert.deepStrictEqual(result, { messageCount: 20, batchCount: 1 })
          const received = yield* drain(queue("orders"), 20)
          assert.deepStrictEqual(bodyIds(received), ids)
          const sequence = received.map((delivery) => delivery.message.sequenceNumber)
          assert.deepStrictEqual(sequence, [...sequence].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)))
          yield* assertEmpty(queue("orders"))
        }))

      test("an empty batch sends nothing", oneQueue(), () =>
        Effect.gen(function*() {
          const sender = yield* MessageSender
          assert.deepStrictEqual(yield* sender.send("orders", []), { messageCount: 0, batchCount: 0 })
          yield* assertEmpty(queue("orders"))
        }))

      test(
        "a batch over the size limit fails with BatchTooLarge and sends nothing",
        oneQueue(),
        () =>
          Effect.gen(function*() {
            const sender = yield* MessageSender
            const messages = Arr.makeBy(300, (i) => plain(`big-${i}`, { id: `big-${i}`, padding: kilobyte }))
            const error = yield* Effect.flip(sender.send("orders", messages))
            assert.strictEqual(error._tag, "BatchTooLarge")
            if (error._tag === "BatchTooLarge") {
              assert.strictEqual(error.entity, "orders")
              assert.strictEqual(error.messageCount, 300)
              assert.isAbove(error.fitting, 100)
              assert.isBelow(error.fitting, 300)
              assert.strictEqual(error.maxBytes, 256 * 1024)
            }
            yield* assertEmpty(queue("orders"))
          })
      )

      test(
        "with split, an oversized batch goes in several batches, all in order",
        oneQueue(),
        () =>
          Effect.gen(function*() {
            const sender = yield* MessageSender
            const ids = Arr.makeBy(300, (i) => `split-${i}`)
            const result = yield* sender.send(
              "orders",
              ids.map((id) => plain(id, { id, padding: kilobyte })),
              { split: true }
            )
            assert.strictEqual(result.messageCount, 300)
            assert.strictEqual(result.batchCount, 2)
            const received = yield* drain(queue("orders"), 300)
            assert.deepStrictEqual(bodyIds(received), ids)
          }),
        60_000
      )

      test(
        "a message over the size limit fails with MessageTooLarge, even with split",
        oneQueue(),
        () =>
          Effect.gen(function*() {
            const sender = yield* MessageSender
            const huge = plain("huge", { id: "huge", padding: "x".repeat(300 * 1024) })
            for (const options of [{}, { split: true }]) {
              const error = yield* Effect.flip(sender.send("orders", [plain("small"), huge], options))
              assert.strictEqual(error._tag, "MessageTooLarge")
              if (error._tag === "MessageTooLarge") {
                assert.strictEqual(error.index, 1)
                assert.strictEqual(error.messageId, "huge")
                assert.isAbove(error.bytes ?? 0, 300 * 1024)
              }
            }
            yield* assertEmpty(queue("orders"))
          })
      )

      test("an invalid message fails with InvalidMessage and sends nothing", oneQueue(), () =>
        Effect.gen(function*() {
          const sender = yield* MessageSender
          const error = yield* Effect.flip(sender.send("orders", [plain("fine"), plain("x".repeat(129))]))
          assert.strictEqual(error._tag, "InvalidMessage")
          if (error._tag === "InvalidMessage") assert.strictEqual(error.index, 1)
          yield* assertEmpty(queue("orders"))
        }))

      test(
        "a body that is not JSON fails with InvalidMessage and sends nothing",
        oneQueue(),
        () =>
          Effect.gen(function*() {
            const sender = yield* MessageSender
            const error = yield* Effect.flip(sender.send("orders", [plain("fine"), plain("bad", { amount: 10n })]))
            assert.strictEqual(error._tag, "InvalidMessage")
            if (error._tag === "InvalidMessage") {
              assert.strictEqual(error.index, 1)
              assert.strictEqual(error.messageId, "bad")
            }
            yield* assertEmpty(queue("orders"))
          })
      )

      test(
        "duplicate detection drops a message id seen within the window",
        oneQueue({
          requiresDuplicateDetection: true,
          duplicateDetectionHistoryTimeWindow: "10 minutes"
        }),
        () =>
          Effect.gen(function*() {
            const sender = yield* MessageSender
            yield* sender.send("orders", [plain("a", { id: "a1" }), plain("b", { id: "b1" })])
            // A retried send after a lost acknowledgement: same ids, accepted and dropped.
            yield* sender.send("orders", [plain("a", { id: "a2" }), plain("c", { id: "c1" })])
            const received = yield* drain(queue("orders"), 3)
            assert.deepStrictEqual(bodyIds(received), ["a1", "b1", "c1"])
            yield* assertEmpty(queue("orders"))
          })
      )

      test("without duplicate detection, the same id is delivered twice", oneQueue(), () =>
        Effect.gen(function*() {
          const sender = yield* MessageSender
          yield* sender.send("orders", plain("same", { id: 1 }))
          yield* sender.send("orders", plain("same", { id: 2 }))
          assert.deepStrictEqual(bodyIds(yield* drain(queue("orders"), 2)), [1, 2])
        }))

      test("a topic gives every subscription a copy", {
        topics: [{ name: "events", subscriptions: [{ name: "billing" }, { name: "audit" }] }]
      }, () =>
        Effect.gen(function*() {
          const sender = yield* MessageSender
          yield* sender.send("events", [plain("e1"), plain("e2")])
          for (const name of ["billing", "audit"]) {
            const source = MessageReceiver.subscription("events", name)
            const received = yield* drain(source, 2)
            assert.deepStrictEqual(bodyIds(received), ["e1", "e2"])
            assert.strictEqual(received[0].message.entity, `events/Subscriptions/${name}`)
          }
        }))

      test(
        "sending to or receiving from a missing entity fails with EntityNotFound",
        oneQueue(),
        () =>
          Effect.gen(function*() {
            const sender = yield* MessageSender
            const receiver = yield* MessageReceiver.MessageReceiver
            const sendError = yield* Effect.flip(sender.send("nowhere", plain("x")))
            assert.strictEqual(sendError._tag, "EntityNotFound")
            const receiveError = yield* Effect.flip(receiver.receive(queue("nowhere"), { maxWaitTime: "1 second" }))
            assert.strictEqual(receiveError._tag, "EntityNotFound")
          })
      )

      test("a transient refusal is retried under the schedule", oneQueue(), () =>
        Effect.gen(function*() {
          const sender = yield* MessageSender
          const faults = yield* MessagingFaults
          yield* faults.refuseNextSends(2)
          yield* sender.send("orders", plain("busy"))
          const delivery = yield* receiveSome(queue("orders"))
          assert.strictEqual(delivery.message.messageId, "busy")
          yield* delivery.complete
        }))

      test("a scheduled message is held back until its time", oneQueue(), () =>
        Effect.gen(function*() {
          const sender = yield* MessageSender
          const receiver = yield* MessageReceiver.MessageReceiver
          const at = new Date(Date.now() + 1_500)
          yield* sender.send("orders", { ...plain("later"), scheduledEnqueueTime: at })
          const peeked = yield* receiver.peek(queue("orders"))
          assert.deepStrictEqual(peeked.map((message) => message.state), ["scheduled"])
          const delivery = yield* receiveSome(queue("orders"), "10 seconds")
          assert.isAtLeast(Date.now(), at.getTime() - 50)
          assert.strictEqual(delivery.message.messageId, "later")
          yield* delivery.complete
        }))
    })

    describe("settling", () => {
      test("complete removes the message", oneQueue(), () =>
        Effect.gen(function*() {
          yield* (yield* MessageSender).send("orders", plain("done"))
          const delivery = yield* receiveSome(queue("orders"))
          yield* delivery.complete
          assert.deepStrictEqual(yield* delivery.settlement, Option.some(MessageReceiver.complete))
          yield* assertEmpty(queue("orders"))
        }))

      test(
        "a delivery settles once: a second settlement fails with AlreadySettled",
        oneQueue(),
        () =>
          Effect.gen(function*() {
            yield* (yield* MessageSender).send("orders", plain("once"))
            const delivery = yield* receiveSome(queue("orders"))
            yield* delivery.complete
            const error = yield* Effect.flip(delivery.abandon())
            assert.strictEqual(error._tag, "AlreadySettled")
            if (error._tag === "AlreadySettled") {
              assert.strictEqual(error.settlement, "Complete")
              assert.strictEqual(error.attempted, "Abandon")
            }
          })
      )

      test(
        "abandon redelivers with the delivery count one higher and the properties merged",
        oneQueue(),
        () =>
          Effect.gen(function*() {
            yield* (yield* MessageSender).send("orders", {
              ...plain("again"),
              applicationProperties: { kept: "yes" }
            })
            const first = yield* receiveSome(queue("orders"))
            assert.strictEqual(first.message.deliveryCount, 1)
            yield* first.abandon({ attempt: 1 })
            const second = yield* receiveSome(queue("orders"))
            assert.strictEqual(second.message.messageId, "again")
            assert.strictEqual(second.message.deliveryCount, 2)
            assert.strictEqual(second.message.sequenceNumber, first.message.sequenceNumber)
            assert.deepStrictEqual(second.message.applicationProperties, { kept: "yes", attempt: 1 })
            yield* second.complete
          })
      )

      test("an abandoned message comes back before later ones", oneQueue(), () =>
        Effect.gen(function*() {
          yield* (yield* MessageSender).send("orders", [plain("first"), plain("second")])
          const first = yield* receiveSome(queue("orders"))
          assert.strictEqual(first.message.messageId, "first")
          yield* first.abandon()
          const next = yield* drain(queue("orders"), 2)
          assert.deepStrictEqual(next.map((delivery) => delivery.message.messageId), ["first", "second"])
        }))

      test(
        "dead-letter moves the message to the dead-letter queue with its reason",
        oneQueue(),
        () =>
          Effect.gen(function*() {
            yield* (yield* MessageSender).send("orders", plain("poison"))
            const delivery = yield* receiveSome(queue("orders"))
            yield* delivery.deadLetter({ reason: "InvalidOrder", description: "amount is negative" })
            yield* assertEmpty(queue("orders"))
            const dead = yield* receiveSome(MessageReceiver.deadLetterOf(queue("orders")))
            assert.strictEqual(dead.message.messageId, "poison")
            assert.strictEqual(dead.message.entity, "orders/$DeadLetterQueue")
            assert.strictEqual(dead.message.deadLetterReason, "InvalidOrder")
            assert.strictEqual(dead.message.deadLetterErrorDescription, "amount is negative")
            assert.deepStrictEqual(dead.message.body, { id: "poison" })
            yield* dead.complete
          })
      )

      test("defer sets the message aside until received by sequence number", oneQueue(), () =>
        Effect.gen(function*() {
          const receiver = yield* MessageReceiver.MessageReceiver
          yield* (yield* MessageSender).send("orders", [plain("later"), plain("now")])
          const deferred = yield* receiveSome(queue("orders"))
          assert.strictEqual(deferred.message.messageId, "later")
          yield* deferred.defer({ reason: "waiting" })
          const next = yield* receiveSome(queue("orders"))
          assert.strictEqual(next.message.messageId, "now")
          yield* next.complete
          assert.isTrue(Option.isNone(yield* receiveOne(queue("orders"), "500 millis")))

          const sequenceNumber = deferred.message.sequenceNumber
          const [again] = yield* receiver.receiveDeferred(queue("orders"), [sequenceNumber])
          assert.strictEqual(again.message.messageId, "later")
          assert.strictEqual(again.message.state, "deferred")
          assert.strictEqual(again.message.applicationProperties?.reason, "waiting")
          yield* again.complete
          const error = yield* Effect.flip(receiver.receiveDeferred(queue("orders"), [sequenceNumber]))
          assert.strictEqual(error._tag, "MessageNotFound")
        }))

      test(
        "after the maximum delivery count, the message is dead-lettered with MaxDeliveryCountExceeded",
        oneQueue({
          maxDeliveryCount: 3
        }),
        () =>
          Effect.gen(function*() {
            yield* (yield* MessageSender).send("orders", plain("flaky"))
            const counts: Array<number> = []
            for (let attempt = 0; attempt < 3; attempt++) {
              const delivery = yield* receiveSome(queue("orders"))
              counts.push(delivery.message.deliveryCount)
              yield* delivery.abandon()
            }
            assert.deepStrictEqual(counts, [1, 2, 3])
            assert.isTrue(Option.isNone(yield* receiveOne(queue("orders"), "500 millis")))
            const dead = yield* receiveSome(MessageReceiver.deadLetterOf(queue("orders")))
            assert.strictEqual(dead.message.messageId, "flaky")
            assert.strictEqual(dead.message.deadLetterReason, "MaxDeliveryCountExceeded")
            yield* dead.complete
          })
      )

      test("unsettled deliveries are abandoned when their scope closes", oneQueue(), () =>
        Effect.gen(function*() {
          yield* (yield* MessageSender).send("orders", plain("dropped"))
          yield* Effect.scoped(receiveSome(queue("orders")))
          // Available again at once, not after the one-minute lock.
          const again = yield* receiveSome(queue("orders"), "5 seconds")
          assert.strictEqual(again.message.deliveryCount, 2)
          yield* again.complete
        }))

      test(
        "a stream abandons what it received but did not settle when it ends",
        oneQueue(),
        () =>
          Effect.gen(function*() {
            const receiver = yield* MessageReceiver.MessageReceiver
            yield* (yield* MessageSender).send("orders", [plain("s1"), plain("s2"), plain("s3")])
            const taken = yield* receiver.stream(queue("orders"), { maxMessages: 3, maxWaitTime: "5 seconds" }).pipe(
              Stream.take(1),
              Stream.mapEffect((delivery) => Effect.as(delivery.complete, delivery.message.messageId)),
              Stream.runCollect
            )
            assert.deepStrictEqual(Array.from(taken), ["s1"])
            const rest = yield* drain(queue("orders"), 2)
            assert.deepStrictEqual(rest.map((delivery) => delivery.message.messageId), ["s2", "s3"])
          })
      )

      test("peek reads without locking", oneQueue(), () =>
        Effect.gen(function*() {
          const receiver = yield* MessageReceiver.MessageReceiver
          yield* (yield* MessageSender).send("orders", [plain("p1"), plain("p2")])
          const peeked = yield* receiver.peek(queue("orders"))
          assert.deepStrictEqual(peeked.map((message) => message.messageId), ["p1", "p2"])
          assert.deepStrictEqual(peeked.map((message) => message.deliveryCount), [0, 0])
          assert.isUndefined(peeked[0].lockToken)
          const from = yield* receiver.peek(queue("orders"), { fromSequenceNumber: peeked[1].sequenceNumber })
          assert.deepStrictEqual(from.map((message) => message.messageId), ["p2"])
          assert.strictEqual((yield* drain(queue("orders"), 2)).length, 2)
        }))
    })

    describe("locks", () => {
      test(
        "an expired lock makes the message available again, and settling it fails with MessageLockLost",
        oneQueue({
          lockDuration: "1 second"
        }),
        () =>
          Effect.gen(function*() {
            yield* (yield* MessageSender).send("orders", plain("slow"))
            const first = yield* receiveOne(queue("orders"), "5 seconds", false).pipe(Effect.map(Option.getOrThrow))
            // The broker hands the message out again once the lock expires.
            const second = yield* receiveSome(queue("orders"), "10 seconds")
            assert.strictEqual(second.message.messageId, "slow")
            assert.strictEqual(second.message.deliveryCount, 2)
            const error = yield* Effect.flip(first.complete)
            assert.strictEqual(error._tag, "MessageLockLost")
            yield* second.complete
          })
      )

      test(
        "lock renewal keeps a slow handler's message",
        oneQueue({ lockDuration: "2 seconds" }),
        () =>
          Effect.gen(function*() {
            const receiver = yield* MessageReceiver.MessageReceiver
            yield* (yield* MessageSender).send("orders", plain("kept"))
            const delivery = yield* receiveSome(queue("orders"))
            const lockedUntil = delivery.message.lockedUntil!.getTime()
            // The handler runs for two lock durations; meanwhile nobody else gets the message.
            const meanwhile = yield* Effect.scoped(receiver.receive(queue("orders"), { maxWaitTime: "4 seconds" }))
            assert.deepStrictEqual(meanwhile.map((other) => other.message.messageId), [])
            yield* delivery.complete
            yield* assertEmpty(queue("orders"))
            assert.isAbove(Date.now(), lockedUntil)
          })
      )

      test("renewLock extends the lock", oneQueue({ lockDuration: "2 seconds" }), () =>
        Effect.gen(function*() {
          yield* (yield* MessageSender).send("orders", plain("renew"))
          const delivery = yield* receiveOne(queue("orders"), "5 seconds", false).pipe(Effect.map(Option.getOrThrow))
          const before = delivery.message.lockedUntil!.getTime()
          const after = yield* delivery.renewLock
          assert.isAtLeast(after.getTime(), before)
          assert.isAbove(after.getTime(), Date.now() + 1_000)
          yield* delivery.complete
        }))
    })
  })
}

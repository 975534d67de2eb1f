// The contract every processor mode passes: the same tests in atomic and idempotent mode against
// the emulator, and in memory mode. Each test declares its queues and gets a fresh namespace.
// Progress is observed through the processor's counts (`awaitStats`), never by sleeping.
import { assert, describe, it } from "@effect/vitest"
import type { Context, Duration, Scope } from "effect"
import { Cause, Deferred, Effect, Either, Exit, Fiber, Layer, Ref, Schema, Tracer } from "effect"
import * as Aggregate from "../../src/Aggregate.js"
import * as Decider from "../../src/Decider.js"
import * as EventCodec from "../../src/EventCodec.js"
import * as EventStore from "../../src/EventStore.js"
import { EventStoreUnavailable } from "../../src/EventStoreError.js"
import type { OutgoingMessage, ReceivedMessage } from "../../src/Message.js"
import { idFromMessage } from "../../src/Message.js"
import * as MessageProcessor from "../../src/MessageProcessor.js"
import * as MessageReceiver from "../../src/MessageReceiver.js"
import { MessageSender } from "../../src/MessageSender.js"
import * as Outbox from "../../src/Outbox.js"
import * as Projection from "../../src/Projection.js"
import * as ProjectionStore from "../../src/ProjectionStore.js"

export interface QueueDefinition {
  readonly name: string
  readonly lockDuration?: Duration.DurationInput
  readonly maxDeliveryCount?: number
  readonly requiresDuplicateDetection?: boolean
}

export interface ProcessorEnv {
  readonly transport: MessageProcessor.Transport<MessageReceiver.MessageReceiver | MessageSender>
  /** A sender and a receiver on the same namespace, to seed inputs and inspect outputs. */
  readonly context: Context.Context<MessageReceiver.MessageReceiver | MessageSender>
}

export type MakeEnv = (queues: ReadonlyArray<QueueDefinition>) => Effect.Effect<ProcessorEnv, never, Scope.Scope>

/** A tracer that keeps the spans it makes (on top of the default one), for `Effect.withTracer`. */
export const recordSpans = Effect.map(Effect.tracer, (native) => {
  const spans: Array<Tracer.Span> = []
  const tracer = Tracer.make({
    span: (...args) => {
      const span = native.span(...args)
      spans.push(span)
      return span
    },
    context: native.context
  })
  return { tracer, spans }
})

// ---------------------------------------------------------------------------------------------
// The domain of the tests

export const Order = Schema.Struct({ orderId: Schema.String, amount: Schema.Number })
export type Order = typeof Order.Type

export const input = (i: number, fields: Partial<OutgoingMessage> = {}): OutgoingMessage => ({
  body: { orderId: `o-${i}`, amount: i },
  messageId: `in-${i}`,
  subject: "OrderPlaced",
  correlationId: `corr-${i}`,
  ...fields
})

/** Every message in a queue (not locked ones' contents aside): peeked, so nothing is consumed. */
export const peekAll = (queue: string, deadLetter = false) =>
  Effect.flatMap(MessageReceiver.MessageReceiver, (receiver) => {
    const source = MessageReceiver.queue(queue)
    return receiver.peek(deadLetter ? MessageReceiver.deadLetterOf(source) : source, { maxMessages: 1000 })
  })

export const seed = (queue: string, messages: ReadonlyArray<OutgoingMessage>) =>
  Effect.flatMap(MessageSender, (sender) => sender.send(queue, messages, { split: true }))

const ids = (messages: ReadonlyArray<ReceivedMessage>) => messages.map((m) => m.messageId ?? "").sort()

/** Fails the test instead of hanging when a signal never comes. */
export const within = <A, E, R>(effect: Effect.Effect<A, E, R>, what: string) =>
  Effect.timeoutFail(effect, { duration: "25 seconds", onTimeout: () => new Error(`timed out waiting for ${what}`) })

class Refused extends Schema.TaggedError<Refused>()("Refused", { orderId: Schema.String }) {
  override get message() {
    return `order ${this.orderId} refused`
  }
}

// An aggregate and a projection, for the "one write" helpers.
class Place extends Schema.TaggedClass<Place>()("Place", { orderId: Schema.String, amount: Schema.Number }) {}
class Placed extends Schema.TaggedClass<Placed>()("Placed", { orderId: Schema.String, amount: Schema.Number }) {}
const orders = Aggregate.make({
  decider: Decider.make({
    initialState: 0,
    evolve: (total: number, event: Placed) => total + event.amount,
    decide: (command: Place, _total: number) => Either.right([new Placed(command)])
  }),
  events: EventCodec.make(Placed)
})
const codec = EventCodec.make(Placed)
const totals = Projection.make({
  name: "totals",
  initialState: { count: 0, amount: 0 },
  evolve: (state: { readonly count: number; readonly amount: number }, event: Placed) => ({
    count: state.count + 1,
    amount: state.amount + event.amount
  }),
  documentId: (_event: Placed) => "all",
  state: Schema.Struct({ count: Schema.Number, amount: Schema.Number })
})

export const processorSuite = (name: string, makeEnv: MakeEnv): void => {
  const test = <A, E>(
    title: string,
    queues: ReadonlyArray<QueueDefinition>,
    body: (
      env: ProcessorEnv
    ) => Effect.Effect<
      A,
      E,
      | MessageSender
      | MessageReceiver.MessageReceiver
      | EventStore.EventStore
      | ProjectionStore.ProjectionStore
      | Scope.Scope
    >
  ) =>
    it.live(title, () =>
      Effect.scoped(Effect.gen(function*() {
        const env = yield* makeEnv(queues)
        return yield* body(env).pipe(
          Effect.provide(Layer.mergeAll(EventStore.layerMemory, ProjectionStore.layerMemory)),
          Effect.provide(env.context)
        )
      })), 40_000)

  const queues = (input: Omit<QueueDefinition, "name"> = {}): ReadonlyArray<QueueDefinition> => [
    { name: "in", maxDeliveryCount: 10, ...input },
    { name: "out", requiresDuplicateDetection: true }
  ]

  describe(name, () => {
    test(
      "each input produces its outgoing messages exactly once, with derived ids",
      queues(),
      (env) =>
        Effect.gen(function*() {
          const n = 20
          yield* seed("in", Array.from({ length: n }, (_, i) => input(i)))
          const processor = yield* MessageProcessor.run({
            source: MessageReceiver.queue("in"),
            transport: env.transport,
            concurrency: 4,
            receiveWait: "1 second",
            destinations: ["out"],
            handlers: {
              OrderPlaced: MessageProcessor.handler(Order, (order, context) =>
                Effect.gen(function*() {
                  yield* context.send("out", { body: { shipped: order.orderId }, subject: "Ship" })
                  yield* context.publish("out", Order, order, { subject: "Bill" })
                }))
            }
          })
          const stats = yield* within(processor.awaitStats((s) => s.completed >= n), "completions")
          assert.strictEqual(stats.completed, n)
          assert.strictEqual(stats.deadLettered, 0)
          const out = yield* peekAll("out")
          assert.strictEqual(out.length, 2 * n)
          const expected = Array.from({ length: n }, (_, i) => [0, 1].map((k) => `in-${i}:${k}`)).flat()
          assert.deepStrictEqual(
            ids(out),
            expected.map((key) => {
              const [id, k] = key.split(":")
              return idFromMessage(id, Number(k))
            }).sort()
          )
          assert.deepStrictEqual(ids(yield* peekAll("in")), [])
        })
    )

    test(
      "metadata, correlation and causation flow to the handler and the outgoing messages",
      queues(),
      (env) =>
        Effect.gen(function*() {
          const seen = yield* Ref.make<Array<MessageProcessor.MessageContext>>([])
          const { correlationId: _, ...uncorrelated } = input(2)
          yield* seed("in", [
            input(1, {
              causationId: "cause-1",
              traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            }),
            uncorrelated
          ])
          const processor = yield* MessageProcessor.run({
            source: MessageReceiver.queue("in"),
            transport: env.transport,
            receiveWait: "1 second",
            handlers: {
              OrderPlaced: MessageProcessor.handler(Order, (order, context) =>
                Ref.update(seen, (all) => [...all, context]).pipe(
                  Effect.zipRight(context.send("out", { body: order }))
                ))
            }
          })
          yield* within(
            processor.awaitStats((s) =>
              s.completed >= 2
            ),
            "completions"
          )
          const contexts = (yield* Ref.get(seen)).sort((a, b) => a.messageId.localeCompare(b.messageId))
          assert.deepStrictEqual(
            contexts.map((c) => [c.messageId, c.subject, c.correlationId, c.causationId, c.deliveryCount, c.attempt]),
            [["in-1", "OrderPlaced", "corr-1", "cause-1", 1, 1], ["in-2", "OrderPlaced", "in-2", undefined, 1, 1]]
          )
          assert.instanceOf(contexts[0].enqueuedTime, Date)
          assert.strictEqual(contexts[0].entity, "in")
          const out = [...(yield* peekAll("out"))].sort((a, b) =>
            String(a.causationId).localeCompare(String(b.causationId))
          )
          assert.deepStrictEqual(out.map((m) => [m.correlationId, m.causationId]), [["corr-1", "in-1"], [
            "in-2",
            "in-2"
          ]])
          // The outgoing message's trace is the handler span's, in the received message's trace.
          assert.match(out[0].traceparent ?? "", /^00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-0[01]$/)
        })
    )

    test(
      "a failed attempt abandons the message and sends nothing; the redelivery succeeds",
      queues(),
      (env) =>
        Effect.gen(function*() {
          const attempts = yield* Ref.make(0)
          yield* seed("in", [input(1)])
          const processor = yield* MessageProcessor.run({
            source: MessageReceiver.queue("in"),
            transport: env.transport,
            receiveWait: "1 second",
            handlers: {
              OrderPlaced: MessageProcessor.handler(Order, (order, context) =>
                Effect.gen(function*() {
                  yield* context.send("out", { body: order })
                  const attempt = yield* Ref.updateAndGet(attempts, (n) => n + 1)
                  if (attempt === 1) return yield* new Refused({ orderId: order.orderId })
                }))
            }
          })
          const stats = yield* within(processor.awaitStats((s) => s.completed >= 1), "a completion")
          assert.strictEqual(stats.abandoned, 1)
          assert.strictEqual(yield* Ref.get(attempts), 2)
          const out = yield* peekAll("out")
          assert.strictEqual(out.length, 1)
        })
    )

    test("transient failures are retried in process, without a redelivery", queues(), (env) =>
      Effect.gen(function*() {
        const attempts = yield* Ref.make(0)
        yield* seed("in", [input(1)])
        const processor = yield* MessageProcessor.run({
          source: MessageReceiver.queue("in"),
          transport: env.transport,
          receiveWait: "1 second",
          handlers: {
            OrderPlaced: MessageProcessor.handler(Order, (_order, context) =>
              Effect.gen(function*() {
                const attempt = yield* Ref.updateAndGet(attempts, (n) => n + 1)
                if (attempt <= 2) {
                  return yield* new EventStoreUnavailable({ operation: "append", reason: "injected" })
                }
                assert.strictEqual(context.deliveryCount, 1)
              }))
          }
        })
        const stats = yield* within(processor.awaitStats((s) => s.completed >= 1), "a completion")
        assert.strictEqual(stats.retries, 2)
        assert.strictEqual(stats.abandoned, 0)
      }))

    test(
      "poison messages are dead-lettered with a readable reason while the others flow",
      queues({ maxDeliveryCount: 10 }),
      (env) =>
        Effect.gen(function*() {
          yield* seed("in", [
            input(1),
            input(2, { body: { orderId: 2 } }),
            input(3, { subject: "Unknown" }),
            input(4, { body: { orderId: "poison", amount: 0 } }),
            input(5)
          ])
          const { spans, tracer } = yield* recordSpans
          const processor = yield* MessageProcessor.run({
            source: MessageReceiver.queue("in"),
            transport: env.transport,
            receiveWait: "1 second",
            maxAttempts: 3,
            handlers: {
              OrderPlaced: MessageProcessor.handler(Order, (order, context) =>
                order.orderId === "poison"
                  ? Effect.fail(new Refused({ orderId: order.orderId }))
                  : context.send("out", { body: order })),
              Crashing: MessageProcessor.handler(Schema.Unknown, () => Effect.die(new Error("boom")))
            }
          }).pipe(Effect.withTracer(tracer))
          const stats = yield* within(
            processor.awaitStats((s) => s.completed >= 2 && s.deadLettered >= 3),
            "completions and dead letters"
          )
          assert.strictEqual(stats.completed, 2)
          const dead = [...(yield* peekAll("in", true))].sort((a, b) =>
            String(a.messageId).localeCompare(String(b.messageId))
          )
          assert.deepStrictEqual(dead.map((m) => [m.messageId, m.deadLetterReason]), [
            ["in-2", "MessageDecodeError"],
            ["in-3", "UnknownMessageType"],
            ["in-4", "Refused"]
          ])
          assert.match(dead[1].deadLetterErrorDescription ?? "", /No handler for message type "Unknown"/)
          assert.strictEqual(dead[2].deadLetterErrorDescription, "order poison refused")
          assert.strictEqual((yield* peekAll("out")).length, 2)
          // Each failed attempt names its error on the message's span.
          const poison = spans.filter((span) =>
            span.name === "MessageProcessor.handle" && span.attributes.get("messageId") === "in-4"
          )
          assert.strictEqual(poison.length, 3)
          for (const span of poison) assert.strictEqual(span.attributes.get("error"), "Refused")
        })
    )

    test(
      "a stats predicate that throws fails its own wait; the processor keeps going",
      queues(),
      (env) =>
        Effect.gen(function*() {
          const processor = yield* MessageProcessor.run({
            source: MessageReceiver.queue("in"),
            transport: env.transport,
            receiveWait: "1 second",
            concurrency: 1,
            handlers: {
              OrderPlaced: MessageProcessor.handler(Order, (order, context) => context.send("out", { body: order }))
            }
          })
          // Checked at every change of the counts, from the messages' own fibers.
          const failing = yield* Effect.fork(processor.awaitStats((s) => {
            if (s.received > 0) throw new Error("a broken predicate")
            return false
          }))
          yield* seed("in", [input(1), input(2), input(3)])
          const exit = yield* within(Fiber.await(failing), "the failing wait")
          assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause))
          const stats = yield* within(processor.awaitStats((s) => s.completed >= 3), "completions")
          assert.strictEqual(stats.completed, 3)
          assert.strictEqual(stats.inFlight, 0)
        })
    )

    test("a handler defect does not crash the processor", queues(), (env) =>
      Effect.gen(function*() {
        yield* seed("in", [input(1, { subject: "Crashing" }), input(2)])
        const processor = yield* MessageProcessor.run({
          source: MessageReceiver.queue("in"),
          transport: env.transport,
          receiveWait: "1 second",
          maxAttempts: 2,
          handlers: {
            OrderPlaced: MessageProcessor.handler(Order, () => Effect.void),
            Crashing: MessageProcessor.handler(Schema.Unknown, () => Effect.sync(() => JSON.parse("{")))
          }
        })
        yield* within(processor.awaitStats((s) => s.completed >= 1 && s.deadLettered >= 1), "the outcome")
        const [dead] = yield* peekAll("in", true)
        assert.strictEqual(dead.deadLetterReason, "HandlerDefect")
        assert.match(dead.deadLetterErrorDescription ?? "", /died/)
      }))

    test(
      "handleCommand writes each command once, even when an attempt fails after the write",
      queues(),
      (env) =>
        Effect.gen(function*() {
          const failedOnce = yield* Ref.make(new Set<string>())
          yield* seed("in", Array.from({ length: 5 }, (_, i) => input(i)))
          const place = MessageProcessor.handleCommand(orders, {
            streamId: (order: Order) => `order-${order.orderId}`,
            command: (order: Order) => new Place(order)
          })
          const processor = yield* MessageProcessor.run({
            source: MessageReceiver.queue("in"),
            transport: env.transport,
            receiveWait: "1 second",
            handlers: {
              OrderPlaced: MessageProcessor.handler(Order, (order, context) =>
                Effect.gen(function*() {
                  const result = yield* place(order, context)
                  yield* context.send("out", { body: { version: result.version } })
                  const first = yield* Ref.modify(
                    failedOnce,
                    (set) => [!set.has(order.orderId), new Set(set).add(order.orderId)]
                  )
                  if (first) return yield* new Refused({ orderId: order.orderId })
                }))
            }
          })
          yield* within(processor.awaitStats((s) => s.completed >= 5), "completions")
          const store = yield* EventStore.EventStore
          for (let i = 0; i < 5; i++) {
            const stream = yield* store.read(`order-o-${i}`)
            assert.strictEqual(stream.length, 1)
            assert.strictEqual(stream[0].eventId, `in-${i}:0`)
            assert.strictEqual(stream[0].metadata.correlationId, `corr-${i}`)
            assert.strictEqual(stream[0].metadata.causationId, `in-${i}`)
          }
          assert.strictEqual((yield* peekAll("out")).length, 5)
        })
    )

    test(
      "projectionHandler applies each event once, redeliveries and duplicates included",
      queues(),
      (env) =>
        Effect.gen(function*() {
          const events = Array.from({ length: 4 }, (_, i) => {
            const data = codec.encode(new Placed({ orderId: `o-${i}`, amount: 10 }), {
              eventId: `e-${i}`,
              metadata: { timestamp: new Date(0).toISOString(), correlationId: "c" }
            })
            return Outbox.toMessage({ ...data, streamId: `order-o-${i}`, version: 1 })
          })
          // The same event twice, as a resend that duplicate detection did not catch.
          yield* seed("in", [...events, { ...events[0], messageId: "again" }])
          const processor = yield* MessageProcessor.run({
            source: MessageReceiver.queue("in"),
            transport: env.transport,
            receiveWait: "1 second",
            handlers: { ...MessageProcessor.projectionHandler(totals, codec) }
          })
          yield* within(processor.awaitStats((s) => s.completed >= 5), "completions")
          const store = yield* ProjectionStore.ProjectionStore
          const document = yield* store.get("totals", "all")
          assert.deepStrictEqual(
            document._tag === "Some" ? document.value.state : undefined,
            { count: 4, amount: 40 }
          )
        })
    )

    test(
      "locks are renewed while a handler runs for several lock durations",
      queues({ lockDuration: "1 second" }),
      (env) =>
        Effect.gen(function*() {
          const runs = yield* Ref.make<Array<number>>([])
          const started = yield* Deferred.make<void>()
          yield* seed("in", [input(1)])
          const processor = yield* MessageProcessor.run({
            source: MessageReceiver.queue("in"),
            transport: env.transport,
            receiveWait: "1 second",
            concurrency: 2,
            handlers: {
              OrderPlaced: MessageProcessor.handler(Order, (order, context) =>
                Effect.gen(function*() {
                  yield* Ref.update(runs, (all) => [...all, context.deliveryCount])
                  yield* Deferred.succeed(started, undefined)
                  // The handler's work: three lock durations.
                  yield* Effect.sleep("3 seconds")
                  yield* context.send("out", { body: order })
                }))
            }
          })
          yield* within(Deferred.await(started), "the handler to start")
          // A competing receiver, waiting through the lock durations the handler runs over:
          // a lock that lapsed would hand it the message.
          const receiver = yield* MessageReceiver.MessageReceiver
          const stolen = yield* receiver.receive(MessageReceiver.queue("in"), {
            maxMessages: 1,
            maxWaitTime: "2500 millis",
            lockRenewal: false
          })
          assert.deepStrictEqual(stolen.map((delivery) => delivery.message.messageId), [])
          const stats = yield* within(processor.awaitStats((s) => s.completed >= 1), "a completion")
          assert.deepStrictEqual(yield* Ref.get(runs), [1])
          assert.strictEqual(stats.completed, 1)
          assert.strictEqual(stats.abandoned, 0)
          assert.strictEqual(stats.commitFailures, 0)
          assert.strictEqual(stats.deadLettered, 0)
          assert.deepStrictEqual(ids(yield* peekAll("out")), [idFromMessage("in-1", 0)])
          assert.deepStrictEqual(ids(yield* peekAll("in")), [])
          assert.deepStrictEqual(ids(yield* peekAll("in", true)), [])
        })
    )

    test("shutdown drains the messages in flight", queues(), (env) =>
      Effect.gen(function*() {
        const started = yield* Ref.make(0)
        const latch = yield* Effect.makeLatch(false)
        yield* seed("in", [input(1), input(2)])
        const processor = yield* MessageProcessor.run({
          source: MessageReceiver.queue("in"),
          transport: env.transport,
          receiveWait: "1 second",
          concurrency: 2,
          handlers: {
            OrderPlaced: MessageProcessor.handler(Order, (order, context) =>
              Ref.update(started, (n) => n + 1).pipe(
                Effect.zipRight(latch.await),
                Effect.zipRight(context.send("out", { body: order }))
              ))
          }
        })
        yield* within(processor.awaitStats((s) => s.inFlight === 2), "two messages in flight")
        const stopping = yield* Effect.fork(processor.shutdown)
        yield* latch.open
        yield* stopping.await
        const stats = yield* processor.stats
        assert.strictEqual(stats.completed, 2)
        assert.strictEqual(stats.inFlight, 0)
        assert.strictEqual((yield* peekAll("out")).length, 2)
      }))
  })
}

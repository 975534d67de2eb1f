// Found by the chaos run (the outbox, after a dropped connection, dispatched nothing for about a
// minute): when Service Bus drops the connection while the SDK client opens a link (its claim
// goes out on the connection being torn down and is never answered), the SDK's reconnection
// waits for that link, and every call on the client waits for the operation timeout. A client
// made by `ServiceBusClient.make` replaces its SDK client as soon as the connection drops, and the
// ports move their links to the new one.
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Layer } from "effect"
import { ServiceBusEmulator } from "../src/emulator/index.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import * as MessageSender from "../src/MessageSender.js"
import * as ServiceBusClient from "../src/ServiceBusClient.js"

const queues = ["first", "second", "third"].map((name) => ({ name }))

// An emulator, a client on it with the default operation timeout (a minute: a stalled call
// would outlast the tests), and the ports on the client.
const setup = Effect.gen(function*() {
  const emulator = yield* ServiceBusEmulator.make({ queues })
  const client = yield* ServiceBusClient.make({ connectionString: emulator.connectionString })
  const context = yield* Layer.build(
    Layer.mergeAll(MessageSender.layerServiceBus(), MessageReceiver.layerServiceBus()).pipe(
      Layer.provide(Layer.succeed(ServiceBusClient.ServiceBusClient, client))
    )
  )
  const sender = yield* Effect.provide(MessageSender.MessageSender, context)
  const receiver = yield* Effect.provide(MessageReceiver.MessageReceiver, context)
  return { client, emulator, receiver, sender }
})

describe("a client made by ServiceBusClient.make after its connection drops", () => {
  for (const abrupt of [true, false]) {
    it.scopedLive(
      `sends and receives again at once (${abrupt ? "socket dropped" : "closed by the server"})`,
      () =>
        Effect.gen(function*() {
          const { client, emulator, receiver, sender } = yield* setup
          yield* sender.send("first", { messageId: "a", body: 1 })
          const before = client.sdk

          // Dropped while the next send opens a link to another queue.
          const closed = yield* emulator.faults.closeConnections({ abrupt })
          assert.isAbove(closed, 0)
          const [took] = yield* Effect.timed(
            Effect.all([
              sender.send("second", { messageId: "b", body: 2 }),
              sender.send("first", { messageId: "c", body: 3 })
            ], { concurrency: "unbounded" }).pipe(Effect.timeout("20 seconds"))
          )
          assert.isBelow(Duration.toMillis(took), 20_000)
          assert.notStrictEqual(client.sdk, before, "the SDK client was replaced")

          // Receiving works on the new connection too, and everything arrived once.
          const received = yield* receiver.receive(MessageReceiver.queue("first"), {
            maxMessages: 10,
            maxWaitTime: "2 seconds"
          })
          for (const delivery of received) yield* delivery.complete
          assert.deepStrictEqual(received.map((delivery) => delivery.message.messageId).sort(), ["a", "c"])
          assert.strictEqual((yield* emulator.admin.counts("second")).active, 1)
        }),
      60_000
    )
  }

  // A request on the management link (a peek) in flight when the connection drops ends at once
  // and is tried again on the new connection. The chaos run found such a request interrupted
  // after its link was gone: its abort signal made the SDK throw from the abort listener, out of
  // reach, and the process exited; management requests now get no abort signal, and a call ended
  // by the loss of its connection does not abort. An uncaught error would fail this test.
  it.scopedLive(
    "a peek in flight when the connection drops fails over to the new connection",
    () =>
      Effect.gen(function*() {
        const { emulator, receiver, sender } = yield* setup
        yield* sender.send("first", { messageId: "a", body: 1 })
        yield* receiver.peek(MessageReceiver.queue("first"))
        // The next answers are slow, so that the peek is in flight when the connection drops.
        yield* emulator.faults.delay("3 seconds", { count: 1 })
        const peek = yield* Effect.fork(receiver.peek(MessageReceiver.queue("first")))
        yield* Effect.sleep("300 millis")
        assert.isAbove(yield* emulator.faults.closeConnections({ abrupt: true }), 0)
        yield* emulator.faults.reset
        const [took, peeked] = yield* Effect.timed(Fiber.join(peek))
        assert.deepStrictEqual(peeked.map((message) => message.messageId), ["a"])
        assert.isBelow(Duration.toMillis(took), 20_000)
        // Another peek, interrupted just after its connection dropped.
        yield* emulator.faults.delay("3 seconds", { count: 1 })
        const interrupted = yield* Effect.fork(receiver.peek(MessageReceiver.queue("first")))
        yield* Effect.sleep("300 millis")
        assert.isAbove(yield* emulator.faults.closeConnections({ abrupt: true }), 0)
        yield* Effect.sleep("100 millis")
        yield* Fiber.interrupt(interrupted)
        yield* emulator.faults.reset
        // Time for an abort listener to throw, had a signal been aborted.
        yield* Effect.sleep("200 millis")
      }),
    60_000
  )
})

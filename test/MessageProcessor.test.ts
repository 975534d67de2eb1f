// The processor conformance suite against the in-repo emulator, in idempotent and atomic mode.
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Schedule, Schema } from "effect"
import { ServiceBusEmulator } from "../src/emulator/index.js"
import * as MessageProcessor from "../src/MessageProcessor.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import * as MessageSender from "../src/MessageSender.js"
import * as ServiceBusClient from "../src/ServiceBusClient.js"
import type { QueueDefinition } from "./conformance/ProcessorSuite.js"
import { input, peekAll, processorSuite, seed, within } from "./conformance/ProcessorSuite.js"

const start = (queues: ReadonlyArray<QueueDefinition>, transactions = true) =>
  Effect.gen(function*() {
    const emulator = yield* ServiceBusEmulator.make({ queues, transactions }).pipe(Effect.orDie)
    const client = yield* ServiceBusClient.make({ connectionString: emulator.connectionString }).pipe(Effect.orDie)
    const receiver = yield* MessageReceiver.makeServiceBus().pipe(
      Effect.provideService(ServiceBusClient.ServiceBusClient, client)
    )
    const sender = yield* MessageSender.makeServiceBus().pipe(
      Effect.provideService(ServiceBusClient.ServiceBusClient, client)
    )
    const context = Context.make(MessageReceiver.MessageReceiver, receiver).pipe(
      Context.add(MessageSender.MessageSender, sender)
    )
    return { emulator, context, connection: { connectionString: emulator.connectionString } }
  })

processorSuite(
  "MessageProcessor (emulator, idempotent)",
  (queues) =>
    Effect.map(start(queues), ({ connection, context }) => ({
      transport: MessageProcessor.idempotent({ connection }),
      context
    }))
)

processorSuite(
  "MessageProcessor (emulator, atomic)",
  (queues) =>
    Effect.map(start(queues), ({ connection, context }) => ({
      transport: MessageProcessor.atomic({ connection }),
      context
    }))
)

// A Basic tier namespace has no transactions: idempotent mode never asks for one, and atomic mode
// fails its start at once.
describe("MessageProcessor on a namespace without transactions", () => {
  const queues = [{ name: "in", requiresDuplicateDetection: true }, { name: "out", requiresDuplicateDetection: true }]

  it.live("idempotent mode processes its messages", () =>
    Effect.scoped(Effect.gen(function*() {
      const { connection, context } = yield* start(queues, false)
      yield* Effect.gen(function*() {
        yield* seed("in", [input(1), input(2), input(3)])
        const processor = yield* MessageProcessor.run({
          source: MessageReceiver.queue("in"),
          transport: MessageProcessor.idempotent({ connection }),
          handlers: {
            OrderPlaced: MessageProcessor.handler(Schema.Unknown, (body, ctx) => ctx.send("out", { body }))
          }
        })
        const stats = yield* within(processor.awaitStats((s) => s.completed >= 3), "completions")
        assert.strictEqual(stats.completed, 3)
        assert.strictEqual((yield* peekAll("out")).length, 3)
        assert.strictEqual((yield* peekAll("in")).length, 0)
      }).pipe(Effect.provide(context))
    })), 30_000)

  it.live("atomic mode fails to start with TransactionsUnsupported", () =>
    Effect.scoped(Effect.gen(function*() {
      const { connection } = yield* start(queues, false)
      const exit = yield* Effect.exit(within(
        MessageProcessor.run({
          source: MessageReceiver.queue("in"),
          transport: MessageProcessor.atomic({ connection }),
          handlers: {}
        }),
        "the start"
      ))
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) {
        const error = exit.cause._tag === "Fail" ? exit.cause.error : undefined
        assert.strictEqual((error as { _tag?: string } | undefined)?._tag, "TransactionsUnsupported")
      }
    })), 30_000)
})

// Service Bus detaches idle links (and links to an entity that was updated) while the connection
// stays: the processor receives and sends again on new links.
describe("MessageProcessor after Service Bus detaches its links", () => {
  const queues = [{ name: "in" }, { name: "out" }]
  for (const mode of ["atomic", "idempotent"] as const) {
    it.live(`${mode} mode`, () =>
      Effect.scoped(Effect.gen(function*() {
        const { connection, context, emulator } = yield* start(queues)
        yield* Effect.gen(function*() {
          yield* seed("in", [input(1)])
          const processor = yield* MessageProcessor.run({
            source: MessageReceiver.queue("in"),
            transport: mode === "atomic"
              ? MessageProcessor.atomic({ connection })
              : MessageProcessor.idempotent({ connection }),
            receiveWait: "500 millis",
            handlers: {
              OrderPlaced: MessageProcessor.handler(Schema.Unknown, (body, ctx) => ctx.send("out", { body }))
            }
          })
          yield* within(processor.awaitStats((s) => s.completed >= 1), "the first completion")
          assert.isAbove(yield* emulator.faults.detachLinks, 0)
          // The test's own SDK sender was detached too: its first send may meet the old link.
          yield* seed("in", [input(2), input(3)]).pipe(
            Effect.retry({ times: 10, schedule: Schedule.spaced("100 millis") })
          )
          const stats = yield* within(processor.awaitStats((s) => s.completed >= 3), "completions after the detach")
          assert.strictEqual(stats.completed, 3)
          assert.strictEqual((yield* peekAll("out")).length, 3)
        }).pipe(Effect.provide(context))
      })), 40_000)
  }
})

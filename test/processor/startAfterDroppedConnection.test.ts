// Found by the chaos run (seed 14, atomic mode): a connection dropped while an atomic processor
// was starting (claims, session, coordinator, links) made the start hang until the operation
// timeout, or fail instead of trying again. Each step of the start now fails as soon as the
// connection drops, and the processor starts again on a new connection.
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Schema } from "effect"
import { ServiceBusEmulator } from "../../src/emulator/index.js"
import * as MessageProcessor from "../../src/MessageProcessor.js"
import * as MessageReceiver from "../../src/MessageReceiver.js"

class Work extends Schema.TaggedClass<Work>()("Work", { n: Schema.Number }) {}

const scenario = (mode: "idempotent" | "atomic") =>
  Effect.gen(function*() {
    const emulator = yield* ServiceBusEmulator.make({ queues: [{ name: "in" }, { name: "out" }] })
    const connection = { connectionString: emulator.connectionString }
    // Every answer is slow while the processor starts, so the drop lands in the middle of it.
    yield* emulator.faults.delay("300 millis")
    const starting = yield* MessageProcessor.run({
      source: MessageReceiver.queue("in"),
      transport: mode === "idempotent"
        ? MessageProcessor.idempotent({ connection })
        : MessageProcessor.atomic({ connection }),
      handlers: { Work: MessageProcessor.handler(Work, () => Effect.void) },
      destinations: ["out"]
    }).pipe(Effect.forkScoped)
    // Drop the connection as soon as the processor has one, while it is still opening links.
    let closed = 0
    while (closed === 0) {
      yield* Effect.yieldNow()
      closed = yield* emulator.faults.closeConnections({ abrupt: true })
      if (closed === 0) yield* Effect.sleep("20 millis")
    }
    yield* emulator.faults.reset
    const started = yield* Fiber.await(starting).pipe(Effect.timeout("30 seconds"), Effect.option)
    assert.isTrue(started._tag === "Some", "the processor neither started nor failed within 30 seconds")
    if (started._tag === "Some") {
      assert.isTrue(
        Exit.isSuccess(started.value),
        `the processor did not start: ${Exit.isFailure(started.value) ? String(started.value.cause) : ""}`
      )
    }
  }).pipe(Effect.scoped)

describe("processor start with a connection dropped during it", () => {
  it.live("atomic mode", () => scenario("atomic"), 60_000)
  it.live("idempotent mode", () => scenario("idempotent"), 60_000)
})

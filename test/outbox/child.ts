// A process that appends to streams and is killed by its parent at a chosen point:
// - STOP_AT=afterCommit: the events are committed, and no pump runs;
// - STOP_AT=afterSend: a pump runs (one stream at a time) and the first send succeeds, but the
//   process stops before the position is recorded.
// It prints "ready" on stdout at that point and waits to be killed.
import { Effect, Layer, Redacted, Schedule } from "effect"
import * as AzureTableEventStore from "../../src/AzureTableEventStore.js"
import { EventStore } from "../../src/EventStore.js"
import * as MessageSender from "../../src/MessageSender.js"
import * as Outbox from "../../src/Outbox.js"
import * as ServiceBusClient from "../../src/ServiceBusClient.js"

const env = (name: string): string => {
  const value = process.env[name]
  if (value === undefined) throw new Error(`${name} is not set`)
  return value
}

const stopAt = env("STOP_AT")
const streamIds = env("STREAM_IDS").split(",")
const queue = env("QUEUE")

// A sender that stops the world right after its first successful send.
const stopAfterFirstSend = Layer.effect(
  MessageSender.MessageSender,
  Effect.map(MessageSender.MessageSender, (sender): MessageSender.MessageSenderService => ({
    send: (destination, messages, options) =>
      Effect.zipRight(
        sender.send(destination, messages, options),
        Effect.sync(() => process.stdout.write("ready\n")).pipe(Effect.zipRight(Effect.never))
      )
  }))
).pipe(
  Layer.provide(MessageSender.layerServiceBus()),
  Layer.provide(ServiceBusClient.layer({ connectionString: Redacted.make(env("SERVICEBUS_CONNECTION_STRING")) }))
)

const program = Effect.gen(function*() {
  const store = yield* EventStore
  if (stopAt === "afterSend") {
    yield* Outbox.make({ route: () => queue, concurrency: 1, sweep: Schedule.spaced("1 hour") })
  }
  for (const streamId of streamIds) {
    yield* store.append(
      streamId,
      0,
      [1, 2, 3].map((n) => ({
        eventId: `${streamId}-${n}`,
        type: "CrashTested",
        schemaVersion: 1,
        data: { n },
        metadata: { timestamp: new Date().toISOString() }
      }))
    )
  }
  if (stopAt === "afterCommit") process.stdout.write("ready\n")
  return yield* Effect.never
}).pipe(
  Effect.scoped,
  Effect.provide(Layer.merge(
    AzureTableEventStore.layer({
      connectionString: Redacted.make(env("AZURE_STORAGE_CONNECTION_STRING")),
      tableName: env("TABLE"),
      pendingBucketSize: "1 second",
      maxAppendDuration: "1 second",
      timeout: "2 seconds"
    }),
    stopAfterFirstSend
  ))
)

Effect.runFork(program)

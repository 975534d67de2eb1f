// Crash recovery: a child process appends and is killed (SIGKILL) between the commit and the
// dispatch, or between the send and the recorded position. A fresh pump in this process then
// dispatches everything, and with duplicate detection on the queue, each event is received once.
import { assert, describe, it } from "@effect/vitest"
import { Array as Arr, Effect, Layer, Redacted, Schedule } from "effect"
import { spawn } from "node:child_process"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, inject } from "vitest"
import * as AzureTableEventStore from "../src/AzureTableEventStore.js"
import { ServiceBusEmulator } from "../src/emulator/index.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import * as MessageSender from "../src/MessageSender.js"
import * as Outbox from "../src/Outbox.js"
import { OutboxStore } from "../src/OutboxStore.js"
import * as ServiceBusClient from "../src/ServiceBusClient.js"
import { poll } from "./conformance/OutboxSuite.js"

const azurite = inject("azurite")
const tableName = `crash${Math.random().toString(36).slice(2, 8)}`
const queue = "crash-events"
const child = join(dirname(fileURLToPath(import.meta.url)), "outbox", "child.ts")

const emulator = await ServiceBusEmulator.start({ queues: [{ name: queue, requiresDuplicateDetection: true }] })
afterAll(() => emulator.close())

// Runs the child until it prints "ready", then kills it with SIGKILL.
const runAndKill = (stopAt: "afterCommit" | "afterSend", streamIds: ReadonlyArray<string>) =>
  Effect.async<void, Error>((resume) => {
    const process_ = spawn(process.execPath, ["--import", "tsx", child], {
      env: {
        ...process.env,
        STOP_AT: stopAt,
        STREAM_IDS: streamIds.join(","),
        QUEUE: queue,
        TABLE: tableName,
        AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString,
        SERVICEBUS_CONNECTION_STRING: Redacted.value(emulator.connectionString)
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stderr = ""
    process_.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    process_.stdout.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("ready")) process_.kill("SIGKILL")
    })
    process_.on(
      "exit",
      (_code, signal) =>
        resume(signal === "SIGKILL" ? Effect.void : Effect.fail(new Error(`the child exited on its own: ${stderr}`)))
    )
  })

const stores = AzureTableEventStore.layer({
  connectionString: Redacted.make(azurite.connectionString),
  tableName,
  pendingBucketSize: "1 second",
  maxAppendDuration: "1 second",
  timeout: "2 seconds"
})

const messaging = Layer.mergeAll(MessageSender.layerServiceBus(), MessageReceiver.layerServiceBus()).pipe(
  Layer.provideMerge(ServiceBusClient.layer({ connectionString: emulator.connectionString }))
)

const recovers = (stopAt: "afterCommit" | "afterSend") =>
  Effect.gen(function*() {
    const streamIds = Arr.makeBy(4, (index) => `crash-${stopAt}${tableName}${index}`)
    yield* runAndKill(stopAt, streamIds)
    const receiver = yield* MessageReceiver.MessageReceiver
    const ours = Effect.map(
      receiver.peek(MessageReceiver.queue(queue), { maxMessages: 1_000 }),
      (messages) => messages.filter((message) => streamIds.includes(String(message.applicationProperties?.streamId)))
    )
    const before = yield* ours
    if (stopAt === "afterSend") assert.isAbove(before.length, 0, "the child sent before it died")
    else assert.strictEqual(before.length, 0)

    // A fresh pump: no commit notification for these streams; the sweep finds them.
    yield* Outbox.make({ route: () => queue, sweep: Schedule.spaced("250 millis"), gracePeriod: "1 millis" })
    const outboxStore = yield* OutboxStore
    for (const streamId of streamIds) {
      yield* poll(outboxStore.progress(streamId), (progress) => progress.version === 3 && progress.dispatched === 3)
    }
    const received = yield* ours
    assert.deepStrictEqual(
      received.map((message) => message.messageId).sort(),
      streamIds.flatMap((streamId) => [1, 2, 3].map((n) => `${streamId}-${n}`)).sort(),
      "each event exactly once"
    )
    for (const streamId of streamIds) {
      const ofStream = received.filter((message) => message.applicationProperties?.streamId === streamId)
      assert.deepStrictEqual(ofStream.map((message) => message.applicationProperties?.streamVersion), [1, 2, 3])
    }
  }).pipe(Effect.scoped, Effect.provide(Layer.merge(stores, messaging)))

describe("Outbox crash recovery", () => {
  it.live("killed between the commit and the dispatch", () => recovers("afterCommit"), 30_000)
  it.live("killed between the send and the recorded position", () => recovers("afterSend"), 30_000)
})

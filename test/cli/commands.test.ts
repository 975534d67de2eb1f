import { assert, describe, inject, it } from "@effect/vitest"
import { Effect, Layer, Redacted } from "effect"
import { spawn } from "node:child_process"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { Cli } from "../../src/cli/index.js"
import { ServiceBusEmulator } from "../../src/emulator/index.js"
import { AzureTableEventStore, EventStore, MessageReceiver, MessageSender, ServiceBusClient } from "../../src/index.js"

const BIN = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "bin", "effect-eventually.js")
const azurite = inject("azurite")

const collect = () => {
  let text = ""
  return { output: { write: (chunk: string) => (text += chunk) }, text: () => text }
}

const cli = (argv: ReadonlyArray<string>, env: Readonly<Record<string, string>>) =>
  Effect.promise(async () => {
    const stdout = collect()
    const stderr = collect()
    const code = await Cli.main(argv, { stdout: stdout.output, stderr: stderr.output, env })
    return { code, stdout: stdout.text(), stderr: stderr.text() }
  })

const table = `cli${Math.random().toString(36).slice(2, 10)}`
const storageEnv = { AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString, EVENT_STORE_TABLE: table }
const stores = AzureTableEventStore.layer({
  connectionString: Redacted.make(azurite.connectionString),
  tableName: table
})

const event = (eventId: string, type: string, data: unknown) => ({
  eventId,
  type,
  schemaVersion: 1,
  data,
  metadata: { timestamp: "2024-05-01T10:00:00.000Z" }
})

describe("effect-eventually CLI on Azurite", () => {
  it.live("stream read prints the events appended with the library", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      yield* store.append("booking-7", 0, [
        event("e-1", "BookingPlaced", { room: "double", nights: 3 }),
        event("e-2", "BookingPaid", { amount: 42900 })
      ])
      const all = yield* cli(["stream", "read", "booking-7"], storageEnv)
      assert.strictEqual(all.code, 0, all.stderr)
      const lines = all.stdout.trimEnd().split("\n")
      assert.match(lines[0], /^VERSION\s+TYPE\s+EVENT ID\s+TIMESTAMP\s+DATA$/)
      assert.match(lines[1], /^1\s+BookingPlaced\s+e-1\s+2024-05-01T10:00:00.000Z\s+\{"room":"double","nights":3\}$/)
      assert.match(lines[2], /^2\s+BookingPaid\s+e-2\s+/)

      const later = yield* cli(["stream", "read", "booking-7", "--from", "2", "--json"], storageEnv)
      const parsed: unknown = JSON.parse(later.stdout)
      assert.deepInclude(parsed, { version: 2, eventId: "e-2", data: { amount: 42900 } })

      const empty = yield* cli(["stream", "read", "nothing-here"], storageEnv)
      assert.include(empty.stdout, "no events in 'nothing-here'")
    }).pipe(Effect.provide(stores)))

  it.live("outbox lag lists a stream with undispatched events", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      yield* store.append("order-lagging", 0, [event("o-1", "OrderPlaced", {}), event("o-2", "OrderPaid", {})])
      const result = yield* cli(["outbox", "lag"], storageEnv)
      assert.strictEqual(result.code, 0, result.stderr)
      assert.match(result.stdout, /^order-lagging\s+2\s+0\s+2\s+2024-05-01T10:00:00.000Z \(/m)
      assert.match(result.stdout, /streams behind, \d+ events not dispatched/)
      const rows = (yield* cli(["outbox", "lag", "--json"], storageEnv)).stdout.trim().split("\n")
      assert.isTrue(rows.some((row) => row.includes("\"streamId\":\"order-lagging\",\"version\":2,\"dispatched\":0")))
    }).pipe(Effect.provide(stores)))

  it.live("fails with the typed error and exit code 1, without printing secrets", () =>
    Effect.gen(function*() {
      const missing = yield* cli(["stream", "read", "s", "--table", "NoSuchTable1"], storageEnv)
      assert.strictEqual(missing.code, 1)
      assert.match(missing.stderr, /^error: EventStoreFailure: /)
      const unconfigured = yield* cli(["outbox", "lag"], {})
      assert.strictEqual(unconfigured.code, 1)
      assert.include(unconfigured.stderr, "AZURE_STORAGE_CONNECTION_STRING")
      const key = /AccountKey=([^;]+)/.exec(azurite.connectionString)?.[1] ?? "unreachable"
      const refused = yield* cli(["stream", "read", "s"], {
        AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString.replace(
          /TableEndpoint=[^;]+/,
          "TableEndpoint=http://127.0.0.1:1/devstoreaccount1"
        )
      })
      assert.notInclude(refused.stdout + refused.stderr, key)
      const usage = yield* cli(["stream", "read"], storageEnv)
      assert.strictEqual(usage.code, 2)
      assert.include(usage.stderr, "missing argument <streamId>")
    }))

  it.live("the bin runs the TypeScript sources", () =>
    Effect.promise(() =>
      new Promise<void>((resolve, reject) => {
        const child = spawn(process.execPath, [BIN, "stream", "read", "booking-7", "--json"], {
          env: { ...process.env, ...storageEnv },
          stdio: ["ignore", "pipe", "pipe"]
        })
        let out = ""
        let err = ""
        child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()))
        child.stderr.on("data", (chunk: Buffer) => (err += chunk.toString()))
        child.on("exit", (code) => {
          try {
            assert.strictEqual(code, 0, err)
            assert.strictEqual(out.trim().split("\n").length, 2)
            assert.include(out, "\"eventId\":\"e-1\"")
            resolve()
          } catch (error) {
            reject(error)
          }
        })
      })
    ), 60_000)
})

describe("effect-eventually CLI on the Service Bus emulator", () => {
  const deadLetterOne = (queue: string, messageId: string) =>
    Effect.gen(function*() {
      const sender = yield* MessageSender.MessageSender
      const receiver = yield* MessageReceiver.MessageReceiver
      yield* sender.send(queue, { body: { order: messageId }, messageId, subject: "OrderPlaced" })
      const [delivery] = yield* receiver.receive(MessageReceiver.queue(queue), { maxWaitTime: "5 seconds" })
      yield* delivery.deadLetter({ reason: "PaymentDeclined", description: "card expired" })
    }).pipe(Effect.scoped)

  const setup = Effect.gen(function*() {
    const emulator = yield* ServiceBusEmulator.make({
      queues: [
        { name: "orders", requiresDuplicateDetection: true, lockDuration: "30 seconds" },
        { name: "basic", lockDuration: "30 seconds" }
      ]
    })
    const env = { SERVICEBUS_CONNECTION_STRING: Redacted.value(emulator.connectionString) }
    const messaging = Layer.mergeAll(MessageSender.layerServiceBus(), MessageReceiver.layerServiceBus()).pipe(
      Layer.provide(ServiceBusClient.layer({ connectionString: emulator.connectionString }))
    )
    return { emulator, env, messaging }
  })

  it.scopedLive(
    "dlq peek shows a dead-lettered message and dlq requeue moves it back in a transaction",
    () =>
      Effect.gen(function*() {
        const { emulator, env, messaging } = yield* setup
        yield* deadLetterOne("orders", "order-1").pipe(Effect.provide(messaging))

        const peek = yield* cli(["dlq", "peek", "orders"], env)
        assert.strictEqual(peek.code, 0, peek.stderr)
        assert.match(peek.stdout, /^SEQUENCE\s+MESSAGE ID\s+SUBJECT\s+ENQUEUED\s+REASON\s+DESCRIPTION$/m)
        assert.match(peek.stdout, /order-1\s+OrderPlaced\s+\S+\s+PaymentDeclined\s+card expired/)

        const requeue = yield* cli(["dlq", "requeue", "orders", "--wait", "1"], env)
        assert.strictEqual(requeue.code, 0, requeue.stderr)
        assert.include(requeue.stdout, "requeued 1 messages from orders/$DeadLetterQueue to orders")
        assert.strictEqual((yield* emulator.admin.counts("orders")).deadLettered, 0)

        // The copy is not dropped by duplicate detection although the original id was seen.
        const [back] = yield* Effect.flatMap(
          MessageReceiver.MessageReceiver,
          (receiver) => receiver.peek(MessageReceiver.queue("orders"))
        ).pipe(Effect.provide(messaging))
        assert.deepStrictEqual(back.body, { order: "order-1" })
        assert.strictEqual(back.subject, "OrderPlaced")
        assert.strictEqual(back.applicationProperties?.requeuedFrom, "order-1")
        assert.notStrictEqual(back.messageId, "order-1")

        const empty = yield* cli(["dlq", "peek", "orders"], env)
        assert.include(empty.stdout, "orders/$DeadLetterQueue is empty")
      }),
    60_000
  )

  it.scopedLive("dlq requeue --no-transaction sends then completes", () =>
    Effect.gen(function*() {
      const { emulator, env, messaging } = yield* setup
      yield* deadLetterOne("basic", "b-1").pipe(Effect.provide(messaging))
      const requeue = yield* cli(["dlq", "requeue", "basic", "--no-transaction", "--wait", "1"], env)
      assert.strictEqual(requeue.code, 0, requeue.stderr)
      assert.include(requeue.stdout, "requeued 1 messages")
      const counts = yield* emulator.admin.counts("basic")
      assert.strictEqual(counts.deadLettered, 0)
      assert.strictEqual(counts.active, 1)
    }), 60_000)

  it.live("dlq refuses a subscription without --allow-fan-out, and unconfigured Service Bus", () =>
    Effect.gen(function*() {
      const fanOut = yield* cli(["dlq", "requeue", "events/subscriptions/billing"], {
        SERVICEBUS_CONNECTION_STRING:
          "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=k;SharedAccessKey=s3cret;UseDevelopmentEmulator=true"
      })
      assert.strictEqual(fanOut.code, 1)
      assert.include(fanOut.stderr, "--allow-fan-out")
      assert.notInclude(fanOut.stderr, "s3cret")
      const bad = yield* cli(["dlq", "peek", "a/b"], { SERVICEBUS_CONNECTION_STRING: "x" })
      assert.include(bad.stderr, "'a/b' is not a queue or a subscription")
      const none = yield* cli(["dlq", "peek", "orders"], {})
      assert.strictEqual(none.code, 1)
      assert.include(none.stderr, "SERVICEBUS_CONNECTION_STRING")
    }))
})

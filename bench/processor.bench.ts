// Messages per second through MessageProcessor (atomic and idempotent mode) against a loop
// written by hand on the official SDK (receive, send, complete, no transaction), at the same
// concurrency, on the same in-process emulator, from the same backlog. Each handled message
// sends one message. Then the heap while a processor drains a 10,000-message backlog
// (informational).
import { ServiceBusClient } from "@azure/service-bus"
import { Effect, Redacted, Schema } from "effect"
import { performance } from "node:perf_hooks"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { start } from "../src/emulator/ServiceBusEmulator.js"
import * as MessageProcessor from "../src/MessageProcessor.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import { report } from "./util.js"

// Enough messages for the steady state to dominate: a run of a few hundred is mostly link setup.
const count = Number(process.env.N ?? 2000)
const concurrency = Number(process.env.C ?? 8)
const rounds = Number(process.env.ROUNDS ?? 3)
const backlog = Number(process.env.BACKLOG ?? 10_000)
const warmup = 100
const body = { id: "00000000-0000-0000-0000-000000000000", type: "AccountOpened", amount: 100 }

const modes = ["raw", "atomic", "idempotent"] as const
type Mode = (typeof modes)[number]

const emulator = await start({
  queues: [
    ...modes.flatMap((mode) => [{ name: `in-${mode}` }, { name: `out-${mode}` }]),
    { name: "in-backlog" },
    { name: "out-backlog" }
  ]
})
const connection = { connectionString: emulator.connectionString }
const client = new ServiceBusClient(Redacted.value(emulator.connectionString))

let seeded = 0
const seed = async (queue: string, n: number) => {
  const sender = client.createSender(queue)
  for (let i = 0; i < n; i += 100) {
    await sender.sendMessages(
      Array.from({ length: Math.min(100, n - i) }, () => ({ body, messageId: `m-${seeded++}`, subject: "Opened" }))
    )
  }
  await sender.close()
}

// The hand-written loop: `concurrency` workers, each with its own receiver (an SDK receiver
// serves one receive at a time), taking one message at a time until `n` are handled.
const raw = async (n: number): Promise<number> => {
  await seed("in-raw", n)
  const started = performance.now()
  const receivers = Array.from({ length: concurrency }, () => client.createReceiver("in-raw"))
  const sender = client.createSender("out-raw")
  let remaining = n
  await Promise.all(receivers.map(async (receiver) => {
    while (remaining > 0) {
      remaining--
      const [message] = await receiver.receiveMessages(1, { maxWaitTimeInMs: 5000 })
      if (message === undefined) {
        remaining++
        continue
      }
      await sender.sendMessages({ body, messageId: `out-${String(message.messageId)}`, subject: "Sent" })
      await receiver.completeMessage(message)
    }
  }))
  const ms = performance.now() - started
  await Promise.all(receivers.map((receiver) => receiver.close()))
  await sender.close()
  return ms
}

// The body is not decoded: what is measured is the processor, not a schema.
const handlers = (destination: string) => ({
  Opened: MessageProcessor.handler(
    Schema.Unknown,
    (_body, context) => context.send(destination, { body, subject: "Sent" })
  )
})

const processor = (mode: "atomic" | "idempotent", queue: string, destination: string, n: number) =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const running = yield* MessageProcessor.run({
      source: MessageReceiver.queue(queue),
      transport: mode === "atomic"
        ? MessageProcessor.atomic({ connection })
        : MessageProcessor.idempotent({ connection }),
      concurrency,
      destinations: [destination],
      handlers: handlers(destination)
    })
    // Timed from when the processor runs: its start opens a connection of its own, while the
    // raw loop's client is connected already. The raw loop's links attach within its timing:
    // milliseconds out of seconds.
    const started = performance.now()
    yield* running.awaitStats((stats) => stats.completed >= n)
    const ms = performance.now() - started
    yield* running.shutdown
    return ms
  })))

const ours = (mode: "atomic" | "idempotent") => async (n: number): Promise<number> => {
  await seed(`in-${mode}`, n)
  return processor(mode, `in-${mode}`, `out-${mode}`, n)
}

const run: Record<Mode, (n: number) => Promise<number>> = {
  raw,
  atomic: ours("atomic"),
  idempotent: ours("idempotent")
}

for (const mode of modes) await run[mode](warmup)
const best: Record<Mode, number> = { raw: Infinity, atomic: Infinity, idempotent: Infinity }
const all: Record<Mode, Array<number>> = { raw: [], atomic: [], idempotent: [] }
// Rounds alternate the three, and each keeps its best: on a shared machine one round mostly
// measures the neighbours.
for (let round = 0; round < rounds; round++) {
  for (const mode of modes) {
    const ms = await run[mode](count)
    all[mode].push(ms)
    best[mode] = Math.min(best[mode], ms)
  }
}
const rate = (ms: number) => (count * 1000) / ms
const rates = (mode: Mode) => all[mode].map((ms) => rate(ms).toFixed(0)).join("/")
const details = (mode: "atomic" | "idempotent") =>
  `${count} messages, concurrency ${concurrency}, best of ${rounds}: processor ${rate(best[mode]).toFixed(0)} msg/s ` +
  `(rounds ${rates(mode)}), raw SDK receive-send-complete ${rate(best.raw).toFixed(0)} msg/s (rounds ${rates("raw")})`
report("processor-atomic", rate(best.atomic) / rate(best.raw), ">=", 0.5, details("atomic"))
report("processor-idempotent", rate(best.idempotent) / rate(best.raw), ">=", 0.8, details("idempotent"))

// ---------------------------------------------------------------------------------------------
// The heap while draining a large backlog

setFlagsFromString("--expose-gc")
const gc = runInNewContext("gc") as () => void
const heapMiB = () => process.memoryUsage().heapUsed / 2 ** 20
await seed("in-backlog", backlog)
gc()
const before = heapMiB()
// The highest heap seen (garbage included), and the highest live heap (after a collection, every
// two seconds).
let peak = before
let peakLive = before
let ticks = 0
const sampler = setInterval(() => {
  if (++ticks % 100 === 0) {
    gc()
    peakLive = Math.max(peakLive, heapMiB())
  }
  peak = Math.max(peak, heapMiB())
}, 20)
const drained = await processor("atomic", "in-backlog", "out-backlog", backlog)
clearInterval(sampler)
gc()
const after = heapMiB()
const left = (await Effect.runPromise(emulator.admin.counts("in-backlog"))).active
console.log(
  `  heap draining ${backlog} messages (atomic, concurrency ${concurrency}, ${
    ((backlog * 1000) / drained).toFixed(0)
  } msg/s): ` +
    `before ${before.toFixed(1)} MiB (backlog seeded), peak live ${peakLive.toFixed(1)} MiB ` +
    `(with garbage ${peak.toFixed(1)} MiB), after ${after.toFixed(1)} MiB; left ${left}`
)

await client.close()
await emulator.close()

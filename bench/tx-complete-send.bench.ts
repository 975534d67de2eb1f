// Complete a received message and send one new message: in one Service Bus transaction through
// ServiceBusTransaction, against the official SDK doing complete then send with no transaction.
// Same in-process emulator, same message count, same concurrency.
import { ServiceBusClient } from "@azure/service-bus"
import { Effect, Redacted } from "effect"
import { performance } from "node:perf_hooks"
import { start } from "../src/emulator/ServiceBusEmulator.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import * as ServiceBusTransaction from "../src/ServiceBusTransaction.js"
import { report } from "./util.js"

const count = Number(process.env.N ?? 1000)
const warmup = 50
const concurrency = Number(process.env.C ?? 1)
const body = { id: "00000000-0000-0000-0000-000000000000", type: "AccountOpened", amount: 100 }

const emulator = await start({
  queues: [{ name: "in-raw" }, { name: "out-raw" }, { name: "in-tx" }, { name: "out-tx" }]
})
const client = new ServiceBusClient(Redacted.value(emulator.connectionString))

const seed = async (queue: string, n: number) => {
  const sender = client.createSender(queue)
  for (let i = 0; i < n; i += 100) {
    await sender.sendMessages(Array.from({ length: Math.min(100, n - i) }, (_, j) => ({ body, messageId: `${i + j}` })))
  }
  await sender.close()
}

// Each worker takes one message at a time until `n` messages are processed in all.
const workers = async (n: number, work: (worker: number) => Promise<boolean>) => {
  let remaining = n
  await Promise.all(Array.from({ length: concurrency }, async (_, worker) => {
    while (remaining > 0) {
      remaining--
      if (!(await work(worker))) remaining++
    }
  }))
}

const raw = async (n: number): Promise<number> => {
  await seed("in-raw", n)
  // An SDK receiver serves one receive call at a time: one receiver per worker.
  const receivers = Array.from({ length: concurrency }, () => client.createReceiver("in-raw"))
  const sender = client.createSender("out-raw")
  const started = performance.now()
  await workers(n, async (worker) => {
    const receiver = receivers[worker]
    const [message] = await receiver.receiveMessages(1, { maxWaitTimeInMs: 5000 })
    if (message === undefined) return false
    await receiver.completeMessage(message)
    await sender.sendMessages({ body, messageId: `out-${String(message.messageId)}` })
    return true
  })
  const ms = performance.now() - started
  await Promise.all(receivers.map((receiver) => receiver.close()))
  await sender.close()
  return ms
}

const ours = (n: number): Promise<number> =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    yield* Effect.promise(() => seed("in-tx", n))
    const session = yield* ServiceBusTransaction.makeSession({
      connection: { connectionString: emulator.connectionString },
      entity: MessageReceiver.queue("in-tx"),
      destinations: ["out-tx"]
    })
    const started = performance.now()
    // The same work split as `workers`, with each worker one fiber, as an Effect program runs it.
    let remaining = n
    yield* Effect.all(
      Array.from({ length: concurrency }, () =>
        Effect.gen(function*() {
          while (remaining > 0) {
            remaining--
            const [message] = yield* session.receive(1, { maxWait: "5 seconds", maxWaitAfterFirst: 0 })
            if (message === undefined) {
              remaining++
              continue
            }
            yield* ServiceBusTransaction.run(session, (tx) =>
              Effect.zipRight(
                tx.complete(message),
                tx.send("out-tx", { body, messageId: `out-${message.messageId}` })
              ))
          }
        })),
      { concurrency: "unbounded", discard: true }
    )
    return performance.now() - started
  })))

// Each side runs `rounds` times, alternating, and keeps its best round: on a shared machine a
// single round mostly measures the neighbours. CPU time (this process: clients and emulator) per
// message is reported alongside, as it depends less on the machine's load.
const rounds = Number(process.env.ROUNDS ?? 3)
const measure = async (f: (n: number) => Promise<number>) => {
  const cpu = process.cpuUsage()
  const ms = await f(count)
  const used = process.cpuUsage(cpu)
  return { ms, cpuMicros: (used.user + used.system) / count }
}
await raw(warmup)
await ours(warmup)
const best = { raw: { ms: Infinity, cpuMicros: Infinity }, ours: { ms: Infinity, cpuMicros: Infinity } }
for (let round = 0; round < rounds; round++) {
  const r = await measure(raw)
  const o = await measure(ours)
  if (r.ms < best.raw.ms) best.raw = r
  if (o.ms < best.ours.ms) best.ours = o
}
const rate = (ms: number) => (count * 1000) / ms
const check = async (queue: string) => (await Effect.runPromise(emulator.admin.counts(queue))).active
report(
  "tx-complete-send",
  rate(best.ours.ms) / rate(best.raw.ms),
  ">=",
  0.5,
  `${count} messages, concurrency ${concurrency}, best of ${rounds}: transactional ${
    rate(best.ours.ms).toFixed(0)
  } msg/s ` +
    `(${best.ours.cpuMicros.toFixed(0)} us CPU/msg), raw SDK complete-then-send ${
      rate(best.raw.ms).toFixed(0)
    } msg/s ` +
    `(${best.raw.cpuMicros.toFixed(0)} us CPU/msg); ` +
    `left in inputs ${await check("in-raw")}/${await check("in-tx")}, ` +
    `outputs ${await check("out-raw")}/${await check("out-tx")}`
)
await client.close()
await emulator.close()

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
    yield* Effect.promise(() =>
      workers(n, () =>
        Effect.runPromise(Effect.gen(function*() {
          const [message] = yield* session.receive(1, { maxWait: "5 seconds", maxWaitAfterFirst: 0 })
          if (message === undefined) return false
          yield* ServiceBusTransaction.run(session, (tx) =>
            Effect.zipRight(
              tx.complete(message),
              tx.send("out-tx", { body, messageId: `out-${message.messageId}` })
            ))
          return true
        })))
    )
    return performance.now() - started
  })))

await raw(warmup)
await ours(warmup)
const rawMs = await raw(count)
const oursMs = await ours(count)
const rate = (ms: number) => (count * 1000) / ms
const check = async (queue: string) => (await Effect.runPromise(emulator.admin.counts(queue))).active
report(
  "tx-complete-send",
  rate(oursMs) / rate(rawMs),
  ">=",
  0.5,
  `${count} messages, concurrency ${concurrency}: transactional ${rate(oursMs).toFixed(0)} msg/s, ` +
    `raw SDK complete-then-send ${rate(rawMs).toFixed(0)} msg/s; ` +
    `left in inputs ${await check("in-raw")}/${await check("in-tx")}, ` +
    `outputs ${await check("out-raw")}/${await check("out-tx")}`
)
await client.close()
await emulator.close()

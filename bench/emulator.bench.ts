// Throughput and memory of the Service Bus emulator driven by the official SDK, in process, the
// way the library's own tests and benchmarks use it.
import { ServiceBusClient } from "@azure/service-bus"
import { Effect, Redacted } from "effect"
import { performance } from "node:perf_hooks"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { start } from "../src/emulator/ServiceBusEmulator.js"

setFlagsFromString("--expose-gc")
const gc = runInNewContext("gc") as () => void

const emulator = await start({ queues: [{ name: "bench" }, { name: "single" }, { name: "memory" }] })
const client = new ServiceBusClient(Redacted.value(emulator.connectionString))

const rate = (count: number, ms: number) => Math.round((count * 1000) / ms)
const body = { id: "00000000-0000-0000-0000-000000000000", type: "AccountOpened", amount: 100 }

// Single sends, one at a time: the round trip of one send.
{
  const sender = client.createSender("single")
  await sender.sendMessages({ body })
  const count = 2000
  const started = performance.now()
  for (let i = 0; i < count; i++) await sender.sendMessages({ body, messageId: `s-${i}` })
  console.log(`emulator send (one message per call, sequential): ${rate(count, performance.now() - started)} msg/s`)
  await sender.close()
}

// Batches of 100 from 4 concurrent senders.
const total = 40_000
{
  const senders = Array.from({ length: 4 }, () => client.createSender("bench"))
  await Promise.all(senders.map((s) => s.sendMessages({ body })))
  const started = performance.now()
  await Promise.all(senders.map(async (sender, si) => {
    for (let i = 0; i < total / senders.length / 100; i++) {
      await sender.sendMessages(Array.from({ length: 100 }, (_, j) => ({ body, messageId: `${si}-${i}-${j}` })))
    }
  }))
  console.log(`emulator send (batches of 100, 4 senders): ${rate(total, performance.now() - started)} msg/s`)
  await Promise.all(senders.map((s) => s.close()))
}

// Peek-lock receive and complete, with the SDK's subscribe and 32 concurrent handlers.
{
  const expected = total + 4
  const receiver = client.createReceiver("bench", { maxAutoLockRenewalDurationInMs: 0 })
  let completed = 0
  const started = performance.now()
  await new Promise<void>((resolve, reject) => {
    const subscription = receiver.subscribe({
      processMessage: async () => {
        if (++completed === expected) {
          void subscription.close().then(resolve)
        }
      },
      processError: async (args) => reject(args.error)
    }, { maxConcurrentCalls: 32 })
  })
  const elapsed = performance.now() - started
  console.log(`emulator receive and complete (peek-lock, 32 concurrent): ${rate(expected, elapsed)} msg/s`)
  await receiver.close()
}

// Receive-and-delete in batches of 500.
{
  const sender = client.createSender("bench")
  for (let i = 0; i < 20_000 / 500; i++) await sender.sendMessages(Array.from({ length: 500 }, () => ({ body })))
  const receiver = client.createReceiver("bench", { receiveMode: "receiveAndDelete" })
  let received = 0
  const started = performance.now()
  while (received < 20_000) received += (await receiver.receiveMessages(500, { maxWaitTimeInMs: 1000 })).length
  console.log(
    `emulator receive (receive-and-delete, batches of 500): ${rate(received, performance.now() - started)} msg/s`
  )
  await receiver.close()
  await sender.close()
}

// Heap with 100,000 messages queued.
{
  gc()
  const before = process.memoryUsage().heapUsed
  const sender = client.createSender("memory")
  const queued = 100_000
  for (let i = 0; i < queued / 500; i++) {
    await sender.sendMessages(Array.from({ length: 500 }, (_, j) => ({ body, messageId: `m-${i}-${j}` })))
  }
  gc()
  const after = process.memoryUsage().heapUsed
  const counts = await Effect.runPromise(emulator.admin.counts("memory"))
  if (counts.active !== queued) throw new Error(`expected ${queued} queued messages, found ${counts.active}`)
  const mb = (after - before) / (1024 * 1024)
  console.log(
    `emulator heap with ${queued} messages queued: ${mb.toFixed(1)} MB (${
      Math.round((after - before) / queued)
    } bytes/message, ` +
      `rss ${(process.memoryUsage().rss / (1024 * 1024)).toFixed(0)} MB)`
  )
  await sender.close()
}

await client.close()
await emulator.close()

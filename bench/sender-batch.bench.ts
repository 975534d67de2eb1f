// Sending one batch of 100 messages of 1 KB through MessageSender (Service Bus adapter) against
// the raw SDK's `sendMessages` with the same messages, same in-process emulator, one connection
// each, rounds alternated. Reports throughput ours / raw.
import type { ServiceBusMessage } from "@azure/service-bus"
import { ServiceBusClient as SdkClient } from "@azure/service-bus"
import { Exit, Layer, ManagedRuntime, Redacted } from "effect"
import { ServiceBusEmulator } from "../src/emulator/index.js"
import type { OutgoingMessage } from "../src/Message.js"
import * as MessageSender from "../src/MessageSender.js"
import * as ServiceBusClient from "../src/ServiceBusClient.js"
import { compare, median, quantile, report } from "./util.js"

const batchSize = 100
// Messages expire quickly so the emulator does not accumulate the whole run in memory.
const emulator = await ServiceBusEmulator.start({
  queues: [
    { name: "bench-ours", defaultMessageTimeToLive: 2_000 },
    { name: "bench-raw", defaultMessageTimeToLive: 2_000 }
  ]
})

const body = (i: number) => ({
  orderId: `order-${i.toString().padStart(6, "0")}`,
  customerId: "customer-7781",
  lines: [{ sku: "SKU-1", quantity: 2, price: 1250 }],
  // Padding to about 1 KB of JSON.
  notes: "n".repeat(880)
})

const ourMessages: ReadonlyArray<OutgoingMessage> = Array.from({ length: batchSize }, (_, i) => ({
  body: body(i),
  messageId: `ours-${i}`,
  subject: "OrderPlaced",
  correlationId: "corr-1"
}))
const rawMessages: Array<ServiceBusMessage> = Array.from({ length: batchSize }, (_, i) => ({
  body: body(i),
  messageId: `raw-${i}`,
  subject: "OrderPlaced",
  correlationId: "corr-1",
  contentType: "application/json"
}))

const runtime = ManagedRuntime.make(
  MessageSender.layerServiceBus().pipe(
    Layer.provide(ServiceBusClient.layer({ connectionString: emulator.connectionString }))
  )
)
const raw = new SdkClient(Redacted.value(emulator.connectionString), {
  retryOptions: ServiceBusClient.sdkRetryOptions()
})

try {
  const sender = await runtime.runPromise(MessageSender.MessageSender)
  const rawSender = raw.createSender("bench-raw")
  const ours = async () => {
    const exit = await runtime.runPromiseExit(sender.send("bench-ours", ourMessages))
    if (Exit.isFailure(exit)) throw new Error(String(exit.cause))
  }
  const theirs = () => rawSender.sendMessages(rawMessages)

  const { ours: oursTimes, theirs: rawTimes } = await compare(ours, theirs, {
    iterations: 1000,
    rounds: 20,
    warmup: 50
  })
  // Same batch size on both sides: throughput ratio = raw time / our time.
  const ratio = median(rawTimes) / median(oursTimes)
  const throughput = (times: ReadonlyArray<number>) => ((batchSize * 1000) / median(times)).toFixed(0)
  report(
    "sender-batch",
    ratio,
    ">=",
    0.9,
    `median per batch of ${batchSize}: ours ${median(oursTimes).toFixed(3)} ms (${throughput(oursTimes)} msg/s), raw ${
      median(rawTimes).toFixed(3)
    } ms (${throughput(rawTimes)} msg/s); p90 ours ${quantile(oursTimes, 0.9).toFixed(3)} ms, raw ${
      quantile(rawTimes, 0.9).toFixed(3)
    } ms; ${oursTimes.length} batches each`
  )
  await rawSender.close()
} finally {
  await raw.close()
  await runtime.dispose()
  await emulator.close()
}

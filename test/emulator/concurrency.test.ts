// Many senders and receivers on many connections, interleaved at random: every message must be
// delivered and settled exactly once.
import type { ServiceBusReceiver } from "@azure/service-bus"
import { ServiceBusClient } from "@azure/service-bus"
import { assert, describe, it } from "@effect/vitest"
import { Effect, FastCheck, Redacted } from "effect"
import { emulator } from "./support.js"

interface Scenario {
  readonly senders: ReadonlyArray<{ readonly batches: ReadonlyArray<number> }>
  readonly receivers: ReadonlyArray<{
    readonly mode: "peekLock" | "receiveAndDelete"
    readonly batch: number
    readonly abandonEvery: number
  }>
}

const scenario: FastCheck.Arbitrary<Scenario> = FastCheck.record({
  senders: FastCheck.array(
    FastCheck.record({
      batches: FastCheck.array(FastCheck.integer({ min: 1, max: 12 }), { minLength: 1, maxLength: 5 })
    }),
    {
      minLength: 1,
      maxLength: 4
    }
  ),
  receivers: FastCheck.array(
    FastCheck.record({
      mode: FastCheck.constantFrom("peekLock" as const, "peekLock" as const, "receiveAndDelete" as const),
      batch: FastCheck.integer({ min: 1, max: 10 }),
      abandonEvery: FastCheck.integer({ min: 0, max: 4 })
    }),
    { minLength: 1, maxLength: 4 }
  )
})

describe("ServiceBusEmulator under concurrency", () => {
  it.scopedLive(
    "delivers and settles every message exactly once over random interleavings",
    () =>
      Effect.gen(function*() {
        const emu = yield* emulator({})
        const connectionString = Redacted.value(emu.connectionString)
        let run = 0
        const property = FastCheck.asyncProperty(scenario, async ({ receivers, senders }) => {
          const queue = `work-${run++}`
          await Effect.runPromise(emu.admin.createQueue({ name: queue, maxDeliveryCount: 1000 }))
          const clients: Array<ServiceBusClient> = []
          const open = () => {
            const c = new ServiceBusClient(connectionString, { retryOptions: { maxRetries: 1, retryDelayInMs: 50 } })
            clients.push(c)
            return c
          }
          const total = senders.reduce((n, s) => n + s.batches.reduce((a, b) => a + b, 0), 0)
          const settled = new Map<string, number>()
          const failures: Array<string> = []
          const deadline = Date.now() + 15_000
          try {
            const sending = senders.map(async (s, si) => {
              const sender = open().createSender(queue)
              let i = 0
              for (const size of s.batches) {
                const batch = Array.from({ length: size }, () => ({ body: i, messageId: `s${si}-${i++}` }))
                await sender.sendMessages(batch)
              }
            })
            const receiving = receivers.map(async (r) => {
              const receiver: ServiceBusReceiver = open().createReceiver(queue, {
                receiveMode: r.mode,
                maxAutoLockRenewalDurationInMs: 0
              })
              let seen = 0
              while (settled.size < total && Date.now() < deadline) {
                const messages = await receiver.receiveMessages(r.batch, { maxWaitTimeInMs: 100 })
                for (const message of messages) {
                  const id = String(message.messageId)
                  seen++
                  if (r.mode === "receiveAndDelete") {
                    settled.set(id, (settled.get(id) ?? 0) + 1)
                  } else if (r.abandonEvery > 0 && message.deliveryCount === 0 && seen % r.abandonEvery === 0) {
                    await receiver.abandonMessage(message)
                  } else {
                    await receiver.completeMessage(message).then(
                      () => settled.set(id, (settled.get(id) ?? 0) + 1),
                      (e: unknown) => failures.push(`complete ${id}: ${String(e)}`)
                    )
                  }
                }
              }
            })
            await Promise.all([...sending, ...receiving])
          } finally {
            await Promise.all(clients.map((c) => c.close()))
          }
          assert.deepStrictEqual(failures, [])
          assert.strictEqual(settled.size, total)
          assert.isTrue([...settled.values()].every((n) => n === 1), "a message was settled twice")
          const counts = await Effect.runPromise(emu.admin.counts(queue))
          assert.deepStrictEqual(counts, { active: 0, locked: 0, deferred: 0, scheduled: 0, deadLettered: 0 })
        })
        yield* Effect.promise(() => FastCheck.assert(property, { numRuns: 12 }))
      }),
    90_000
  )
})

// The Service Bus adapters when an SDK call never answers (as after a dropped connection): every
// call is bounded by the operation timeout and retried on a fresh link, and everything arrives once.
import { ServiceBusClient as SdkClient } from "@azure/service-bus"
import type { ServiceBusReceiver, ServiceBusSender } from "@azure/service-bus"
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Layer, Redacted, Schedule } from "effect"
import { ServiceBusEmulator } from "../src/emulator/index.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import * as MessageSender from "../src/MessageSender.js"
import * as ServiceBusClient from "../src/ServiceBusClient.js"

const retry = Schedule.spaced("50 millis").pipe(Schedule.intersect(Schedule.recurs(40)), Schedule.asVoid)

const ports = Layer.mergeAll(MessageSender.layerServiceBus(), MessageReceiver.layerServiceBus())

const elapsed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.map(Effect.timed(effect), ([duration, value]) => [Duration.toMillis(duration), value] as const)

const never = <A>(): Promise<A> => new Promise<A>(() => undefined)

describe("Service Bus under dropped connections", () => {
  it.scopedLive("an SDK call that never answers is bounded by the operation timeout and retried on a fresh link", () =>
    Effect.gen(function*() {
      const emu = yield* ServiceBusEmulator.make({ queues: [{ name: "stuck" }] }).pipe(Effect.orDie)
      const sdk = yield* Effect.acquireRelease(
        Effect.sync(() =>
          new SdkClient(Redacted.value(emu.connectionString), {
            retryOptions: ServiceBusClient.sdkRetryOptions("1 second")
          })
        ),
        (client) => Effect.promise(() => client.close())
      )
      // The first sender and the first receiver hang the way an SDK call stuck behind a
      // reconnection does: their promises never settle.
      let senders = 0
      let receivers = 0
      const createSender = sdk.createSender.bind(sdk)
      sdk.createSender = (queueOrTopic: string, options?: Parameters<typeof createSender>[1]) => {
        const created = createSender(queueOrTopic, options)
        if (senders++ > 0) return created
        return new Proxy(created, {
          get: (target, property, receiver) =>
            property === "createMessageBatch" ? never : Reflect.get(target, property, receiver)
        }) as ServiceBusSender
      }
      const createReceiver = sdk.createReceiver.bind(sdk) as (...args: Array<unknown>) => ServiceBusReceiver
      sdk.createReceiver = ((...args: Array<unknown>) => {
        const created = createReceiver(...args)
        if (receivers++ > 0) return created
        return new Proxy(created, {
          get: (target, property, receiver) =>
            property === "peekMessages" ? never : Reflect.get(target, property, receiver)
        })
      }) as typeof sdk.createReceiver
      const context = yield* Layer.build(
        ports.pipe(
          Layer.provide(Layer.succeed(
            ServiceBusClient.ServiceBusClient,
            ServiceBusClient.fromClient(sdk, { operationTimeout: "1 second", retry })
          ))
        )
      )
      const { send } = yield* Effect.provide(MessageSender.MessageSender, context)
      const receiver = yield* Effect.provide(MessageReceiver.MessageReceiver, context)

      const [sendTook] = yield* elapsed(send("stuck", { body: "once", messageId: "m-1" }))
      assert.isAtLeast(sendTook, 900)
      assert.isBelow(sendTook, 5_000)
      assert.strictEqual(senders, 2, "the stuck sender was replaced")

      const [peekTook, peeked] = yield* elapsed(receiver.peek(MessageReceiver.queue("stuck")))
      assert.isAtLeast(peekTook, 900)
      assert.isBelow(peekTook, 5_000)
      assert.strictEqual(receivers, 2, "the stuck receiver was replaced")
      assert.deepStrictEqual(peeked.map((message) => message.messageId), ["m-1"])
    }))
})

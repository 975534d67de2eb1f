// The Service Bus adapters against the in-repo emulator, through the official SDK: the messaging
// conformance suite, authentication (SAS and a token credential), configuration, and the checks
// that the memory layers refuse exactly what Service Bus refuses.
import type { AccessToken, TokenCredential } from "@azure/identity"
import { assert, describe, it } from "@effect/vitest"
import {
  ConfigProvider,
  Context,
  Duration,
  Effect,
  Exit,
  Layer,
  Option,
  Queue,
  Redacted,
  Schedule,
  Stream
} from "effect"
import { ServiceBusEmulator } from "../src/emulator/index.js"
import type { OutgoingMessage } from "../src/Message.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import * as MessageSender from "../src/MessageSender.js"
import * as ServiceBusClient from "../src/ServiceBusClient.js"
import type { Entities } from "./conformance/MessagingSuite.js"
import { MessagingFaults, messagingSuite } from "./conformance/MessagingSuite.js"

const millis = (input: Duration.DurationInput | undefined) =>
  input === undefined ? undefined : Duration.toMillis(Duration.decode(input))

const emulatorOptions = (entities: Entities, options: ServiceBusEmulator.Options = {}): ServiceBusEmulator.Options => ({
  ...options,
  queues: (entities.queues ?? []).map((queue) => ({
    name: queue.name,
    lockDuration: millis(queue.lockDuration),
    maxDeliveryCount: queue.maxDeliveryCount,
    requiresDuplicateDetection: queue.requiresDuplicateDetection,
    duplicateDetectionHistoryTimeWindow: millis(queue.duplicateDetectionHistoryTimeWindow)
  })),
  topics: (entities.topics ?? []).map((topic) => ({
    name: topic.name,
    subscriptions: topic.subscriptions.map((subscription) => ({
      name: subscription.name,
      lockDuration: millis(subscription.lockDuration)
    }))
  }))
})

const emulator = (entities: Entities, options: ServiceBusEmulator.Options = {}) =>
  ServiceBusEmulator.layer(emulatorOptions(entities, options))

const clientFor = (options: Partial<ServiceBusClient.ServiceBusClientOptions> = {}) =>
  Layer.unwrapScoped(
    Effect.map(ServiceBusEmulator.ServiceBusEmulator, (running) =>
      ServiceBusClient.layer({
        connectionString: running.connectionString,
        operationTimeout: "10 seconds",
        ...options
      }))
  )

const ports = Layer.mergeAll(MessageSender.layerServiceBus(), MessageReceiver.layerServiceBus())

const serviceBus = (entities: Entities) => {
  const faults = Layer.effect(
    MessagingFaults,
    Effect.map(ServiceBusEmulator.ServiceBusEmulator, (running) => ({
      refuseNextSends: (count: number) => running.faults.refuseNext(count)
    }))
  )
  return Layer.mergeAll(ports, faults).pipe(
    Layer.provideMerge(clientFor()),
    Layer.provideMerge(emulator(entities))
  )
}

messagingSuite("Messaging (Service Bus emulator)", serviceBus)

const plain = (messageId: string): OutgoingMessage => ({ body: { id: messageId }, messageId })

/** A JWT with the right shape; the emulator checks the shape, as it cannot check Entra ID's signature. */
const fakeJwt = (): string => {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url")
  return `${part({ alg: "RS256", typ: "JWT" })}.${part({ aud: "https://servicebus.azure.net", exp: 4102444800 })}.c2ln`
}

const sendAndReceive = Effect.gen(function*() {
  const sender = yield* MessageSender.MessageSender
  const receiver = yield* MessageReceiver.MessageReceiver
  yield* sender.send("orders", plain("auth"))
  const [delivery] = yield* receiver.receive(MessageReceiver.queue("orders"), { maxWaitTime: "5 seconds" })
  assert.strictEqual(delivery.message.messageId, "auth")
  yield* delivery.complete
})

describe("ServiceBusClient", () => {
  const key = "s3cr3t-key-value"
  const orders: Entities = { queues: [{ name: "orders" }] }

  it.live("authenticates with a SAS connection string", () =>
    Effect.scoped(sendAndReceive).pipe(
      Effect.provide(
        ports.pipe(Layer.provideMerge(clientFor()), Layer.provideMerge(emulator(orders, { sharedAccessKey: key })))
      )
    ))

  it.live("a wrong key fails with Unauthorized, without the key in the message", () =>
    Effect.gen(function*() {
      const running = yield* ServiceBusEmulator.ServiceBusEmulator
      const wrong = ServiceBusEmulator.connectionStringFor(
        running.host,
        running.port,
        "RootManageSharedAccessKey",
        "wrong-key"
      )
      const error = yield* MessageSender.MessageSender.pipe(
        Effect.flatMap((sender) => sender.send("orders", plain("refused"))),
        Effect.provide(ports.pipe(Layer.provideMerge(clientFor({ connectionString: wrong })))),
        Effect.flip
      )
      assert.strictEqual(error._tag, "Unauthorized")
      assert.notInclude(error.message, "wrong-key")
      assert.notInclude(error.message, key)
    }).pipe(Effect.provide(emulator(orders, { sharedAccessKey: key }))))

  it.live("authenticates with a TokenCredential (a JWT) and a namespace", () =>
    Effect.gen(function*() {
      const running = yield* ServiceBusEmulator.ServiceBusEmulator
      const scopes: Array<string> = []
      const credential: TokenCredential = {
        getToken: async (scope): Promise<AccessToken> => {
          scopes.push(...(Array.isArray(scope) ? scope : [scope]))
          return { token: fakeJwt(), expiresOnTimestamp: Date.now() + 3_600_000 }
        }
      }
      yield* Effect.scoped(sendAndReceive).pipe(
        Effect.provide(
          ports.pipe(
            Layer.provideMerge(ServiceBusClient.layer({
              fullyQualifiedNamespace: `${running.host}:${running.port}`,
              credential,
              useDevelopmentEmulator: true,
              operationTimeout: "10 seconds"
            }))
          )
        )
      )
      assert.include(scopes, "https://servicebus.azure.net//.default")
    }).pipe(Effect.provide(emulator(orders, { sharedAccessKey: key }))))

  it.live("layerConfig reads SERVICEBUS_CONNECTION_STRING", () =>
    Effect.gen(function*() {
      const running = yield* ServiceBusEmulator.ServiceBusEmulator
      const provider = ConfigProvider.fromMap(
        new Map([["SERVICEBUS_CONNECTION_STRING", Redacted.value(running.connectionString)]])
      )
      yield* Effect.scoped(sendAndReceive).pipe(
        Effect.provide(ports.pipe(Layer.provideMerge(ServiceBusClient.layerConfig(ServiceBusClient.config)))),
        Effect.withConfigProvider(provider)
      )
    }).pipe(Effect.provide(emulator(orders))))

  it.effect("config reads the namespace when there is no connection string", () =>
    Effect.gen(function*() {
      const options = yield* ServiceBusClient.config.pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["SERVICEBUS_NAMESPACE", "contoso"]])))
      )
      assert.deepStrictEqual(options, { fullyQualifiedNamespace: "contoso" })
      const empty = yield* ServiceBusClient.config.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map())))
      assert.deepStrictEqual(empty, {})
    }))

  it.scoped("refuses a malformed connection string without echoing its secret", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(
        ServiceBusClient.make({ connectionString: Redacted.make("SharedAccessKey=topsecret;nonsense") })
      )
      assert.strictEqual(error._tag, "ServiceBusFailure")
      assert.notInclude(error.message, "topsecret")
      const neither = yield* Effect.flip(ServiceBusClient.make({}))
      assert.include(neither.message, "SERVICEBUS_CONNECTION_STRING")
    }))

  it.live("fromClient does not close the caller's client", () =>
    Effect.gen(function*() {
      const running = yield* ServiceBusEmulator.ServiceBusEmulator
      const { ServiceBusClient: SdkClient } = yield* Effect.promise(() => import("@azure/service-bus"))
      const sdk = new SdkClient(Redacted.value(running.connectionString), {
        retryOptions: ServiceBusClient.sdkRetryOptions("10 seconds")
      })
      yield* Effect.addFinalizer(() => Effect.promise(() => sdk.close()))
      const layer = ports.pipe(
        Layer.provide(Layer.succeed(ServiceBusClient.ServiceBusClient, ServiceBusClient.fromClient(sdk)))
      )
      yield* Effect.scoped(sendAndReceive).pipe(Effect.provide(layer))
      yield* Effect.scoped(sendAndReceive).pipe(Effect.provide(layer))
    }).pipe(Effect.scoped, Effect.provide(emulator(orders))))

  it.live("closing the client's scope closes its senders", () =>
    Effect.gen(function*() {
      const layer = ports.pipe(Layer.provideMerge(clientFor()))
      const sender = yield* Effect.scoped(
        Layer.build(layer).pipe(
          Effect.map((context) => Option.getOrThrow(Context.getOption(context, MessageSender.MessageSender)))
        )
      )
      const exit = yield* Effect.exit(sender.send("orders", plain("late")))
      assert.isTrue(Exit.isFailure(exit))
    }).pipe(Effect.provide(emulator(orders))))
})

describe("Service Bus adapter under faults", () => {
  const orders: Entities = { queues: [{ name: "orders" }] }
  // A send in flight when the socket drops is only failed by the SDK at its operation timeout
  // (then retried), so the timeout is short here.
  const layer = ports.pipe(
    Layer.provideMerge(clientFor({ operationTimeout: "2 seconds" })),
    Layer.provideMerge(emulator(orders))
  )

  for (const abrupt of [false, true]) {
    it.live(`sends and receives again after the connection is ${abrupt ? "dropped" : "closed by the broker"}`, () =>
      Effect.gen(function*() {
        const running = yield* ServiceBusEmulator.ServiceBusEmulator
        const sender = yield* MessageSender.MessageSender
        const receiver = yield* MessageReceiver.MessageReceiver
        yield* sender.send("orders", plain("before"))
        const closed = yield* running.faults.closeConnections({ abrupt })
        assert.isAbove(closed, 0)
        yield* sender.send("orders", plain("after"))
        const received = yield* Effect.scoped(
          receiver.receive(MessageReceiver.queue("orders"), { maxMessages: 2, maxWaitTime: "5 seconds" }).pipe(
            Effect.tap((deliveries) => Effect.forEach(deliveries, (delivery) => delivery.complete))
          )
        )
        assert.deepStrictEqual(received.map((delivery) => delivery.message.messageId), ["before", "after"])
      }).pipe(Effect.provide(layer)))
  }

  it.live("a running stream carries on after the broker closes the connection", () =>
    Effect.gen(function*() {
      const running = yield* ServiceBusEmulator.ServiceBusEmulator
      const sender = yield* MessageSender.MessageSender
      const receiver = yield* MessageReceiver.MessageReceiver
      const received = yield* Queue.unbounded<string>()
      yield* receiver.stream(MessageReceiver.queue("orders"), { maxMessages: 1, maxWaitTime: "1 second" }).pipe(
        Stream.mapEffect((delivery) =>
          Effect.zipRight(delivery.complete, Queue.offer(received, delivery.message.messageId!))
        ),
        Stream.runDrain,
        Effect.forkScoped
      )
      yield* sender.send("orders", plain("first"))
      assert.strictEqual(yield* Queue.take(received), "first")
      yield* running.faults.closeConnections()
      yield* sender.send("orders", plain("second"))
      assert.strictEqual(yield* Queue.take(received), "second")
    }).pipe(Effect.scoped, Effect.provide(layer)))

  it.live("a slow broker makes a send time out with OperationTimeout after the retries", () =>
    Effect.gen(function*() {
      const running = yield* ServiceBusEmulator.ServiceBusEmulator
      const sender = yield* MessageSender.MessageSender
      yield* sender.send("orders", plain("warm"))
      yield* running.faults.delay("3 seconds")
      const error = yield* Effect.flip(sender.send("orders", plain("slow")))
      assert.strictEqual(error._tag, "OperationTimeout")
      yield* running.faults.reset
    }).pipe(
      Effect.provide(
        MessageSender.layerServiceBus({ retry: Schedule.recurs(1) }).pipe(
          Layer.provideMerge(clientFor({ operationTimeout: "500 millis" })),
          Layer.provideMerge(emulator(orders))
        )
      )
    ), 20_000)
})

describe("memory and Service Bus refuse the same batches", () => {
  const messages = Array.from({ length: 400 }, (_, i): OutgoingMessage => ({
    body: { id: i, text: "y".repeat(600 + (i % 7) * 50) },
    messageId: `m-${i}`,
    subject: "Sized",
    applicationProperties: { index: i }
  }))
  const fitting = (layer: Layer.Layer<MessageSender.MessageSender, unknown>) =>
    MessageSender.MessageSender.pipe(
      Effect.flatMap((sender) => Effect.flip(sender.send("orders", messages))),
      Effect.map((error) => (error._tag === "BatchTooLarge" ? error.fitting : -1)),
      Effect.provide(layer)
    )

  it.live("BatchTooLarge counts the same fitting messages", () =>
    Effect.gen(function*() {
      const memory = yield* fitting(MessageSender.layerMemory({ queues: ["orders"] }))
      const serviceBus = yield* fitting(
        MessageSender.layerServiceBus().pipe(
          Layer.provide(clientFor()),
          Layer.provide(emulator({ queues: [{ name: "orders" }] }))
        )
      )
      assert.isAbove(memory, 0)
      assert.strictEqual(memory, serviceBus)
    }))
})

// The processor conformance suite against the in-repo emulator, in idempotent and atomic mode.
import { Context, Effect } from "effect"
import { ServiceBusEmulator } from "../src/emulator/index.js"
import * as MessageProcessor from "../src/MessageProcessor.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import * as MessageSender from "../src/MessageSender.js"
import * as ServiceBusClient from "../src/ServiceBusClient.js"
import type { QueueDefinition } from "./conformance/ProcessorSuite.js"
import { processorSuite } from "./conformance/ProcessorSuite.js"

const start = (queues: ReadonlyArray<QueueDefinition>) =>
  Effect.gen(function*() {
    const emulator = yield* ServiceBusEmulator.make({ queues }).pipe(Effect.orDie)
    const client = yield* ServiceBusClient.make({ connectionString: emulator.connectionString }).pipe(Effect.orDie)
    const receiver = yield* MessageReceiver.makeServiceBus().pipe(
      Effect.provideService(ServiceBusClient.ServiceBusClient, client)
    )
    const sender = yield* MessageSender.makeServiceBus().pipe(
      Effect.provideService(ServiceBusClient.ServiceBusClient, client)
    )
    const context = Context.make(MessageReceiver.MessageReceiver, receiver).pipe(
      Context.add(MessageSender.MessageSender, sender)
    )
    return { emulator, context, connection: { connectionString: emulator.connectionString } }
  })

processorSuite(
  "MessageProcessor (emulator, idempotent)",
  (queues) =>
    Effect.map(start(queues), ({ connection, context }) => ({
      transport: MessageProcessor.idempotent({ connection }),
      context
    }))
)

processorSuite(
  "MessageProcessor (emulator, atomic)",
  (queues) =>
    Effect.map(start(queues), ({ connection, context }) => ({
      transport: MessageProcessor.atomic({ connection }),
      context
    }))
)

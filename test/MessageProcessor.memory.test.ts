// The processor conformance suite in memory mode, over the memory receiver and sender.
import { Context, Effect, Layer } from "effect"
import * as MessageProcessor from "../src/MessageProcessor.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import * as MessageSender from "../src/MessageSender.js"
import { processorSuite } from "./conformance/ProcessorSuite.js"

processorSuite("MessageProcessor (memory)", (queues) =>
  Effect.gen(function*() {
    const layer = MessageReceiver.layerMemory.pipe(Layer.provideMerge(MessageSender.layerMemory({ queues })))
    const context = yield* Layer.build(layer)
    return {
      transport: MessageProcessor.memory,
      context: Context.pick(MessageReceiver.MessageReceiver, MessageSender.MessageSender)(context)
    }
  }))

// The sender service shared by the memory and Service Bus implementations: argument handling,
// trace propagation, validation and encoding, and the span; the backend packs and transfers.
import { Effect, Option, Tracer } from "effect"
import type { OutgoingMessage } from "../Message.js"
import { traceparentOf } from "../Message.js"
import type { MessageSenderService, SendResult } from "../MessageSender.js"
import type { SendError } from "../ServiceBusError.js"
import type { Checked } from "./messageCodec.js"
import { checkAll } from "./messageCodec.js"
import { withSpanIfTracing } from "./tracing.js"

export interface SenderBackend {
  readonly send: (
    destination: string,
    messages: ReadonlyArray<Checked>,
    split: boolean
  ) => Effect.Effect<SendResult, SendError>
}

const nothingSent: SendResult = { messageCount: 0, batchCount: 0 }

// The caller's span, if any (read before the send's own span starts): without one there is no
// trace to continue, and the messages stay as they are, as with the SDK when tracing is off.
const withTraceparent = (messages: ReadonlyArray<OutgoingMessage>) =>
  Effect.map(Effect.serviceOption(Tracer.ParentSpan), (span) => {
    const traceparent = Option.getOrUndefined(Option.flatMapNullable(span, traceparentOf))
    return traceparent === undefined
      ? messages
      : messages.map((message) => message.traceparent === undefined ? { ...message, traceparent } : message)
  })

export const make = (backend: SenderBackend): MessageSenderService => ({
  send: (destination, input, options) => {
    const messages: ReadonlyArray<OutgoingMessage> = Array.isArray(input) ? input : [input as OutgoingMessage]
    if (messages.length === 0) return Effect.succeed(nothingSent)
    return withTraceparent(messages).pipe(
      Effect.flatMap((messages) =>
        checkAll(destination, messages).pipe(
          Effect.flatMap((checked) => backend.send(destination, checked, options?.split === true)),
          // No stack trace capture: it would cost more than the rest of the span on every send.
          (effect) =>
            withSpanIfTracing(effect, "MessageSender.send", () => ({
              captureStackTrace: false,
              attributes: {
                entity: destination,
                messageId: messages[0].messageId,
                messageCount: messages.length
              }
            }))
        )
      )
    )
  }
})

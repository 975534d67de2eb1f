import { MessagingError } from "@azure/core-amqp"
import { ServiceBusError as SdkServiceBusError } from "@azure/service-bus"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Ref, Schema, TestClock } from "effect"
import { retryTransient } from "../src/internal/messageRetry.js"
import { fromSdkError, receiveError, redact, sendError, settleError } from "../src/internal/serviceBusErrors.js"
import * as ServiceBusClient from "../src/ServiceBusClient.js"
import * as ServiceBusError from "../src/ServiceBusError.js"

const context = { operation: "send", entity: "orders", messageId: "m-1", lockToken: "token-1" }

describe("ServiceBusError", () => {
  it("maps every @azure/service-bus code to a tag, and classifies it", () => {
    const expected: ReadonlyArray<readonly [string, string, boolean]> = [
      ["ServiceBusy", "ServerBusy", true],
      ["ServiceTimeout", "OperationTimeout", true],
      ["ServiceCommunicationProblem", "ConnectionLost", true],
      ["MessagingEntityNotFound", "EntityNotFound", false],
      ["UnauthorizedAccess", "Unauthorized", false],
      ["MessageSizeExceeded", "MessageTooLarge", false],
      ["MessageLockLost", "MessageLockLost", false],
      ["SessionLockLost", "SessionLockLost", false],
      ["MessageNotFound", "MessageNotFound", false],
      ["QuotaExceeded", "ServiceBusFailure", false],
      ["MessagingEntityDisabled", "ServiceBusFailure", false],
      ["MessagingEntityAlreadyExists", "ServiceBusFailure", false],
      ["SessionCannotBeLocked", "ServiceBusFailure", false]
    ]
    for (const [code, tag, transient] of expected) {
      const error = fromSdkError(new SdkServiceBusError(`failure ${code}`, code as never), context)
      assert.strictEqual(error._tag, tag, code)
      assert.strictEqual(ServiceBusError.isTransient(error), transient, code)
    }
  })

  it("uses the SDK's retryable flag for GeneralError", () => {
    const retryable = new SdkServiceBusError("InternalServerError: boom", "GeneralError")
    retryable.retryable = true
    assert.strictEqual(fromSdkError(retryable, context)._tag, "ServiceBusUnavailable")
    const permanent = new SdkServiceBusError("ArgumentError: bad", "GeneralError")
    permanent.retryable = false
    assert.strictEqual(fromSdkError(permanent, context)._tag, "ServiceBusFailure")
  })

  it("maps core-amqp codes, AMQP conditions and system errors", () => {
    const messaging = (code: string) => Object.assign(new MessagingError("x"), { code })
    assert.strictEqual(fromSdkError(messaging("ServerBusyError"), context)._tag, "ServerBusy")
    assert.strictEqual(fromSdkError(messaging("OperationTimeoutError"), context)._tag, "OperationTimeout")
    assert.strictEqual(fromSdkError(messaging("ConnectionForcedError"), context)._tag, "ConnectionLost")
    assert.strictEqual(fromSdkError(messaging("DetachForcedError"), context)._tag, "ConnectionLost")
    assert.strictEqual(fromSdkError(messaging("SenderBusyError"), context)._tag, "ServiceBusUnavailable")
    assert.strictEqual(fromSdkError(messaging("UnauthorizedError"), context)._tag, "Unauthorized")
    assert.strictEqual(fromSdkError(messaging("MessageLockLostError"), context)._tag, "MessageLockLost")

    const amqp = (condition: string, description = "refused") => ({ condition, description })
    assert.strictEqual(fromSdkError(amqp("com.microsoft:server-busy"), context)._tag, "ServerBusy")
    assert.strictEqual(fromSdkError(amqp("amqp:internal-error"), context)._tag, "ServiceBusUnavailable")
    assert.strictEqual(fromSdkError(amqp("com.microsoft:message-lock-lost"), context)._tag, "MessageLockLost")
    assert.strictEqual(
      fromSdkError(amqp("amqp:not-found", "The messaging entity 'sb://x/orders' could not be found."), context)._tag,
      "EntityNotFound"
    )
    assert.strictEqual(fromSdkError(amqp("amqp:not-found", "link detached"), context)._tag, "ConnectionLost")

    const system = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5672"), { code: "ECONNREFUSED" })
    const refused = fromSdkError(system, context)
    assert.strictEqual(refused._tag, "ConnectionLost")
    // The SDK's own wrapping keeps the system code only in the message.
    const wrapped = new SdkServiceBusError("ECONNRESET: socket hang up", "GeneralError")
    assert.strictEqual(fromSdkError(wrapped, context)._tag, "ConnectionLost")
    // A receive written to a socket that just broke.
    const broken = new SdkServiceBusError("GeneralError: EPIPE: write EPIPE", "GeneralError")
    assert.strictEqual(fromSdkError(broken, context)._tag, "ConnectionLost")

    // rhea-promise's plain errors while a connection opens.
    assert.strictEqual(fromSdkError(new Error("Failed to connect"), context)._tag, "ConnectionLost")
    assert.strictEqual(
      fromSdkError(new Error("Unable to open the amqp connection \"c-1\" due to operation timeout."), context)._tag,
      "OperationTimeout"
    )
    assert.strictEqual(fromSdkError(new Error("The sender has been closed"), context)._tag, "ServiceBusFailure")
    assert.strictEqual(fromSdkError("plain string", context)._tag, "ServiceBusFailure")
  })

  it("keeps the context in the error, and narrows per operation", () => {
    const lost = fromSdkError(new SdkServiceBusError("gone", "MessageLockLost"), context)
    assert.strictEqual(lost._tag, "MessageLockLost")
    if (lost._tag === "MessageLockLost") {
      assert.strictEqual(lost.entity, "orders")
      assert.strictEqual(lost.messageId, "m-1")
      assert.strictEqual(lost.lockToken, "token-1")
    }
    assert.strictEqual(sendError(new SdkServiceBusError("?", "MessageLockLost"), context)._tag, "ServiceBusFailure")
    assert.strictEqual(
      receiveError(new SdkServiceBusError("?", "MessageSizeExceeded"), context)._tag,
      "ServiceBusFailure"
    )
    assert.strictEqual(settleError(new SdkServiceBusError("?", "MessageNotFound"), context)._tag, "MessageLockLost")
    assert.strictEqual(settleError(new SdkServiceBusError("?", "ServiceBusy"), context)._tag, "ServerBusy")
  })

  it("never lets a key through", () => {
    const text = "Endpoint=sb://x/;SharedAccessKeyName=Root;SharedAccessKey=abc+/=;EntityPath=q sig=zzz&se=1"
    const redacted = redact(text)
    assert.notInclude(redacted, "abc+/=")
    assert.notInclude(redacted, "zzz")
    const error = fromSdkError(new Error(text), context)
    assert.notInclude(error.message, "abc+/=")
  })

  it("messages say what happened and what to do", () => {
    const busy = new ServiceBusError.ServerBusy({ operation: "send", entity: "orders", reason: "throttled" })
    assert.include(busy.message, "orders")
    assert.include(busy.message, "transient")
    const batch = new ServiceBusError.BatchTooLarge({
      entity: "orders",
      messageCount: 300,
      fitting: 240,
      maxBytes: 262144
    })
    assert.include(batch.message, "nothing was sent")
    assert.include(batch.message, "split")
  })

  it("errors survive a round trip through their schema", () => {
    const error = new ServiceBusError.MessageNotFound({
      operation: "receiveDeferred",
      entity: "q",
      sequenceNumbers: [3n]
    })
    const schema = Schema.Union(ServiceBusError.MessageNotFound, ServiceBusError.ServerBusy)
    const encoded = Schema.encodeSync(schema)(error)
    assert.deepStrictEqual(Schema.decodeUnknownSync(schema)(encoded), error)
  })

  it.effect("defaultRetry retries a transient failure 6 times, and a permanent one never", () =>
    Effect.gen(function*() {
      const attempts = yield* Ref.make(0)
      const failing = (error: ServiceBusError.ServiceError) =>
        retryTransient(
          Effect.zipRight(Ref.update(attempts, (n) => n + 1), Effect.fail(error)),
          ServiceBusClient.defaultRetry
        )

      const fiber = yield* Effect.fork(failing(new ServiceBusError.ServerBusy({ operation: "send", reason: "busy" })))
      yield* TestClock.adjust("2 minutes")
      const transient = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(transient._tag, "ServerBusy")
      assert.strictEqual(yield* Ref.getAndSet(attempts, 0), 7)

      const permanent = yield* Effect.flip(
        failing(new ServiceBusError.EntityNotFound({ operation: "send", entity: "q" }))
      )
      assert.strictEqual(permanent._tag, "EntityNotFound")
      assert.strictEqual(yield* Ref.get(attempts), 1)
    }))
})

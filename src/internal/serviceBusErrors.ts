// Classifies what `@azure/service-bus` and `@azure/core-amqp` throw into the tagged errors of
// ServiceBusError. The SDK normalizes most failures to a `ServiceBusError` whose `code` is one of
// a dozen names; a few arrive as core-amqp `MessagingError`s (old codes), rhea AMQP errors
// (`condition`), Node system errors (`ECONNRESET`), or plain `Error`s for client misuse.
import {
  ConnectionLost,
  EntityNotFound,
  MessageLockLost,
  MessageNotFound,
  MessageTooLarge,
  OperationTimeout,
  ServerBusy,
  ServiceBusFailure,
  ServiceBusUnavailable,
  SessionLockLost,
  Unauthorized
} from "../ServiceBusError.js"
import type { ReceiveError, SendError, ServiceError, SettleError } from "../ServiceBusError.js"

export interface ErrorContext {
  readonly operation: string
  readonly entity?: string | undefined
  readonly messageId?: string | undefined
  readonly lockToken?: string | undefined
  readonly sessionId?: string | undefined
  readonly sequenceNumbers?: ReadonlyArray<bigint> | undefined
  readonly maxBytes?: number | undefined
}

export type SdkError =
  | ServiceError
  | MessageLockLost
  | SessionLockLost
  | MessageNotFound
  | MessageTooLarge

interface ErrorLike {
  readonly name?: unknown
  readonly code?: unknown
  readonly condition?: unknown
  readonly message?: unknown
  readonly description?: unknown
  readonly retryable?: unknown
}

const asErrorLike = (cause: unknown): ErrorLike =>
  typeof cause === "object" && cause !== null ? (cause as ErrorLike) : { message: String(cause) }

const str = (value: unknown): string | undefined => typeof value === "string" && value.length > 0 ? value : undefined

// The old core-amqp error names and the AMQP conditions they come from, mapped to the
// `@azure/service-bus` codes, so that one switch below classifies all three shapes.
const normalizedCodes: Record<string, string> = {
  // core-amqp MessagingError codes
  ServerBusyError: "ServiceBusy",
  OperationTimeoutError: "ServiceTimeout",
  ServiceUnavailableError: "ServiceTimeout",
  ServiceCommunicationError: "ServiceCommunicationProblem",
  ConnectionForcedError: "ConnectionLost",
  DetachForcedError: "ConnectionLost",
  ConnectionRedirectError: "ConnectionLost",
  LinkRedirectError: "ConnectionLost",
  InternalServerError: "Unavailable",
  SenderBusyError: "Unavailable",
  SenderNotReadyError: "Unavailable",
  InsufficientCreditError: "Unavailable",
  TransferLimitExceededError: "Unavailable",
  OperationCancelledError: "Unavailable",
  MessagingEntityNotFoundError: "MessagingEntityNotFound",
  UnauthorizedError: "UnauthorizedAccess",
  MessageTooLargeError: "MessageSizeExceeded",
  MessageLockLostError: "MessageLockLost",
  SessionLockLostError: "SessionLockLost",
  MessageNotFoundError: "MessageNotFound",
  QuotaExceededError: "QuotaExceeded",
  MessagingEntityDisabledError: "MessagingEntityDisabled",
  // AMQP conditions, when a raw rhea error escapes the SDK's translation
  "com.microsoft:server-busy": "ServiceBusy",
  "com.microsoft:timeout": "ServiceTimeout",
  "amqp:connection:forced": "ConnectionLost",
  "amqp:link:detach-forced": "ConnectionLost",
  "amqp:internal-error": "Unavailable",
  "com.microsoft:message-lock-lost": "MessageLockLost",
  "com.microsoft:session-lock-lost": "SessionLockLost",
  "com.microsoft:message-not-found": "MessageNotFound",
  "amqp:unauthorized-access": "UnauthorizedAccess",
  "com.microsoft:auth-failed": "UnauthorizedAccess",
  "amqp:link:message-size-exceeded": "MessageSizeExceeded",
  "amqp:resource-limit-exceeded": "QuotaExceeded",
  "com.microsoft:entity-disabled": "MessagingEntityDisabled",
  "amqp:not-found": "NotFound"
}

// Node system errors that mean the TCP connection failed or broke: the next attempt reconnects.
const connectionCodes = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "ENETDOWN",
  "ENETRESET",
  "ENETUNREACH",
  "EHOSTDOWN",
  "EHOSTUNREACH",
  "EAI_AGAIN",
  "EADDRNOTAVAIL"
])

const entityNotFoundText = /could not be found|not found|does not exist|status-code: 404/i

export const fromSdkError = (cause: unknown, context: ErrorContext): SdkError => {
  const error = asErrorLike(cause)
  const reason = redact(str(error.message) ?? str(error.description) ?? String(cause))
  const rawCode = str(error.code) ?? str(error.condition)
  const code = rawCode === undefined ? undefined : normalizedCodes[rawCode] ?? rawCode
  const base = { operation: context.operation, entity: context.entity, reason }
  const entity = context.entity ?? "unknown"

  // `ECONNRESET: ...`, or `GeneralError: EPIPE: write EPIPE` (a write to a socket that just
  // broke): the SDK keeps the system code only in the message.
  const systemCode = code !== undefined && connectionCodes.has(code)
    ? code
    : /^(?:[A-Za-z]*Error: )?(E[A-Z_]+):/.exec(reason)?.[1]
  if (systemCode !== undefined && connectionCodes.has(systemCode)) {
    return new ConnectionLost({ ...base, code: systemCode })
  }

  switch (code) {
    case "ServiceBusy":
      return new ServerBusy(base)
    case "ServiceTimeout":
      return new OperationTimeout(base)
    case "ConnectionLost":
      return new ConnectionLost({ ...base, code: rawCode })
    case "ServiceCommunicationProblem":
    case "NotFound":
      // `amqp:not-found` is how a missing entity is refused at attach time; the SDK maps it to
      // a communication problem unless the description has Service Bus's exact wording.
      return entityNotFoundText.test(reason)
        ? new EntityNotFound({ operation: context.operation, entity, reason })
        : new ConnectionLost({ ...base, code: rawCode })
    case "Unavailable":
      return new ServiceBusUnavailable({ ...base, code: rawCode })
    case "MessagingEntityNotFound":
      return new EntityNotFound({ operation: context.operation, entity, reason })
    case "UnauthorizedAccess":
      return new Unauthorized(base)
    case "MessageSizeExceeded":
      return new MessageTooLarge({
        entity,
        messageId: context.messageId,
        index: 0,
        maxBytes: context.maxBytes ?? 0
      })
    case "MessageLockLost":
      return new MessageLockLost({
        operation: context.operation,
        entity,
        messageId: context.messageId,
        lockToken: context.lockToken,
        reason
      })
    case "SessionLockLost":
      return new SessionLockLost({ operation: context.operation, entity, sessionId: context.sessionId, reason })
    case "MessageNotFound":
      return new MessageNotFound({
        operation: context.operation,
        entity,
        sequenceNumbers: context.sequenceNumbers ?? [],
        reason
      })
    case "GeneralError":
      // The SDK's catch-all: trust its `retryable` flag, which core-amqp set from the original code.
      return error.retryable === true
        ? new ServiceBusUnavailable({ ...base, code })
        : new ServiceBusFailure({ ...base, code })
    default:
      if (str(error.name) === "AbortError") return new ServiceBusFailure({ ...base, code: "AbortError" })
      // rhea-promise rejects a connection that closes while it opens with a plain Error, and the
      // SDK passes it on untranslated, e.g. when a receive races the reconnection after the
      // broker closed the connection. The next attempt reconnects.
      if (code === undefined && /^Failed to connect/.test(reason)) {
        return new ConnectionLost({ ...base, code: "ConnectFailed" })
      }
      // A claim sent while the connection was being torn down (its $cbs link already gone).
      if (/negotiate a claim but the CBS link does not exist/.test(reason)) {
        return new ConnectionLost({ ...base, code: code ?? "CbsLinkMissing" })
      }
      if (code === undefined && /^Unable to open the amqp connection .* due to operation timeout/.test(reason)) {
        return new OperationTimeout(base)
      }
      return new ServiceBusFailure({ ...base, code })
  }
}

const unexpected = (error: SdkError, context: ErrorContext) =>
  new ServiceBusFailure({
    operation: context.operation,
    entity: context.entity,
    code: error._tag,
    reason: error.message
  })

/** For sends: lock and sequence-number failures cannot happen there, and are reported as such. */
export const sendError = (cause: unknown, context: ErrorContext): SendError => {
  const error = fromSdkError(cause, context)
  switch (error._tag) {
    case "MessageLockLost":
    case "SessionLockLost":
    case "MessageNotFound":
      return unexpected(error, context)
    default:
      return error
  }
}

export const receiveError = (cause: unknown, context: ErrorContext): ReceiveError => {
  const error = fromSdkError(cause, context)
  switch (error._tag) {
    case "MessageLockLost":
    case "MessageTooLarge":
      return unexpected(error, context)
    default:
      return error
  }
}

/** For settlements and lock renewals: an unknown lock token is a lost lock. */
export const settleError = (cause: unknown, context: ErrorContext): SettleError => {
  const error = fromSdkError(cause, context)
  switch (error._tag) {
    case "MessageNotFound":
      return new MessageLockLost({
        operation: context.operation,
        entity: context.entity ?? "unknown",
        messageId: context.messageId,
        lockToken: context.lockToken,
        reason: error.reason
      })
    case "MessageTooLarge":
      return unexpected(error, context)
    default:
      return error
  }
}

// A connection string's key must never reach a log, even through an SDK message that echoes it.
export const redact = (text: string): string =>
  text.replace(/(SharedAccessKey|SharedAccessSignature|sig)=([^;&\s"']+)/gi, "$1=<redacted>")

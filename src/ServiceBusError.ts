/**
 * The typed failures of messaging: sending, receiving and settling messages, on Azure Service Bus
 * or in memory. Transient failures (the same request may succeed later) and permanent ones are
 * different tags, so a retry policy can tell them apart with {@link isTransient}.
 *
 * Transient: `ServerBusy` (throttled), `OperationTimeout`, `ConnectionLost`,
 * `ServiceBusUnavailable`. Permanent: everything else.
 *
 * @since 0.1.0
 */
import { Predicate, Schema } from "effect"

/**
 * The namespace is throttling requests (`com.microsoft:server-busy`). Transient: wait and retry;
 * the adapter has already retried under its schedule.
 *
 * @since 0.1.0
 * @category errors
 */
export class ServerBusy extends Schema.TaggedError<ServerBusy>("effect-eventually/ServerBusy")("ServerBusy", {
  operation: Schema.String,
  entity: Schema.optional(Schema.String),
  reason: Schema.String
}) {
  override get message(): string {
    return `Service Bus is busy (throttling) during ${this.operation}${
      onEntity(this.entity)
    }: ${this.reason}. This is transient; retry after a pause.`
  }
}

/**
 * The operation did not complete in time. Transient; a send that timed out may or may not have
 * been accepted, which is why message ids are deterministic and duplicate detection drops a
 * resend.
 *
 * @since 0.1.0
 * @category errors
 */
export class OperationTimeout extends Schema.TaggedError<OperationTimeout>("effect-eventually/OperationTimeout")(
  "OperationTimeout",
  {
    operation: Schema.String,
    entity: Schema.optional(Schema.String),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Service Bus ${this.operation}${
      onEntity(this.entity)
    } timed out: ${this.reason}. This is transient; retry (a resent message is dropped by duplicate detection when its id is deterministic).`
  }
}

/**
 * The connection, session or link to the namespace was lost or refused (reset, forced close,
 * detach). Transient: the client reconnects on the next attempt.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConnectionLost extends Schema.TaggedError<ConnectionLost>("effect-eventually/ConnectionLost")(
  "ConnectionLost",
  {
    operation: Schema.String,
    entity: Schema.optional(Schema.String),
    /** The AMQP condition, SDK code or system error code, when there was one. */
    code: Schema.optional(Schema.String),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Connection to Service Bus lost during ${this.operation}${onEntity(this.entity)}${
      withCode(this.code)
    }: ${this.reason}. This is transient; retry.`
  }
}

/**
 * Another transient failure of the service (internal error, link not ready, no credit yet).
 *
 * @since 0.1.0
 * @category errors
 */
export class ServiceBusUnavailable extends Schema.TaggedError<ServiceBusUnavailable>(
  "effect-eventually/ServiceBusUnavailable"
)("ServiceBusUnavailable", {
  operation: Schema.String,
  entity: Schema.optional(Schema.String),
  code: Schema.optional(Schema.String),
  reason: Schema.String
}) {
  override get message(): string {
    return `Service Bus unavailable during ${this.operation}${onEntity(this.entity)}${
      withCode(this.code)
    }: ${this.reason}. This is transient; retry later.`
  }
}

/**
 * The queue, topic or subscription does not exist in the namespace.
 *
 * @since 0.1.0
 * @category errors
 */
export class EntityNotFound extends Schema.TaggedError<EntityNotFound>("effect-eventually/EntityNotFound")(
  "EntityNotFound",
  {
    operation: Schema.String,
    entity: Schema.String,
    reason: Schema.optional(Schema.String)
  }
) {
  override get message(): string {
    return `Service Bus entity "${this.entity}" was not found during ${this.operation}${
      this.reason === undefined ? "" : `: ${this.reason}`
    }. Create it, or check the name and the namespace.`
  }
}

/**
 * The credential was refused, or lacks the right (Send, Listen) for the entity.
 *
 * @since 0.1.0
 * @category errors
 */
export class Unauthorized extends Schema.TaggedError<Unauthorized>("effect-eventually/Unauthorized")(
  "Unauthorized",
  {
    operation: Schema.String,
    entity: Schema.optional(Schema.String),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Service Bus refused the credential during ${this.operation}${
      onEntity(this.entity)
    }: ${this.reason}. Check the connection string or the identity's role assignments (Azure Service Bus Data Sender / Receiver).`
  }
}

/**
 * One message is larger than the entity accepts, even alone. Nothing was sent.
 *
 * @since 0.1.0
 * @category errors
 */
export class MessageTooLarge extends Schema.TaggedError<MessageTooLarge>("effect-eventually/MessageTooLarge")(
  "MessageTooLarge",
  {
    entity: Schema.String,
    messageId: Schema.optional(Schema.String),
    /** The index of the message in the send. */
    index: Schema.Number,
    /** The encoded size, when it is known. */
    bytes: Schema.optional(Schema.Number),
    maxBytes: Schema.Number
  }
) {
  override get message(): string {
    return `Message ${this.index}${
      this.messageId === undefined ? "" : ` ("${this.messageId}")`
    } to "${this.entity}" is too large${
      this.bytes === undefined ? "" : ` (${this.bytes} bytes encoded)`
    } for the limit of ${this.maxBytes} bytes: nothing was sent. Store large payloads elsewhere and send a reference.`
  }
}

/**
 * The messages of one send do not fit one batch and the caller did not allow splitting them.
 * Nothing was sent: atomicity is never traded away silently.
 *
 * @since 0.1.0
 * @category errors
 */
export class BatchTooLarge extends Schema.TaggedError<BatchTooLarge>("effect-eventually/BatchTooLarge")(
  "BatchTooLarge",
  {
    entity: Schema.String,
    messageCount: Schema.Number,
    /** How many messages fit in the first batch. */
    fitting: Schema.Number,
    maxBytes: Schema.Number
  }
) {
  override get message(): string {
    return `The ${this.messageCount} messages to "${this.entity}" do not fit one batch of ${this.maxBytes} bytes (only ${this.fitting} fit): nothing was sent. Send fewer messages at once, or pass { split: true } to send several batches (no longer atomic).`
  }
}

/**
 * A message field breaks a Service Bus rule (an id or session id over 128 characters, an empty
 * id, a scheduled time that is not a valid date, ...). Nothing was sent.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidMessage extends Schema.TaggedError<InvalidMessage>("effect-eventually/InvalidMessage")(
  "InvalidMessage",
  {
    entity: Schema.String,
    index: Schema.Number,
    messageId: Schema.optional(Schema.String),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Message ${this.index}${
      this.messageId === undefined ? "" : ` ("${this.messageId.slice(0, 140)}")`
    } to "${this.entity}" is invalid: ${this.reason}. Nothing was sent.`
  }
}

/**
 * The lock on a received message expired or was lost (the link closed, another settlement came
 * first). The message will be, or has been, delivered again: do not settle it.
 *
 * @since 0.1.0
 * @category errors
 */
export class MessageLockLost extends Schema.TaggedError<MessageLockLost>("effect-eventually/MessageLockLost")(
  "MessageLockLost",
  {
    operation: Schema.String,
    entity: Schema.String,
    messageId: Schema.optional(Schema.String),
    lockToken: Schema.optional(Schema.String),
    reason: Schema.optional(Schema.String)
  }
) {
  override get message(): string {
    return `The lock on message${
      this.messageId === undefined ? "" : ` "${this.messageId}"`
    } from "${this.entity}" was lost before ${this.operation}${
      this.reason === undefined ? "" : ` (${this.reason})`
    }. It will be delivered again; make the handler idempotent, or renew the lock while it runs.`
  }
}

/**
 * The lock on a session expired or was lost.
 *
 * @since 0.1.0
 * @category errors
 */
export class SessionLockLost extends Schema.TaggedError<SessionLockLost>("effect-eventually/SessionLockLost")(
  "SessionLockLost",
  {
    operation: Schema.String,
    entity: Schema.String,
    sessionId: Schema.optional(Schema.String),
    reason: Schema.optional(Schema.String)
  }
) {
  override get message(): string {
    return `The session lock${
      this.sessionId === undefined ? "" : ` on "${this.sessionId}"`
    } of "${this.entity}" was lost during ${this.operation}${
      this.reason === undefined ? "" : `: ${this.reason}`
    }. Accept the session again.`
  }
}

/**
 * A message asked for by sequence number (a deferred message) is not there.
 *
 * @since 0.1.0
 * @category errors
 */
export class MessageNotFound extends Schema.TaggedError<MessageNotFound>("effect-eventually/MessageNotFound")(
  "MessageNotFound",
  {
    operation: Schema.String,
    entity: Schema.String,
    sequenceNumbers: Schema.Array(Schema.BigIntFromSelf),
    reason: Schema.optional(Schema.String)
  }
) {
  override get message(): string {
    return `No message with sequence number(s) ${
      this.sequenceNumbers.join(", ")
    } in "${this.entity}" during ${this.operation}${this.reason === undefined ? "" : `: ${this.reason}`}.`
  }
}

/**
 * The delivery was already settled (completed, abandoned, dead-lettered or deferred) by this
 * receiver. Settling twice is a bug in the caller.
 *
 * @since 0.1.0
 * @category errors
 */
export class AlreadySettled extends Schema.TaggedError<AlreadySettled>("effect-eventually/AlreadySettled")(
  "AlreadySettled",
  {
    entity: Schema.String,
    messageId: Schema.optional(Schema.String),
    /** The settlement already applied. */
    settlement: Schema.String,
    /** The settlement that was refused. */
    attempted: Schema.String
  }
) {
  override get message(): string {
    return `Message${
      this.messageId === undefined ? "" : ` "${this.messageId}"`
    } from "${this.entity}" was already settled (${this.settlement}); cannot ${this.attempted} it.`
  }
}

/**
 * An outgoing body could not be encoded with its schema. Nothing was sent.
 *
 * @since 0.1.0
 * @category errors
 */
export class MessageEncodeError extends Schema.TaggedError<MessageEncodeError>("effect-eventually/MessageEncodeError")(
  "MessageEncodeError",
  {
    messageId: Schema.optional(Schema.String),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Cannot encode the body of message${
      this.messageId === undefined ? "" : ` "${this.messageId}"`
    }: ${this.reason}`
  }
}

/**
 * A received body is not JSON, or does not match the expected schema. Usually permanent for
 * that message: dead-letter it with this error's message as the description.
 *
 * @since 0.1.0
 * @category errors
 */
export class MessageDecodeError extends Schema.TaggedError<MessageDecodeError>("effect-eventually/MessageDecodeError")(
  "MessageDecodeError",
  {
    entity: Schema.optional(Schema.String),
    messageId: Schema.optional(Schema.String),
    subject: Schema.optional(Schema.String),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Cannot decode the body of message${this.messageId === undefined ? "" : ` "${this.messageId}"`}${
      this.subject === undefined ? "" : ` (${this.subject})`
    }${this.entity === undefined ? "" : ` from "${this.entity}"`}: ${this.reason}`
  }
}

/**
 * A permanent failure of the service or the client that has no tag of its own: a disabled entity,
 * an exceeded quota, a closed client, a malformed connection string, or an unknown error.
 * Not retried.
 *
 * @since 0.1.0
 * @category errors
 */
export class ServiceBusFailure extends Schema.TaggedError<ServiceBusFailure>("effect-eventually/ServiceBusFailure")(
  "ServiceBusFailure",
  {
    operation: Schema.String,
    entity: Schema.optional(Schema.String),
    code: Schema.optional(Schema.String),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Service Bus failed during ${this.operation}${onEntity(this.entity)}${withCode(this.code)}: ${this.reason}.`
  }
}

/**
 * The failures worth retrying as they are.
 *
 * @since 0.1.0
 * @category errors
 */
export type TransientError = ServerBusy | OperationTimeout | ConnectionLost | ServiceBusUnavailable

/**
 * What any call on the service may fail with, beside the failures specific to an operation.
 *
 * @since 0.1.0
 * @category errors
 */
export type ServiceError = TransientError | EntityNotFound | Unauthorized | ServiceBusFailure

/**
 * Failures of a send.
 *
 * @since 0.1.0
 * @category errors
 */
export type SendError = ServiceError | MessageTooLarge | BatchTooLarge | InvalidMessage

/**
 * Failures of a receive.
 *
 * @since 0.1.0
 * @category errors
 */
export type ReceiveError = ServiceError | MessageNotFound | SessionLockLost

/**
 * Failures of a settlement or a lock renewal.
 *
 * @since 0.1.0
 * @category errors
 */
export type SettleError = ServiceError | MessageLockLost | SessionLockLost | AlreadySettled

/**
 * Any messaging failure.
 *
 * @since 0.1.0
 * @category errors
 */
export type MessagingError =
  | SendError
  | ReceiveError
  | SettleError
  | MessageEncodeError
  | MessageDecodeError

const transientTags = new Set(["ServerBusy", "OperationTimeout", "ConnectionLost", "ServiceBusUnavailable"])

/**
 * True for failures worth retrying as they are (the same request may succeed later).
 *
 * @since 0.1.0
 * @category errors
 */
export const isTransient = (error: unknown): error is TransientError =>
  Predicate.hasProperty(error, "_tag") && typeof error._tag === "string" && transientTags.has(error._tag)

const onEntity = (entity: string | undefined): string => entity === undefined ? "" : ` on "${entity}"`
const withCode = (code: string | undefined): string => code === undefined ? "" : ` (${code})`

/**
 * Messages as the library sends and receives them, described with `Schema`. A message's body is
 * a JSON value, encoded from a domain value by a schema the caller gives; the other fields are
 * Service Bus's own (id, subject, correlation, session, partition key, scheduling, time to live)
 * plus two conventions carried as application properties: `causationId` and the W3C trace
 * context (`Diagnostic-Id`, the name the Azure SDKs read and write).
 *
 * Message ids are deterministic wherever possible ({@link idFromEvent}, {@link idFromMessage}),
 * so that a retried send is dropped by Service Bus's duplicate detection instead of delivered
 * twice.
 *
 * @since 0.1.0
 */
import { Effect, ParseResult, Schema } from "effect"
import { createHash } from "node:crypto"
import { MessageDecodeError, MessageEncodeError } from "./ServiceBusError.js"

/**
 * The longest id, session id or partition key Service Bus accepts.
 *
 * @since 0.1.0
 * @category models
 */
export const maxIdLength = 128

/**
 * A message id, session id or partition key: 1 to 128 characters.
 *
 * @since 0.1.0
 * @category models
 */
export const Identifier = Schema.String.pipe(Schema.minLength(1), Schema.maxLength(maxIdLength))

/**
 * The value of an application property.
 *
 * @since 0.1.0
 * @category models
 */
export const PropertyValue = Schema.Union(Schema.String, Schema.Number, Schema.Boolean)

/**
 * @since 0.1.0
 * @category models
 */
export type PropertyValue = typeof PropertyValue.Type

/**
 * Application properties: free-form values routed and filtered on by Service Bus, without
 * reading the body.
 *
 * @since 0.1.0
 * @category models
 */
export const Properties = Schema.Record({ key: Schema.String, value: PropertyValue })

/**
 * @since 0.1.0
 * @category models
 */
export type Properties = typeof Properties.Type

/**
 * The application property names this library reads and writes for the fields that Service Bus
 * has no slot for.
 *
 * @since 0.1.0
 * @category models
 */
export const propertyNames = {
  causationId: "causationId",
  /** W3C `traceparent`, under the name the Azure SDKs use. */
  diagnosticId: "Diagnostic-Id",
  /** Also read, for producers that use the W3C name. */
  traceparent: "traceparent",
  deadLetterReason: "DeadLetterReason",
  deadLetterErrorDescription: "DeadLetterErrorDescription"
} as const

const outgoingFields = {
  /** The encoded body: a JSON value. */
  body: Schema.Unknown,
  /** Unique per logical message, deterministic where possible: duplicate detection keys on it. */
  messageId: Identifier,
  /** The message type (Service Bus "label"), e.g. the event's `_tag`. */
  subject: Schema.optionalWith(Schema.String, { exact: true }),
  /** Shared by every message and event caused by one original request. */
  correlationId: Schema.optionalWith(Schema.String, { exact: true }),
  /** The id of the message, command or event that caused this one. */
  causationId: Schema.optionalWith(Schema.String, { exact: true }),
  /** Groups messages for ordered, exclusive processing (session-enabled entities only). */
  sessionId: Schema.optionalWith(Identifier, { exact: true }),
  /** Chooses the partition of a partitioned entity; must equal `sessionId` when both are set. */
  partitionKey: Schema.optionalWith(Identifier, { exact: true }),
  /** W3C trace context (`00-<trace id>-<span id>-<flags>`); taken from the current span when absent. */
  traceparent: Schema.optionalWith(Schema.String, { exact: true }),
  applicationProperties: Schema.optionalWith(Properties, { exact: true }),
  /** Hold the message back until then; it is enqueued at once but not delivered before. */
  scheduledEnqueueTime: Schema.optionalWith(Schema.DateFromSelf, { exact: true }),
  /** Drop the message if not received within this time (the entity's default otherwise). */
  timeToLive: Schema.optionalWith(Schema.DurationFromSelf, { exact: true })
}

/**
 * A message to send.
 *
 * @since 0.1.0
 * @category models
 */
export const OutgoingMessage = Schema.Struct(outgoingFields)

/**
 * @since 0.1.0
 * @category models
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- an interface keeps hover types readable
export interface OutgoingMessage extends Schema.Schema.Type<typeof OutgoingMessage> {}

/**
 * The state of a received message: `deferred` once received by sequence number after a defer,
 * `scheduled` when peeked before its time.
 *
 * @since 0.1.0
 * @category models
 */
export const MessageState = Schema.Literal("active", "deferred", "scheduled")

/**
 * A received message: the fields of an outgoing message plus the delivery metadata.
 *
 * @since 0.1.0
 * @category models
 */
export const ReceivedMessage = Schema.Struct({
  ...outgoingFields,
  /** Absent only when a producer outside this library sent none. */
  messageId: Schema.optionalWith(Schema.String, { exact: true }),
  /**
   * The received body: the JSON value, or the raw bytes (`Uint8Array`) when the body is not
   * JSON. Decode it with {@link decodeBody}.
   */
  body: Schema.Unknown,
  /** The entity path it was received from (`orders`, `events/Subscriptions/billing`, `.../$DeadLetterQueue`). */
  entity: Schema.String,
  /** Assigned by the broker, increasing per entity. */
  sequenceNumber: Schema.BigIntFromSelf,
  /**
   * How many times the message has been delivered, this delivery included: 1 on the first
   * delivery, incremented by each abandon or lock expiry.
   */
  deliveryCount: Schema.Number,
  enqueuedTime: Schema.DateFromSelf,
  /** When the peek-lock expires unless renewed. */
  lockedUntil: Schema.optionalWith(Schema.DateFromSelf, { exact: true }),
  /** The lock token (absent for peeked messages). */
  lockToken: Schema.optionalWith(Schema.String, { exact: true }),
  expiresAt: Schema.optionalWith(Schema.DateFromSelf, { exact: true }),
  state: MessageState,
  /** Set on dead-lettered messages (`MaxDeliveryCountExceeded`, `TTLExpiredException`, or the receiver's reason). */
  deadLetterReason: Schema.optionalWith(Schema.String, { exact: true }),
  deadLetterErrorDescription: Schema.optionalWith(Schema.String, { exact: true }),
  /** The entity a dead-lettered message came from, when the broker tells. */
  deadLetterSource: Schema.optionalWith(Schema.String, { exact: true })
})

/**
 * @since 0.1.0
 * @category models
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- an interface keeps hover types readable
export interface ReceivedMessage extends Schema.Schema.Type<typeof ReceivedMessage> {}

/**
 * The fields of an outgoing message besides its body.
 *
 * @since 0.1.0
 * @category models
 */
export type Fields = Omit<OutgoingMessage, "body">

/**
 * Builds an outgoing message, encoding the body with the schema (to a JSON value).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <A, I>(
  schema: Schema.Schema<A, I>,
  body: A,
  fields: Fields
): Effect.Effect<OutgoingMessage, MessageEncodeError> =>
  Schema.encode(schema)(body).pipe(
    Effect.mapError((error) =>
      new MessageEncodeError({
        messageId: fields.messageId,
        reason: ParseResult.TreeFormatter.formatErrorSync(error)
      })
    ),
    Effect.map((encoded): OutgoingMessage => ({ ...fields, body: encoded }))
  )

/**
 * Decodes a received body with the schema. Fails with `MessageDecodeError` (permanent for that
 * message: dead-letter it) when the body is not JSON or does not match.
 *
 * @since 0.1.0
 * @category constructors
 */
export const decodeBody = <A, I>(schema: Schema.Schema<A, I>) => {
  const decode = Schema.decodeUnknown(schema)
  return (message: ReceivedMessage): Effect.Effect<A, MessageDecodeError> =>
    message.body instanceof Uint8Array
      ? Effect.fail(
        new MessageDecodeError({
          entity: message.entity,
          messageId: message.messageId,
          subject: message.subject,
          reason: `the body is ${message.body.byteLength} bytes that are not JSON`
        })
      )
      : decode(message.body).pipe(
        Effect.mapError((error) =>
          new MessageDecodeError({
            entity: message.entity,
            messageId: message.messageId,
            subject: message.subject,
            reason: ParseResult.TreeFormatter.formatErrorSync(error)
          })
        )
      )
}

/**
 * A stable id made of parts: the first 32 hex digits (128 bits) of the SHA-256 of the parts,
 * each prefixed with its length so that `("ab", "c")` and `("a", "bc")` differ.
 *
 * @since 0.1.0
 * @category constructors
 */
export const deterministicId = (...parts: ReadonlyArray<string>): string => {
  const hash = createHash("sha256")
  for (const part of parts) hash.update(`${part.length}:${part}\u0000`)
  return hash.digest("hex").slice(0, 32)
}

/**
 * The message id of the message that carries an event: the event id itself when it is a valid
 * message id (1 to 128 characters), otherwise a hash of it. The same event always gives the same
 * id, so the outbox's resends are dropped by duplicate detection.
 *
 * @since 0.1.0
 * @category constructors
 */
export const idFromEvent = (eventId: string): string =>
  eventId.length > 0 && eventId.length <= maxIdLength ? eventId : deterministicId("event", eventId)

/**
 * The message id of the `index`-th message a handler sends while processing the received message
 * `messageId`. A handler that runs again for the same message (after a crash or an abandon)
 * produces the same ids, so its resends are dropped by duplicate detection.
 *
 * @since 0.1.0
 * @category constructors
 */
export const idFromMessage = (messageId: string, index: number): string =>
  deterministicId("message", messageId, String(index))

/**
 * A W3C `traceparent` for a span: `00-<trace id>-<span id>-01`. Undefined when the ids are not
 * the hexadecimal lengths W3C requires (32 and 16), e.g. for a span made by a custom tracer.
 *
 * @since 0.1.0
 * @category constructors
 */
export const traceparentOf = (span: { readonly traceId: string; readonly spanId: string }): string | undefined =>
  /^[0-9a-f]{32}$/.test(span.traceId) && /^[0-9a-f]{16}$/.test(span.spanId)
    ? `00-${span.traceId}-${span.spanId}-01`
    : undefined

// Conversions between the library's messages and `@azure/service-bus` messages, the checks Service
// Bus applies before accepting a message, and the encoded size of a batch computed exactly as the
// SDK computes it, so that the memory sender refuses the same batches as the real one.
import type { ServiceBusMessage, ServiceBusReceivedMessage } from "@azure/service-bus"
import { Duration, Effect } from "effect"
import type { Message as AmqpMessage } from "rhea"
import rhea from "rhea"
import type { OutgoingMessage, Properties, PropertyValue, ReceivedMessage } from "../Message.js"
import { maxIdLength, propertyNames } from "../Message.js"
import { InvalidMessage } from "../ServiceBusError.js"

export const jsonContentType = "application/json"

/** The 256 KB of the Standard tier, the limit when a link does not advertise its own. */
export const defaultMaxBatchBytes = 256 * 1024

/** A message that passed the checks, with its application properties as they go on the wire. */
export interface Checked {
  readonly message: OutgoingMessage
  readonly applicationProperties: Record<string, PropertyValue>
}

/** A checked message with its body written as JSON. */
export interface Encoded extends Checked {
  readonly body: Buffer
}

const checkId = (value: string | undefined, name: string): string | undefined =>
  value === undefined
    ? undefined
    : value.length === 0
    ? `${name} is empty`
    : value.length > maxIdLength
    ? `${name} is ${value.length} characters, over the limit of ${maxIdLength}`
    : undefined

const checkMessage = (message: OutgoingMessage): string | undefined => {
  if (typeof message.messageId !== "string") return "messageId is missing"
  if (message.body instanceof Uint8Array) return "the body must be a JSON value (write bytes as base64)"
  const idProblem = checkId(message.messageId, "messageId") ??
    checkId(message.sessionId, "sessionId") ??
    checkId(message.partitionKey, "partitionKey")
  if (idProblem !== undefined) return idProblem
  if (
    message.sessionId !== undefined && message.partitionKey !== undefined && message.sessionId !== message.partitionKey
  ) {
    return "partitionKey must equal sessionId when both are set"
  }
  if (message.scheduledEnqueueTime !== undefined && Number.isNaN(message.scheduledEnqueueTime.getTime())) {
    return "scheduledEnqueueTime is not a valid date"
  }
  if (message.timeToLive !== undefined && !(Duration.toMillis(message.timeToLive) > 0)) {
    return "timeToLive must be positive"
  }
  for (const [key, value] of Object.entries(message.applicationProperties ?? {})) {
    if (typeof value === "number" && !Number.isFinite(value)) return `application property "${key}" is not finite`
    if (typeof value !== "number" && typeof value !== "string" && typeof value !== "boolean") {
      return `application property "${key}" is not a string, number or boolean`
    }
  }
  return undefined
}

const encodeBody = (body: unknown): Buffer | string => {
  try {
    const json = JSON.stringify(body === undefined ? null : body)
    return json === undefined ? "the body is not a JSON value" : Buffer.from(json, "utf8")
  } catch (error) {
    return `the body cannot be written as JSON: ${String(error)}`
  }
}

const noProperties: Record<string, PropertyValue> = Object.freeze({})

const propertiesOf = (message: OutgoingMessage): Record<string, PropertyValue> => {
  // Most messages carry none: one shared empty object spares an allocation per message.
  if (
    message.applicationProperties === undefined && message.causationId === undefined &&
    message.traceparent === undefined
  ) {
    return noProperties
  }
  const properties: Record<string, PropertyValue> = { ...message.applicationProperties }
  if (message.causationId !== undefined) properties[propertyNames.causationId] = message.causationId
  if (message.traceparent !== undefined) properties[propertyNames.diagnosticId] = message.traceparent
  return properties
}

const invalid = (entity: string, index: number, message: OutgoingMessage, reason: string) =>
  new InvalidMessage({
    entity,
    index,
    messageId: typeof message.messageId === "string" ? message.messageId : undefined,
    reason
  })

/** Checks the messages of one send; fails on the first invalid one, before anything is sent. */
export const checkAll = (
  entity: string,
  messages: ReadonlyArray<OutgoingMessage>
): Effect.Effect<ReadonlyArray<Checked>, InvalidMessage> =>
  Effect.suspend(() => {
    const checked: Array<Checked> = []
    for (let index = 0; index < messages.length; index++) {
      const message = messages[index]
      const problem = checkMessage(message)
      if (problem !== undefined) return Effect.fail(invalid(entity, index, message, problem))
      checked.push({ message, applicationProperties: propertiesOf(message) })
    }
    return Effect.succeed(checked)
  })

/**
 * Writes the bodies as JSON. The Service Bus sender leaves this to the SDK, which does the same
 * while it fills a batch (doing it here as well would write every body twice).
 */
export const encodeBodies = (
  entity: string,
  checked: ReadonlyArray<Checked>
): Effect.Effect<ReadonlyArray<Encoded>, InvalidMessage> =>
  Effect.suspend(() => {
    const encoded: Array<Encoded> = []
    for (let index = 0; index < checked.length; index++) {
      const body = encodeBody(checked[index].message.body)
      if (typeof body === "string") return Effect.fail(invalid(entity, index, checked[index].message, body))
      encoded.push({ ...checked[index], body })
    }
    return Effect.succeed(encoded)
  })

/** Checks and encodes the messages of one send. */
export const encodeAll = (
  entity: string,
  messages: ReadonlyArray<OutgoingMessage>
): Effect.Effect<ReadonlyArray<Encoded>, InvalidMessage> =>
  Effect.flatMap(checkAll(entity, messages), (checked) => encodeBodies(entity, checked))

export const toSdkMessage = (encoded: Checked): ServiceBusMessage => {
  const { message } = encoded
  const sdk: ServiceBusMessage = {
    // The SDK writes it as JSON, as `encodeBodies` does (undefined as null).
    body: message.body === undefined ? null : message.body,
    contentType: jsonContentType,
    messageId: message.messageId
  }
  if (message.subject !== undefined) sdk.subject = message.subject
  if (message.correlationId !== undefined) sdk.correlationId = message.correlationId
  if (message.sessionId !== undefined) sdk.sessionId = message.sessionId
  if (message.partitionKey !== undefined) sdk.partitionKey = message.partitionKey
  if (message.scheduledEnqueueTime !== undefined) sdk.scheduledEnqueueTimeUtc = message.scheduledEnqueueTime
  if (message.timeToLive !== undefined) sdk.timeToLive = Duration.toMillis(message.timeToLive)
  if (encoded.applicationProperties !== noProperties && Object.keys(encoded.applicationProperties).length > 0) {
    sdk.applicationProperties = encoded.applicationProperties
  }
  return sdk
}

// ---------------------------------------------------------------------------------------------
// Sizes, as `ServiceBusMessageBatch.tryAddMessage` computes them (SDK 7.9).

interface RheaMessage {
  body: unknown
  message_annotations?: Record<string, unknown> | undefined
  application_properties?: Record<string, unknown> | undefined
  [property: string]: unknown
}

const rheaMessageProperties = [
  "message_id",
  "user_id",
  "to",
  "subject",
  "reply_to",
  "correlation_id",
  "content_type",
  "content_encoding",
  "absolute_expiry_time",
  "creation_time",
  "group_id",
  "group_sequence",
  "reply_to_group_id"
]

/** The AMQP message as it goes on the wire (used by transactional sends, which bypass the SDK). */
export const toRheaMessage = (encoded: Encoded): AmqpMessage => {
  const { message } = encoded
  const amqp: AmqpMessage = {
    body: rhea.message.data_section(encoded.body),
    content_type: jsonContentType,
    message_id: message.messageId
  }
  const annotations: Record<string, unknown> = {}
  if (message.timeToLive !== undefined) amqp.ttl = Duration.toMillis(message.timeToLive)
  if (Object.keys(encoded.applicationProperties).length > 0) {
    amqp.application_properties = encoded.applicationProperties
  }
  if (message.sessionId !== undefined) amqp.group_id = message.sessionId
  if (message.subject !== undefined) amqp.subject = message.subject
  if (message.correlationId !== undefined) amqp.correlation_id = message.correlationId
  if (message.partitionKey !== undefined) annotations["x-opt-partition-key"] = message.partitionKey
  if (message.scheduledEnqueueTime !== undefined) {
    annotations["x-opt-scheduled-enqueue-time"] = message.scheduledEnqueueTime
  }
  if (Object.keys(annotations).length > 0) amqp.message_annotations = annotations
  return amqp
}

// The message as the SDK sizes it: it always writes a message-annotations section, and for a
// time to live also the creation and expiry times (their values do not change the size).
const toSizedMessage = (encoded: Encoded): RheaMessage => {
  const amqp: RheaMessage = { ...toRheaMessage(encoded) }
  amqp.message_annotations ??= {}
  if (amqp.ttl !== undefined) {
    amqp.creation_time = new Date(0)
    amqp.absolute_expiry_time = new Date(0)
  }
  return amqp
}

const encodedLength = (message: RheaMessage): number => rhea.message.encode(message).length

const envelopeLength = (first: RheaMessage): number => {
  const envelope: RheaMessage = {
    body: rhea.message.data_sections([]),
    message_annotations: first.message_annotations,
    application_properties: first.application_properties
  }
  for (const property of rheaMessageProperties) {
    if (first[property]) envelope[property] = first[property]
  }
  return encodedLength(envelope)
}

// More than any string takes encoded: a str32 constructor and length, and UTF-8 of at most three
// bytes per UTF-16 unit.
const stringBound = (value: string | undefined): number => value === undefined ? 0 : 5 + 3 * value.length

// Room for everything of fixed size: section descriptors and list headers, the content type,
// the time to live with creation and expiry times, the scheduled time.
const fixedBound = 256

/**
 * More bytes than the message takes in a batch, both in the batch's envelope (its annotations
 * and application properties) and as an entry. Cheap: when the bounds of a whole send fit, so do
 * the exact sizes, and they need not be computed.
 */
const upperBound = (encoded: Encoded): number => boundWith(encoded, encoded.body.length)

/**
 * Whether a message certainly fits a batch of `maxBytes` alone, before its body is written
 * (bounded by three bytes per character of its JSON).
 */
export const fitsAlone = (checked: Checked, maxBytes: number): boolean => {
  const json = JSON.stringify(checked.message.body === undefined ? null : checked.message.body) as string | undefined
  return json !== undefined && boundWith(checked, 3 * json.length) <= maxBytes
}

const boundWith = (encoded: Checked, bodyBytes: number): number => {
  const { message } = encoded
  let properties = 0
  for (const key in encoded.applicationProperties) {
    const value = encoded.applicationProperties[key]
    properties += stringBound(key) + (typeof value === "string" ? stringBound(value) : 9)
  }
  const fields = stringBound(message.messageId) + stringBound(message.subject) + stringBound(message.correlationId) +
    stringBound(message.sessionId) + stringBound(message.partitionKey) + stringBound(jsonContentType)
  // All but the body may be in the envelope as well as in the entry.
  return bodyBytes + 8 + 2 * (fixedBound + fields + properties)
}

/** Splits encoded messages into batches that fit `maxBytes`, in order, the way the SDK fills its batches. */
export const packBatches = (
  messages: ReadonlyArray<Encoded>,
  maxBytes: number
): { readonly batches: ReadonlyArray<ReadonlyArray<Encoded>>; readonly tooLarge: number | undefined } => {
  let bound = 0
  for (let index = 0; index < messages.length && bound <= maxBytes; index++) bound += upperBound(messages[index])
  if (messages.length > 0 && bound <= maxBytes) return { batches: [messages], tooLarge: undefined }
  const batches: Array<Array<Encoded>> = []
  let current: Array<Encoded> = []
  let size = 0
  for (let index = 0; index < messages.length; index++) {
    const rheaMessage = toSizedMessage(messages[index])
    const length = encodedLength(rheaMessage)
    const added = length + (length <= 255 ? 5 : 8)
    if (current.length > 0 && size + added <= maxBytes) {
      current.push(messages[index])
      size += added
      continue
    }
    const alone = envelopeLength(rheaMessage) + added
    if (alone > maxBytes) return { batches, tooLarge: index }
    if (current.length > 0) batches.push(current)
    current = [messages[index]]
    size = alone
  }
  if (current.length > 0) batches.push(current)
  return { batches, tooLarge: undefined }
}

/** The encoded size of one message alone in a batch. */
export const sizeAlone = (encoded: Encoded): number => {
  const rheaMessage = toSizedMessage(encoded)
  const length = encodedLength(rheaMessage)
  return envelopeLength(rheaMessage) + length + (length <= 255 ? 5 : 8)
}

// ---------------------------------------------------------------------------------------------
// Receiving

const reserved = new Set<string>(Object.values(propertyNames))

/** Splits application properties into the library's fields and the caller's own properties. */
export const splitProperties = (raw: Record<string, unknown> | undefined): {
  readonly properties: Properties | undefined
  readonly causationId: string | undefined
  readonly traceparent: string | undefined
} => {
  if (raw === undefined) return { properties: undefined, causationId: undefined, traceparent: undefined }
  const properties: Record<string, PropertyValue> = {}
  let count = 0
  for (const [key, value] of Object.entries(raw)) {
    if (reserved.has(key)) continue
    if (typeof value === "string" || typeof value === "number" || typeof value === "boolean") {
      properties[key] = value
      count++
    } else if (value instanceof Date) {
      properties[key] = value.getTime()
      count++
    } else if (typeof value === "bigint") {
      properties[key] = Number(value)
      count++
    }
  }
  const text = (key: string) => typeof raw[key] === "string" ? raw[key] : undefined
  return {
    properties: count === 0 ? undefined : properties,
    causationId: text(propertyNames.causationId),
    traceparent: text(propertyNames.diagnosticId) ?? text(propertyNames.traceparent)
  }
}

/** Parses a JSON body; bytes that are not JSON are kept as bytes, for `decodeBody` to refuse. */
export const decodeBodyBytes = (body: unknown): unknown => {
  if (body instanceof Uint8Array) {
    try {
      return JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString("utf8"))
    } catch {
      return new Uint8Array(body)
    }
  }
  return body
}

const toBigInt = (value: unknown): bigint => {
  if (typeof value === "bigint") return value
  if (typeof value === "number") return BigInt(value)
  if (value !== null && typeof value === "object" && "toString" in value) return BigInt(String(value))
  return 0n
}

export const fromSdkMessage = (entity: string, sdk: ServiceBusReceivedMessage, peeked: boolean): ReceivedMessage => {
  const { causationId, properties, traceparent } = splitProperties(sdk.applicationProperties)
  const received: {
    -readonly [K in keyof ReceivedMessage]: ReceivedMessage[K]
  } = {
    entity,
    body: decodeBodyBytes(sdk.body),
    sequenceNumber: toBigInt(sdk.sequenceNumber),
    // The AMQP header counts earlier deliveries (0 on the first); ours includes this one, except
    // for a peek, which is no delivery.
    deliveryCount: (sdk.deliveryCount ?? 0) + (peeked ? 0 : 1),
    enqueuedTime: sdk.enqueuedTimeUtc ?? new Date(0),
    state: sdk.state
  }
  if (sdk.messageId !== undefined) received.messageId = String(sdk.messageId)
  if (sdk.subject !== undefined) received.subject = sdk.subject
  if (sdk.correlationId !== undefined) received.correlationId = String(sdk.correlationId)
  if (causationId !== undefined) received.causationId = causationId
  if (sdk.sessionId !== undefined) received.sessionId = sdk.sessionId
  if (sdk.partitionKey !== undefined) received.partitionKey = sdk.partitionKey
  if (traceparent !== undefined) received.traceparent = traceparent
  if (properties !== undefined) received.applicationProperties = properties
  if (sdk.scheduledEnqueueTimeUtc !== undefined) received.scheduledEnqueueTime = sdk.scheduledEnqueueTimeUtc
  if (sdk.timeToLive !== undefined && sdk.timeToLive < 0xffffffff) received.timeToLive = Duration.millis(sdk.timeToLive)
  if (sdk.lockedUntilUtc !== undefined) received.lockedUntil = sdk.lockedUntilUtc
  if (sdk.lockToken !== undefined) received.lockToken = sdk.lockToken
  if (sdk.expiresAtUtc !== undefined && sdk.timeToLive !== undefined && sdk.timeToLive < 0xffffffff) {
    received.expiresAt = sdk.expiresAtUtc
  }
  if (sdk.deadLetterReason !== undefined) received.deadLetterReason = sdk.deadLetterReason
  if (sdk.deadLetterErrorDescription !== undefined) received.deadLetterErrorDescription = sdk.deadLetterErrorDescription
  if (sdk.deadLetterSource !== undefined) received.deadLetterSource = sdk.deadLetterSource
  return received
}

// Messages as the emulator stores them: the sender's bytes split into sections, with the few
// fields the broker reads decoded once. Bodies and annotation values are never re-encoded, so
// what a receiver gets is byte for byte what the sender wrote, plus the broker's annotations.
import { randomUUID } from "node:crypto"
import type { AmqpValue } from "./codec.js"
import {
  AmqpUuid,
  asNumber,
  asString,
  DecodeError,
  decodeValue,
  encodeBoolean,
  encodeDescribed,
  encodeList,
  encodeMapFromEntries,
  encodeNull,
  encodeString,
  encodeSymbol,
  encodeUbyte,
  encodeUint,
  skipValue
} from "./codec.js"

/** The message format of a batch: a message whose data sections are each an encoded message. */
export const BATCH_FORMAT = 0x80013700

/** One entry of an AMQP map, kept as the bytes of its key and value. */
export interface MapEntry {
  readonly key: string
  readonly raw: Buffer
  readonly value: AmqpValue
}

/** The standard AMQP properties section, decoded. */
export interface Properties {
  readonly messageId?: AmqpValue
  readonly userId?: Buffer
  readonly to?: string
  readonly subject?: string
  readonly replyTo?: string
  readonly correlationId?: AmqpValue
  readonly contentType?: string
  readonly contentEncoding?: string
  readonly absoluteExpiryTime?: number
  readonly creationTime?: number
  readonly groupId?: string
  readonly groupSequence?: number
  readonly replyToGroupId?: string
}

/** A message split into what the broker reads and the bytes it forwards untouched. */
export interface Envelope {
  readonly durable: boolean
  readonly priority: number
  readonly ttl: number | undefined
  readonly annotations: ReadonlyArray<MapEntry>
  readonly propertiesRaw: Buffer | undefined
  readonly properties: Properties
  appProperties: ReadonlyArray<MapEntry>
  /** Body and footer sections. */
  readonly body: Buffer
  /** Encoded size of the message as sent. */
  readonly size: number
}

const sectionCode = (buf: Buffer, pos: number): [number, number] => {
  if (buf[pos] !== 0x00) throw new DecodeError("a message section must be a described value")
  const [descriptor, after] = decodeValue(buf, pos + 1)
  if (typeof descriptor === "number") return [descriptor, after]
  if (typeof descriptor === "bigint") return [Number(descriptor), after]
  const name = asString(descriptor)
  const byName: Record<string, number> = {
    "amqp:header:list": 0x70,
    "amqp:delivery-annotations:map": 0x71,
    "amqp:message-annotations:map": 0x72,
    "amqp:properties:list": 0x73,
    "amqp:application-properties:map": 0x74,
    "amqp:data:binary": 0x75,
    "amqp:amqp-sequence:list": 0x76,
    "amqp:value:*": 0x77,
    "amqp:footer:map": 0x78
  }
  const code = name === undefined ? undefined : byName[name]
  if (code === undefined) throw new DecodeError(`unknown message section ${String(name)}`)
  return [code, after]
}

/** The sections of an encoded message: code, start (descriptor included), value start, end. */
export const sections = (
  buf: Buffer
): Array<{ readonly code: number; readonly start: number; readonly valueStart: number; readonly end: number }> => {
  const out: Array<{ code: number; start: number; valueStart: number; end: number }> = []
  let pos = 0
  while (pos < buf.length) {
    const [code, valueStart] = sectionCode(buf, pos)
    const end = skipValue(buf, valueStart)
    if (end > buf.length) throw new DecodeError("message section overruns the payload")
    out.push({ code, start: pos, valueStart, end })
    pos = end
  }
  return out
}

/** Reads the entries of the map encoded at `pos`, keeping each key-value pair's bytes. */
export const mapEntries = (buf: Buffer, pos: number): Array<MapEntry> => {
  const code = buf[pos]
  let count: number
  let p: number
  if (code === 0xc1) {
    count = buf[pos + 2]
    p = pos + 3
  } else if (code === 0xd1) {
    count = buf.readUInt32BE(pos + 5)
    p = pos + 9
  } else if (code === 0x40) {
    return []
  } else {
    throw new DecodeError(`expected a map, found type code 0x${code.toString(16)}`)
  }
  const out: Array<MapEntry> = []
  for (let i = 0; i + 1 < count; i += 2) {
    const [key, afterKey] = decodeValue(buf, p)
    const [value, end] = decodeValue(buf, afterKey)
    out.push({ key: asString(key) ?? String(key), raw: Buffer.from(buf.subarray(p, end)), value })
    p = end
  }
  return out
}

const asDate = (value: AmqpValue | undefined): number | undefined =>
  value instanceof Date ? value.getTime() : asNumber(value)

const asBuffer = (value: AmqpValue | undefined): Buffer | undefined => Buffer.isBuffer(value) ? value : undefined

const decodeProperties = (fields: ReadonlyArray<AmqpValue>): Properties => {
  const props: {
    -readonly [K in keyof Properties]: Properties[K]
  } = {}
  const set = <K extends keyof Properties>(key: K, value: Properties[K] | undefined | null) => {
    if (value !== undefined && value !== null) props[key] = value
  }
  set("messageId", fields[0])
  set("userId", asBuffer(fields[1]))
  set("to", asString(fields[2]))
  set("subject", asString(fields[3]))
  set("replyTo", asString(fields[4]))
  set("correlationId", fields[5])
  set("contentType", asString(fields[6]))
  set("contentEncoding", asString(fields[7]))
  set("absoluteExpiryTime", asDate(fields[8]))
  set("creationTime", asDate(fields[9]))
  set("groupId", asString(fields[10]))
  set("groupSequence", asNumber(fields[11]))
  set("replyToGroupId", asString(fields[12]))
  return props
}

/** Splits one encoded message (format 0). */
export const parseMessage = (payload: Buffer): Envelope => {
  let durable = false
  let priority = 4
  let ttl: number | undefined
  let annotations: Array<MapEntry> = []
  let propertiesRaw: Buffer | undefined
  let properties: Properties = {}
  let appProperties: Array<MapEntry> = []
  let bodyStart = payload.length
  for (const section of sections(payload)) {
    switch (section.code) {
      case 0x70: {
        const [value] = decodeValue(payload, section.valueStart)
        const fields = Array.isArray(value) ? value as ReadonlyArray<AmqpValue> : []
        durable = fields[0] === true
        priority = asNumber(fields[1]) ?? 4
        ttl = asNumber(fields[2])
        break
      }
      case 0x71:
        break
      case 0x72:
        annotations = mapEntries(payload, section.valueStart)
        break
      case 0x73: {
        propertiesRaw = Buffer.from(payload.subarray(section.start, section.end))
        const [value] = decodeValue(payload, section.valueStart)
        properties = decodeProperties(Array.isArray(value) ? value as ReadonlyArray<AmqpValue> : [])
        break
      }
      case 0x74:
        appProperties = mapEntries(payload, section.valueStart)
        break
      default:
        if (bodyStart === payload.length) bodyStart = section.start
    }
  }
  if (properties.messageId === undefined) {
    // Service Bus gives every message an id; the SDK relies on one being there.
    const id = randomUUID().replace(/-/g, "")
    properties = { ...properties, messageId: id }
    propertiesRaw = withFirstListItem(propertiesRaw, encodeString(id))
  }
  return {
    durable,
    priority,
    ttl,
    annotations,
    propertiesRaw,
    properties,
    appProperties,
    body: Buffer.from(payload.subarray(bodyStart)),
    size: payload.length
  }
}

/** A properties section with its first field (message-id) replaced. */
const withFirstListItem = (section: Buffer | undefined, first: Buffer): Buffer => {
  if (section === undefined) return encodeDescribed(0x73, encodeList([first]))
  const [, valueStart] = sectionCode(section, 0)
  const code = section[valueStart]
  const items: Array<Buffer> = []
  if (code === 0xc0 || code === 0xd0) {
    const count = code === 0xc0 ? section[valueStart + 2] : section.readUInt32BE(valueStart + 5)
    let p = code === 0xc0 ? valueStart + 3 : valueStart + 9
    for (let i = 0; i < count; i++) {
      const end = skipValue(section, p)
      items.push(section.subarray(p, end))
      p = end
    }
  }
  items[0] = first
  return encodeDescribed(0x73, encodeList(items))
}

/** Splits a transfer's payload into its messages: one, or each message of a batch. */
export const parseTransfer = (payload: Buffer, format: number): Array<Envelope> => {
  if (format !== BATCH_FORMAT) return [parseMessage(payload)]
  const out: Array<Envelope> = []
  for (const section of sections(payload)) {
    if (section.code !== 0x75) continue
    const [value] = decodeValue(payload, section.valueStart)
    if (!Buffer.isBuffer(value)) throw new DecodeError("a batch data section must hold binary")
    out.push(parseMessage(value))
  }
  return out
}

/** A comparable key for a message id of any AMQP type. */
export const messageIdKey = (id: AmqpValue | undefined): string | undefined => {
  if (id === undefined || id === null) return undefined
  if (typeof id === "string") return `s:${id}`
  if (id instanceof AmqpUuid) return `u:${id.bytes.toString("hex")}`
  if (Buffer.isBuffer(id)) return `b:${id.toString("hex")}`
  return `n:${String(id)}`
}

/** The text form of a message or correlation id, as filters compare it. */
export const idText = (id: AmqpValue | undefined): string | undefined => {
  if (id === undefined || id === null) return undefined
  if (typeof id === "string") return id
  if (id instanceof AmqpUuid) return id.toString()
  if (Buffer.isBuffer(id)) return id.toString("hex")
  return String(id)
}

/** Encodes one map entry whose value is already encoded. */
export const entry = (key: string, value: Buffer, symbolKey: boolean): MapEntry => ({
  key,
  raw: Buffer.concat([symbolKey ? encodeSymbol(key) : encodeString(key), value]),
  value: null
})

/** Replaces or appends entries by key, keeping the order of the others. */
export const withEntries = (
  entries: ReadonlyArray<MapEntry>,
  updates: ReadonlyArray<MapEntry>
): ReadonlyArray<MapEntry> => {
  if (updates.length === 0) return entries
  const replaced = new Set(updates.map((u) => u.key))
  return [...entries.filter((e) => !replaced.has(e.key)), ...updates]
}

/** What the broker adds to a message when it hands it out. */
export interface Stamp {
  readonly deliveryCount: number
  readonly annotations: ReadonlyArray<MapEntry>
}

/** Encodes a stored message for a receiver: a fresh header and annotations, then the rest as sent. */
export const encodeForDelivery = (env: Envelope, stamp: Stamp): Buffer => {
  const header = encodeDescribed(
    0x70,
    encodeListOf([
      encodeBoolean(env.durable),
      encodeUbyte(env.priority),
      env.ttl === undefined ? encodeNull() : encodeUint(env.ttl),
      encodeBoolean(stamp.deliveryCount === 0),
      encodeUint(stamp.deliveryCount)
    ])
  )
  const annotations = withEntries(env.annotations, stamp.annotations)
  const parts: Array<Buffer> = [header]
  if (annotations.length > 0) {
    parts.push(encodeDescribed(0x72, encodeMapFromEntries(annotations.map((a) => a.raw), annotations.length)))
  }
  if (env.propertiesRaw !== undefined) parts.push(env.propertiesRaw)
  if (env.appProperties.length > 0) {
    parts.push(
      encodeDescribed(0x74, encodeMapFromEntries(env.appProperties.map((a) => a.raw), env.appProperties.length))
    )
  }
  parts.push(env.body)
  return Buffer.concat(parts)
}

const encodeListOf = (items: ReadonlyArray<Buffer>): Buffer => {
  let size = 0
  for (const item of items) size += item.length
  const out = Buffer.allocUnsafe(3 + size)
  out[0] = 0xc0
  out[1] = size + 1
  out[2] = items.length
  let p = 3
  for (const item of items) p += item.copy(out, p)
  return out
}

/** Reads an annotation value from a map entry list. */
export const annotation = (entries: ReadonlyArray<MapEntry>, key: string): AmqpValue | undefined => {
  for (const e of entries) if (e.key === key) return e.value
  return undefined
}

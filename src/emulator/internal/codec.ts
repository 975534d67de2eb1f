// A small AMQP 1.0 type codec working on raw bytes. The emulator keeps message bodies and
// annotation values as the bytes the sender wrote, so it needs to skip values without decoding
// them, decode the few sections it reads, and write the sections it adds.

/**
 * An AMQP symbol, kept apart from strings so it can be written back as a symbol.
 */
export class AmqpSymbol {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value
  }
}

/** An AMQP uuid: 16 bytes in network order. */
export class AmqpUuid {
  constructor(readonly bytes: Buffer) {}
  toString(): string {
    const hex = this.bytes.toString("hex")
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
  }
}

/** A described value. */
export class AmqpDescribed {
  constructor(readonly descriptor: number | string, readonly value: AmqpValue) {}
}

/** A decoded AMQP value. Maps keep their key order. */
export type AmqpValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Buffer
  | Date
  | AmqpSymbol
  | AmqpUuid
  | AmqpDescribed
  | ReadonlyArray<AmqpValue>
  | ReadonlyMap<AmqpValue, AmqpValue>

/** Raised on bytes that are not valid AMQP. */
export class DecodeError extends Error {
  override readonly name = "DecodeError"
}

const ensure = (buf: Buffer, pos: number, bytes: number): void => {
  if (pos + bytes > buf.length) throw new DecodeError(`truncated AMQP value at offset ${pos}`)
}

/** The offset just after the value (constructor included) that starts at `pos`. */
export const skipValue = (buf: Buffer, pos: number): number => {
  ensure(buf, pos, 1)
  let code = buf[pos]
  pos += 1
  if (code === 0x00) {
    pos = skipValue(buf, pos)
    ensure(buf, pos, 1)
    code = buf[pos]
    pos += 1
  }
  return skipBody(code, buf, pos)
}

const skipBody = (code: number, buf: Buffer, pos: number): number => {
  switch (code >> 4) {
    case 0x4:
      return pos
    case 0x5:
      return pos + 1
    case 0x6:
      return pos + 2
    case 0x7:
      return pos + 4
    case 0x8:
      return pos + 8
    case 0x9:
      return pos + 16
    case 0xa:
    case 0xc:
    case 0xe:
      ensure(buf, pos, 1)
      return pos + 1 + buf[pos]
    case 0xb:
    case 0xd:
    case 0xf:
      ensure(buf, pos, 4)
      return pos + 4 + buf.readUInt32BE(pos)
    default:
      throw new DecodeError(`unknown AMQP type code 0x${code.toString(16)} at offset ${pos - 1}`)
  }
}

const toNumberOrBigint = (value: bigint): number | bigint =>
  value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(value) : value

/** Decodes the value at `pos`; returns it and the offset after it. */
export const decodeValue = (buf: Buffer, pos: number): [AmqpValue, number] => {
  ensure(buf, pos, 1)
  const code = buf[pos]
  if (code === 0x00) {
    const [descriptor, afterDescriptor] = decodeValue(buf, pos + 1)
    const [value, end] = decodeValue(buf, afterDescriptor)
    const key = typeof descriptor === "number"
      ? descriptor
      : typeof descriptor === "bigint"
      ? Number(descriptor)
      : String(descriptor)
    return [new AmqpDescribed(key, value), end]
  }
  return decodeBody(code, buf, pos + 1)
}

const decodeBody = (code: number, buf: Buffer, pos: number): [AmqpValue, number] => {
  const end = skipBody(code, buf, pos)
  ensure(buf, pos, end - pos)
  switch (code) {
    case 0x40:
      return [null, end]
    case 0x41:
      return [true, end]
    case 0x42:
      return [false, end]
    case 0x43:
    case 0x44:
      return [0, end]
    case 0x45:
      return [[], end]
    case 0x50:
    case 0x52:
    case 0x53:
      return [buf.readUInt8(pos), end]
    case 0x51:
    case 0x54:
    case 0x55:
      return [buf.readInt8(pos), end]
    case 0x56:
      return [buf[pos] !== 0, end]
    case 0x60:
      return [buf.readUInt16BE(pos), end]
    case 0x61:
      return [buf.readInt16BE(pos), end]
    case 0x70:
      return [buf.readUInt32BE(pos), end]
    case 0x71:
      return [buf.readInt32BE(pos), end]
    case 0x72:
      return [buf.readFloatBE(pos), end]
    case 0x73:
      return [String.fromCodePoint(buf.readUInt32BE(pos)), end]
    case 0x80:
      return [toNumberOrBigint(buf.readBigUInt64BE(pos)), end]
    case 0x81:
      return [toNumberOrBigint(buf.readBigInt64BE(pos)), end]
    case 0x82:
      return [buf.readDoubleBE(pos), end]
    case 0x83:
      return [new Date(Number(buf.readBigInt64BE(pos))), end]
    case 0x98:
      return [new AmqpUuid(Buffer.from(buf.subarray(pos, end))), end]
    case 0xa0:
      return [Buffer.from(buf.subarray(pos + 1, end)), end]
    case 0xb0:
      return [Buffer.from(buf.subarray(pos + 4, end)), end]
    case 0xa1:
      return [buf.toString("utf8", pos + 1, end), end]
    case 0xb1:
      return [buf.toString("utf8", pos + 4, end), end]
    case 0xa3:
      return [new AmqpSymbol(buf.toString("ascii", pos + 1, end)), end]
    case 0xb3:
      return [new AmqpSymbol(buf.toString("ascii", pos + 4, end)), end]
    case 0xc0:
    case 0xd0:
      return [
        decodeItems(
          buf,
          code === 0xc0 ? pos + 2 : pos + 8,
          code === 0xc0 ? buf[pos + 1] : buf.readUInt32BE(pos + 4),
          end
        ),
        end
      ]
    case 0xc1:
    case 0xd1: {
      const items = decodeItems(
        buf,
        code === 0xc1 ? pos + 2 : pos + 8,
        code === 0xc1 ? buf[pos + 1] : buf.readUInt32BE(pos + 4),
        end
      )
      const map = new Map<AmqpValue, AmqpValue>()
      for (let i = 0; i + 1 < items.length; i += 2) map.set(items[i], items[i + 1])
      return [map, end]
    }
    case 0xe0:
    case 0xf0: {
      const count = code === 0xe0 ? buf[pos + 1] : buf.readUInt32BE(pos + 4)
      let p = code === 0xe0 ? pos + 2 : pos + 8
      let descriptor: AmqpValue | undefined
      if (buf[p] === 0x00) {
        const [d, after] = decodeValue(buf, p + 1)
        descriptor = d
        p = after
      }
      const elementCode = buf[p]
      p += 1
      const items: Array<AmqpValue> = []
      for (let i = 0; i < count; i++) {
        const [value, next] = decodeBody(elementCode, buf, p)
        items.push(descriptor === undefined ? value : new AmqpDescribed(String(descriptor), value))
        p = next
      }
      return [items, end]
    }
    default:
      throw new DecodeError(`unsupported AMQP type code 0x${code.toString(16)}`)
  }
}

const decodeItems = (buf: Buffer, pos: number, count: number, end: number): Array<AmqpValue> => {
  const items: Array<AmqpValue> = []
  let p = pos
  for (let i = 0; i < count; i++) {
    const [value, next] = decodeValue(buf, p)
    if (next > end) throw new DecodeError("compound value overruns its size")
    items.push(value)
    p = next
  }
  return items
}

/** Reads a map-like value with string or symbol keys into a plain lookup. */
export const asRecord = (value: AmqpValue | undefined): ReadonlyMap<string, AmqpValue> => {
  const out = new Map<string, AmqpValue>()
  if (value instanceof Map) {
    for (const [k, v] of value) {
      if (typeof k === "string") out.set(k, v)
      else if (k instanceof AmqpSymbol) out.set(k.value, v)
    }
  }
  return out
}

/** The text of a string or symbol value. */
export const asString = (value: AmqpValue | undefined): string | undefined =>
  typeof value === "string" ? value : value instanceof AmqpSymbol ? value.value : undefined

/** A number from any numeric AMQP value. */
export const asNumber = (value: AmqpValue | undefined): number | undefined =>
  typeof value === "number" ? value : typeof value === "bigint" ? Number(value) : undefined

// ---------------------------------------------------------------------------------------------
// Encoding. Every function returns the complete encoding of one value, constructor included.

export const encodeNull = (): Buffer => Buffer.from([0x40])

export const encodeBoolean = (value: boolean): Buffer => Buffer.from([value ? 0x41 : 0x42])

export const encodeUbyte = (value: number): Buffer => Buffer.from([0x50, value & 0xff])

export const encodeUint = (value: number): Buffer => {
  if (value === 0) return Buffer.from([0x43])
  if (value < 256) return Buffer.from([0x52, value])
  const out = Buffer.allocUnsafe(5)
  out[0] = 0x70
  out.writeUInt32BE(value >>> 0, 1)
  return out
}

export const encodeInt = (value: number): Buffer => {
  const out = Buffer.allocUnsafe(5)
  out[0] = 0x71
  out.writeInt32BE(value, 1)
  return out
}

export const encodeUlong = (value: number | bigint): Buffer => {
  const out = Buffer.allocUnsafe(9)
  out[0] = 0x80
  out.writeBigUInt64BE(BigInt(value), 1)
  return out
}

export const encodeLong = (value: number | bigint): Buffer => {
  const out = Buffer.allocUnsafe(9)
  out[0] = 0x81
  out.writeBigInt64BE(BigInt(value), 1)
  return out
}

export const encodeTimestamp = (millis: number): Buffer => {
  const out = Buffer.allocUnsafe(9)
  out[0] = 0x83
  out.writeBigInt64BE(BigInt(Math.trunc(millis)), 1)
  return out
}

const encodeVariable = (short: number, long: number, bytes: Buffer): Buffer => {
  if (bytes.length < 256) {
    const out = Buffer.allocUnsafe(2 + bytes.length)
    out[0] = short
    out[1] = bytes.length
    bytes.copy(out, 2)
    return out
  }
  const out = Buffer.allocUnsafe(5 + bytes.length)
  out[0] = long
  out.writeUInt32BE(bytes.length, 1)
  bytes.copy(out, 5)
  return out
}

export const encodeString = (value: string): Buffer => encodeVariable(0xa1, 0xb1, Buffer.from(value, "utf8"))

export const encodeSymbol = (value: string): Buffer => encodeVariable(0xa3, 0xb3, Buffer.from(value, "ascii"))

export const encodeBinary = (value: Uint8Array): Buffer =>
  encodeVariable(0xa0, 0xb0, Buffer.isBuffer(value) ? value : Buffer.from(value))

export const encodeUuid = (bytes: Buffer): Buffer => Buffer.concat([Buffer.from([0x98]), bytes])

const encodeCompound = (short: number, long: number, count: number, items: ReadonlyArray<Buffer>): Buffer => {
  let size = 0
  for (const item of items) size += item.length
  if (size + 1 < 256 && count < 256) {
    const out = Buffer.allocUnsafe(3 + size)
    out[0] = short
    out[1] = size + 1
    out[2] = count
    let p = 3
    for (const item of items) p += item.copy(out, p)
    return out
  }
  const out = Buffer.allocUnsafe(9 + size)
  out[0] = long
  out.writeUInt32BE(size + 4, 1)
  out.writeUInt32BE(count, 5)
  let p = 9
  for (const item of items) p += item.copy(out, p)
  return out
}

/** A list of already-encoded values. */
export const encodeList = (items: ReadonlyArray<Buffer>): Buffer =>
  items.length === 0 ? Buffer.from([0x45]) : encodeCompound(0xc0, 0xd0, items.length, items)

/** A map of already-encoded keys and values, given as `[key, value, key, value, ...]`. */
export const encodeMap = (keysAndValues: ReadonlyArray<Buffer>): Buffer =>
  encodeCompound(0xc1, 0xd1, keysAndValues.length, keysAndValues)

/** A map whose entries are already encoded key-value byte runs. */
export const encodeMapFromEntries = (entries: ReadonlyArray<Buffer>, count: number): Buffer =>
  encodeCompound(0xc1, 0xd1, count * 2, entries)

/** An array of fixed-width values sharing one constructor; each element is given without it. */
export const encodeArray = (elementCode: number, elements: ReadonlyArray<Buffer>): Buffer => {
  let size = 0
  for (const e of elements) size += e.length
  const out = Buffer.allocUnsafe(10 + size)
  out[0] = 0xf0
  out.writeUInt32BE(size + 5, 1)
  out.writeUInt32BE(elements.length, 5)
  out[9] = elementCode
  let p = 10
  for (const e of elements) p += e.copy(out, p)
  return out
}

/** An array of symbols. */
export const encodeSymbolArray = (values: ReadonlyArray<string>): Buffer =>
  encodeArray(
    0xb3,
    values.map((v) => {
      const bytes = Buffer.from(v, "ascii")
      const out = Buffer.allocUnsafe(4 + bytes.length)
      out.writeUInt32BE(bytes.length, 0)
      bytes.copy(out, 4)
      return out
    })
  )

/** A value described by a numeric descriptor. */
export const encodeDescribed = (descriptor: number, value: Buffer): Buffer => {
  const head = descriptor < 256
    ? Buffer.from([0x00, 0x53, descriptor])
    : Buffer.concat([Buffer.from([0x00]), encodeUlong(descriptor)])
  return Buffer.concat([head, value])
}

/** Encodes a JavaScript value with the obvious AMQP type (used for application properties). */
export const encodeAny = (value: unknown): Buffer => {
  if (value === null || value === undefined) return encodeNull()
  if (typeof value === "string") return encodeString(value)
  if (typeof value === "boolean") return encodeBoolean(value)
  if (typeof value === "bigint") return encodeLong(value)
  if (typeof value === "number") {
    if (Number.isInteger(value)) {
      return value >= -2147483648 && value <= 2147483647 ? encodeInt(value) : encodeLong(value)
    }
    const out = Buffer.allocUnsafe(9)
    out[0] = 0x82
    out.writeDoubleBE(value, 1)
    return out
  }
  if (value instanceof Date) return encodeTimestamp(value.getTime())
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return encodeBinary(value)
  if (value instanceof AmqpSymbol) return encodeSymbol(value.value)
  if (value instanceof AmqpUuid) return encodeUuid(value.bytes)
  if (Array.isArray(value)) return encodeList(value.map(encodeAny))
  if (value instanceof Map) {
    const parts: Array<Buffer> = []
    for (const [k, v] of value) parts.push(encodeAny(k), encodeAny(v))
    return encodeMap(parts)
  }
  return encodeString(String(value))
}

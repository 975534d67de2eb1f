/**
 * A small, self-contained AMQP 1.0 type-system codec (AMQP 1.0 part 1): bytes to a typed tree
 * and back. It exists because rhea's own codec unwraps described values lossily (a nested
 * descriptor inside an amqp-value or a transfer `state` is dropped), so transaction control
 * messages and delivery states are read and written here, independently of rhea. The decoder
 * accepts every encoding the spec allows (any width, numeric or symbolic descriptors); the
 * encoder always picks the most compact one.
 */
import { Either, Schema } from "effect"

/** A failure to encode or decode AMQP bytes, with the reason a person can act on. */
export class AmqpCodecError extends Schema.TaggedError<AmqpCodecError>("effect-eventually/AmqpCodecError")(
  "AmqpCodecError",
  { reason: Schema.String }
) {
  override get message(): string {
    return `Invalid AMQP 1.0 data: ${this.reason}`
  }
}

/** A decoded AMQP 1.0 value; integers wider than 32 bits are `bigint`. */
export type AmqpValue =
  | { readonly _tag: "Null" }
  | { readonly _tag: "Boolean"; readonly value: boolean }
  | {
    readonly _tag: "Ubyte" | "Ushort" | "Uint" | "Byte" | "Short" | "Int" | "Float" | "Double" | "Char"
    readonly value: number
  }
  | { readonly _tag: "Ulong" | "Long" | "Timestamp"; readonly value: bigint }
  | { readonly _tag: "Binary" | "Uuid" | "Decimal32" | "Decimal64" | "Decimal128"; readonly value: Buffer }
  | { readonly _tag: "String" | "Symbol"; readonly value: string }
  | { readonly _tag: "List"; readonly items: ReadonlyArray<AmqpValue> }
  | { readonly _tag: "Array"; readonly items: ReadonlyArray<AmqpValue> }
  | { readonly _tag: "Map"; readonly entries: ReadonlyArray<readonly [AmqpValue, AmqpValue]> }
  | { readonly _tag: "Described"; readonly descriptor: AmqpValue; readonly value: AmqpValue }

/** Constructors for the values the transaction codec writes. */
export const Amqp = {
  null: { _tag: "Null" } as AmqpValue,
  boolean: (value: boolean): AmqpValue => ({ _tag: "Boolean", value }),
  uint: (value: number): AmqpValue => ({ _tag: "Uint", value }),
  ulong: (value: bigint | number): AmqpValue => ({ _tag: "Ulong", value: BigInt(value) }),
  binary: (value: Uint8Array): AmqpValue => ({ _tag: "Binary", value: Buffer.from(value) }),
  string: (value: string): AmqpValue => ({ _tag: "String", value }),
  symbol: (value: string): AmqpValue => ({ _tag: "Symbol", value }),
  list: (items: ReadonlyArray<AmqpValue>): AmqpValue => ({ _tag: "List", items }),
  array: (items: ReadonlyArray<AmqpValue>): AmqpValue => ({ _tag: "Array", items }),
  map: (entries: ReadonlyArray<readonly [AmqpValue, AmqpValue]>): AmqpValue => ({ _tag: "Map", entries }),
  described: (code: bigint | number | string, value: AmqpValue): AmqpValue => ({
    _tag: "Described",
    descriptor: typeof code === "string" ? { _tag: "Symbol", value: code } : { _tag: "Ulong", value: BigInt(code) },
    value
  })
} as const

/** Whether an unknown value is an {@link AmqpValue} tree node. */
export const isAmqpValue = (u: unknown): u is AmqpValue =>
  typeof u === "object" && u !== null && "_tag" in u && typeof u._tag === "string" && u._tag in fixedTags

const fixedTags: Record<AmqpValue["_tag"], true> = {
  Null: true,
  Boolean: true,
  Ubyte: true,
  Ushort: true,
  Uint: true,
  Byte: true,
  Short: true,
  Int: true,
  Float: true,
  Double: true,
  Char: true,
  Ulong: true,
  Long: true,
  Timestamp: true,
  Binary: true,
  Uuid: true,
  Decimal32: true,
  Decimal64: true,
  Decimal128: true,
  String: true,
  Symbol: true,
  List: true,
  Array: true,
  Map: true,
  Described: true
}

// Thrown only inside this module and turned into a failure value at every exported boundary.
class Invalid {
  constructor(readonly reason: string) {}
}

const hex = (n: number) => `0x${n.toString(16).padStart(2, "0")}`

class Cursor {
  offset: number
  constructor(readonly bytes: Buffer, offset = 0) {
    this.offset = offset
  }
  take(n: number): Buffer {
    if (this.offset + n > this.bytes.length) {
      throw new Invalid(
        `needs ${n} more byte(s) at offset ${this.offset}, only ${this.bytes.length - this.offset} left`
      )
    }
    const slice = this.bytes.subarray(this.offset, this.offset + n)
    this.offset += n
    return slice
  }
  u8(): number {
    return this.take(1).readUInt8(0)
  }
  u32(): number {
    return this.take(4).readUInt32BE(0)
  }
}

const decodeAt = (c: Cursor): AmqpValue => {
  const code = c.u8()
  if (code === 0x00) {
    const descriptor = decodeAt(c)
    return { _tag: "Described", descriptor, value: decodeAt(c) }
  }
  return decodeBody(c, code)
}

// The value that follows a constructor `code` (shared by single values and array elements).
const decodeBody = (c: Cursor, code: number): AmqpValue => {
  switch (code) {
    case 0x40:
      return { _tag: "Null" }
    case 0x41:
      return { _tag: "Boolean", value: true }
    case 0x42:
      return { _tag: "Boolean", value: false }
    case 0x56: {
      const b = c.u8()
      if (b > 1) throw new Invalid(`boolean byte must be 0x00 or 0x01, got ${hex(b)}`)
      return { _tag: "Boolean", value: b === 1 }
    }
    case 0x50:
      return { _tag: "Ubyte", value: c.u8() }
    case 0x60:
      return { _tag: "Ushort", value: c.take(2).readUInt16BE(0) }
    case 0x70:
      return { _tag: "Uint", value: c.u32() }
    case 0x52:
      return { _tag: "Uint", value: c.u8() }
    case 0x43:
      return { _tag: "Uint", value: 0 }
    case 0x80:
      return { _tag: "Ulong", value: c.take(8).readBigUInt64BE(0) }
    case 0x53:
      return { _tag: "Ulong", value: BigInt(c.u8()) }
    case 0x44:
      return { _tag: "Ulong", value: 0n }
    case 0x51:
      return { _tag: "Byte", value: c.take(1).readInt8(0) }
    case 0x61:
      return { _tag: "Short", value: c.take(2).readInt16BE(0) }
    case 0x71:
      return { _tag: "Int", value: c.take(4).readInt32BE(0) }
    case 0x54:
      return { _tag: "Int", value: c.take(1).readInt8(0) }
    case 0x81:
      return { _tag: "Long", value: c.take(8).readBigInt64BE(0) }
    case 0x55:
      return { _tag: "Long", value: BigInt(c.take(1).readInt8(0)) }
    case 0x72:
      return { _tag: "Float", value: c.take(4).readFloatBE(0) }
    case 0x82:
      return { _tag: "Double", value: c.take(8).readDoubleBE(0) }
    case 0x73:
      return { _tag: "Char", value: c.u32() }
    case 0x83:
      return { _tag: "Timestamp", value: c.take(8).readBigInt64BE(0) }
    case 0x74:
      return { _tag: "Decimal32", value: Buffer.from(c.take(4)) }
    case 0x84:
      return { _tag: "Decimal64", value: Buffer.from(c.take(8)) }
    case 0x94:
      return { _tag: "Decimal128", value: Buffer.from(c.take(16)) }
    case 0x98:
      return { _tag: "Uuid", value: Buffer.from(c.take(16)) }
    case 0xa0:
      return { _tag: "Binary", value: Buffer.from(c.take(c.u8())) }
    case 0xb0:
      return { _tag: "Binary", value: Buffer.from(c.take(c.u32())) }
    case 0xa1:
      return { _tag: "String", value: c.take(c.u8()).toString("utf8") }
    case 0xb1:
      return { _tag: "String", value: c.take(c.u32()).toString("utf8") }
    case 0xa3:
      return { _tag: "Symbol", value: c.take(c.u8()).toString("ascii") }
    case 0xb3:
      return { _tag: "Symbol", value: c.take(c.u32()).toString("ascii") }
    case 0x45:
      return { _tag: "List", items: [] }
    case 0xc0:
    case 0xd0:
      return { _tag: "List", items: decodeCompound(c, code === 0xc0 ? 1 : 4) }
    case 0xc1:
    case 0xd1: {
      const items = decodeCompound(c, code === 0xc1 ? 1 : 4)
      if (items.length % 2 !== 0) throw new Invalid(`map has an odd number of elements (${items.length})`)
      const entries: Array<readonly [AmqpValue, AmqpValue]> = []
      for (let i = 0; i < items.length; i += 2) entries.push([items[i], items[i + 1]])
      return { _tag: "Map", entries }
    }
    case 0xe0:
    case 0xf0:
      return decodeArray(c, code === 0xe0 ? 1 : 4)
    default:
      throw new Invalid(`unknown type constructor ${hex(code)} at offset ${c.offset - 1}`)
  }
}

const readWidth = (c: Cursor, width: 1 | 4) => (width === 1 ? c.u8() : c.u32())

const decodeCompound = (c: Cursor, width: 1 | 4): Array<AmqpValue> => {
  const size = readWidth(c, width)
  const end = c.offset + size
  if (end > c.bytes.length) throw new Invalid(`compound of ${size} bytes overruns the buffer`)
  const count = readWidth(c, width)
  const items: Array<AmqpValue> = []
  for (let i = 0; i < count; i++) items.push(decodeAt(c))
  if (c.offset !== end) {
    throw new Invalid(`compound declared ${size} bytes but its ${count} element(s) used a different size`)
  }
  return items
}

const decodeArray = (c: Cursor, width: 1 | 4): AmqpValue => {
  const size = readWidth(c, width)
  const end = c.offset + size
  if (end > c.bytes.length) throw new Invalid(`array of ${size} bytes overruns the buffer`)
  const count = readWidth(c, width)
  let code = c.u8()
  let descriptor: AmqpValue | undefined
  if (code === 0x00) {
    descriptor = decodeAt(c)
    code = c.u8()
  }
  const items: Array<AmqpValue> = []
  for (let i = 0; i < count; i++) {
    const value = decodeBody(c, code)
    items.push(descriptor === undefined ? value : { _tag: "Described", descriptor, value })
  }
  if (c.offset !== end) {
    throw new Invalid(`array declared ${size} bytes but its ${count} element(s) used a different size`)
  }
  return { _tag: "Array", items }
}

const attempt = <A>(f: () => A): Either.Either<A, AmqpCodecError> => {
  try {
    return Either.right(f())
  } catch (e) {
    if (e instanceof Invalid) return Either.left(new AmqpCodecError({ reason: e.reason }))
    return Either.left(new AmqpCodecError({ reason: e instanceof Error ? e.message : String(e) }))
  }
}

/** Decodes exactly one AMQP value that fills `bytes`. */
export const decodeValue = (bytes: Uint8Array): Either.Either<AmqpValue, AmqpCodecError> =>
  attempt(() => {
    const c = new Cursor(toBuffer(bytes))
    const value = decodeAt(c)
    if (c.offset !== c.bytes.length) throw new Invalid(`${c.bytes.length - c.offset} trailing byte(s) after the value`)
    return value
  })

/** Decodes consecutive AMQP values (message sections, for example) until `bytes` is used up. */
export const decodeValues = (bytes: Uint8Array): Either.Either<ReadonlyArray<AmqpValue>, AmqpCodecError> =>
  attempt(() => {
    const c = new Cursor(toBuffer(bytes))
    const values: Array<AmqpValue> = []
    while (c.offset < c.bytes.length) values.push(decodeAt(c))
    return values
  })

/** Decodes one value at `offset` and returns where it ends (for reading frames field by field). */
export const decodeValueAt = (
  bytes: Uint8Array,
  offset: number
): Either.Either<{ readonly value: AmqpValue; readonly end: number }, AmqpCodecError> =>
  attempt(() => {
    const c = new Cursor(toBuffer(bytes), offset)
    const value = decodeAt(c)
    return { value, end: c.offset }
  })

const toBuffer = (bytes: Uint8Array): Buffer =>
  Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)

// ---------------------------------------------------------------------------------------------
// Encoding

const u8 = (n: number) => Buffer.from([n])
const u32 = (n: number) => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n, 0)
  return b
}

const variable = (small: number, large: number, body: Buffer): Buffer =>
  body.length <= 0xff
    ? Buffer.concat([u8(small), u8(body.length), body])
    : Buffer.concat([u8(large), u32(body.length), body])

const compound = (small: number, large: number, count: number, body: Buffer): Buffer =>
  // Small form when both the size (count byte included) and the count fit one byte.
  body.length + 1 <= 0xff && count <= 0xff
    ? Buffer.concat([u8(small), u8(body.length + 1), u8(count), body])
    : Buffer.concat([u8(large), u32(body.length + 4), u32(count), body])

const fixed = (code: number, width: number, write: (b: Buffer) => void): Buffer => {
  const b = Buffer.alloc(1 + width)
  b.writeUInt8(code, 0)
  write(b)
  return b
}

const MAX_U64 = (1n << 64n) - 1n
const checkInt = (ok: boolean, what: string, value: number | bigint) => {
  if (!ok) throw new Invalid(`${value} is not a valid ${what}`)
}

const encodeAt = (v: AmqpValue): Buffer => {
  switch (v._tag) {
    case "Null":
      return u8(0x40)
    case "Boolean":
      return u8(v.value ? 0x41 : 0x42)
    case "Ubyte":
      checkInt(Number.isInteger(v.value) && v.value >= 0 && v.value <= 0xff, "ubyte", v.value)
      return fixed(0x50, 1, (b) => b.writeUInt8(v.value, 1))
    case "Ushort":
      checkInt(Number.isInteger(v.value) && v.value >= 0 && v.value <= 0xffff, "ushort", v.value)
      return fixed(0x60, 2, (b) => b.writeUInt16BE(v.value, 1))
    case "Uint":
      checkInt(Number.isInteger(v.value) && v.value >= 0 && v.value <= 0xffffffff, "uint", v.value)
      if (v.value === 0) return u8(0x43)
      if (v.value <= 0xff) return fixed(0x52, 1, (b) => b.writeUInt8(v.value, 1))
      return fixed(0x70, 4, (b) => b.writeUInt32BE(v.value, 1))
    case "Ulong":
      checkInt(v.value >= 0n && v.value <= MAX_U64, "ulong", v.value)
      if (v.value === 0n) return u8(0x44)
      if (v.value <= 0xffn) return fixed(0x53, 1, (b) => b.writeUInt8(Number(v.value), 1))
      return fixed(0x80, 8, (b) => b.writeBigUInt64BE(v.value, 1))
    case "Byte":
      return fixed(0x51, 1, (b) => b.writeInt8(v.value, 1))
    case "Short":
      return fixed(0x61, 2, (b) => b.writeInt16BE(v.value, 1))
    case "Int":
      if (v.value >= -128 && v.value <= 127) return fixed(0x54, 1, (b) => b.writeInt8(v.value, 1))
      return fixed(0x71, 4, (b) => b.writeInt32BE(v.value, 1))
    case "Long":
      if (v.value >= -128n && v.value <= 127n) return fixed(0x55, 1, (b) => b.writeInt8(Number(v.value), 1))
      return fixed(0x81, 8, (b) => b.writeBigInt64BE(v.value, 1))
    case "Timestamp":
      return fixed(0x83, 8, (b) => b.writeBigInt64BE(v.value, 1))
    case "Float":
      return fixed(0x72, 4, (b) => b.writeFloatBE(v.value, 1))
    case "Double":
      return fixed(0x82, 8, (b) => b.writeDoubleBE(v.value, 1))
    case "Char":
      return fixed(0x73, 4, (b) => b.writeUInt32BE(v.value, 1))
    case "Decimal32":
    case "Decimal64":
    case "Decimal128":
    case "Uuid": {
      const [code, width] = v._tag === "Decimal32"
        ? [0x74, 4]
        : v._tag === "Decimal64"
        ? [0x84, 8]
        : v._tag === "Decimal128"
        ? [0x94, 16]
        : [0x98, 16]
      if (v.value.length !== width) throw new Invalid(`${v._tag} must be ${width} bytes, got ${v.value.length}`)
      return Buffer.concat([u8(code), v.value])
    }
    case "Binary":
      return variable(0xa0, 0xb0, v.value)
    case "String":
      return variable(0xa1, 0xb1, Buffer.from(v.value, "utf8"))
    case "Symbol":
      return variable(0xa3, 0xb3, variableBytes(v))
    case "List":
      if (v.items.length === 0) return u8(0x45)
      return compound(0xc0, 0xd0, v.items.length, Buffer.concat(v.items.map(encodeAt)))
    case "Map":
      return compound(
        0xc1,
        0xd1,
        v.entries.length * 2,
        Buffer.concat(v.entries.flatMap(([k, x]) => [encodeAt(k), encodeAt(x)]))
      )
    case "Array":
      return encodeArray(v.items)
    case "Described":
      return Buffer.concat([u8(0x00), encodeAt(v.descriptor), encodeAt(v.value)])
  }
}

// The element encodings of an array: one shared constructor, then each element's bytes without
// it. Fixed-width types use their full-width constructor; variable-width ones the one-byte length
// form when every element fits it. Every tree the decoder produces can be written back; only
// hand-built arrays mixing element types (or descriptors) are refused.
const arrayParts = (
  items: ReadonlyArray<AmqpValue>
): { readonly constructor: Buffer; readonly bodies: ReadonlyArray<Buffer> } => {
  const first = items[0]
  // An empty array still needs a constructor; null is the smallest valid one.
  if (first === undefined) return { constructor: u8(0x40), bodies: [] }
  if (first._tag === "Described") {
    const descriptor = encodeAt(first.descriptor)
    const values = items.map((i) => {
      if (i._tag !== "Described" || !encodeAt(i.descriptor).equals(descriptor)) {
        throw new Invalid("array elements must all have the same descriptor")
      }
      return i.value
    })
    const inner = arrayParts(values)
    return { constructor: Buffer.concat([u8(0x00), descriptor, inner.constructor]), bodies: inner.bodies }
  }
  if (!items.every((i) => i._tag === first._tag)) throw new Invalid("array elements must all have the same type")
  if (first._tag === "Symbol" || first._tag === "String" || first._tag === "Binary") {
    const raw = items.map(variableBytes)
    const small = raw.every((r) => r.length <= 0xff)
    const base = first._tag === "Symbol" ? 0xa3 : first._tag === "String" ? 0xa1 : 0xa0
    return {
      constructor: u8(small ? base : base + 0x10),
      bodies: raw.map((r) => (small ? Buffer.concat([u8(r.length), r]) : Buffer.concat([u32(r.length), r])))
    }
  }
  const encoded = items.map(wide)
  return { constructor: encoded[0].subarray(0, 1), bodies: encoded.map((e) => e.subarray(1)) }
}

const variableBytes = (v: AmqpValue): Buffer => {
  switch (v._tag) {
    case "Symbol":
      if (!/^[\x00-\x7f]*$/.test(v.value)) throw new Invalid(`symbol "${v.value}" is not ASCII`)
      return Buffer.from(v.value, "ascii")
    case "String":
      return Buffer.from(v.value, "utf8")
    case "Binary":
      return v.value
    default:
      throw new Invalid(`${v._tag} is not a variable-width type`)
  }
}

// The full-width encoding of a non-described value (one constructor fits every value of a type).
const wide = (v: AmqpValue): Buffer => {
  switch (v._tag) {
    case "Uint":
      checkInt(Number.isInteger(v.value) && v.value >= 0 && v.value <= 0xffffffff, "uint", v.value)
      return fixed(0x70, 4, (b) => b.writeUInt32BE(v.value, 1))
    case "Ulong":
      checkInt(v.value >= 0n && v.value <= MAX_U64, "ulong", v.value)
      return fixed(0x80, 8, (b) => b.writeBigUInt64BE(v.value, 1))
    case "Int":
      return fixed(0x71, 4, (b) => b.writeInt32BE(v.value, 1))
    case "Long":
      return fixed(0x81, 8, (b) => b.writeBigInt64BE(v.value, 1))
    case "Boolean":
      return Buffer.from([0x56, v.value ? 1 : 0])
    case "Symbol":
    case "String":
    case "Binary": {
      const raw = variableBytes(v)
      return Buffer.concat([u8(v._tag === "Symbol" ? 0xb3 : v._tag === "String" ? 0xb1 : 0xb0), u32(raw.length), raw])
    }
    case "List": {
      const inner = Buffer.concat(v.items.map(encodeAt))
      return Buffer.concat([u8(0xd0), u32(inner.length + 4), u32(v.items.length), inner])
    }
    case "Map": {
      const inner = Buffer.concat(v.entries.flatMap(([k, x]) => [encodeAt(k), encodeAt(x)]))
      return Buffer.concat([u8(0xd1), u32(inner.length + 4), u32(v.entries.length * 2), inner])
    }
    case "Array": {
      const parts = arrayParts(v.items)
      const inner = Buffer.concat([parts.constructor, ...parts.bodies])
      return Buffer.concat([u8(0xf0), u32(inner.length + 4), u32(v.items.length), inner])
    }
    case "Described":
      throw new Invalid("a described value has no single-constructor encoding")
    default:
      // The remaining types have exactly one encoding.
      return encodeAt(v)
  }
}

const encodeArray = (items: ReadonlyArray<AmqpValue>): Buffer => {
  const parts = arrayParts(items)
  return compound(0xe0, 0xf0, items.length, Buffer.concat([parts.constructor, ...parts.bodies]))
}

/** Encodes one AMQP value, in its most compact encoding. */
export const encodeValue = (value: AmqpValue): Either.Either<Buffer, AmqpCodecError> => attempt(() => encodeAt(value))

/**
 * Encodes a value this code base built from parts that are always encodable (binaries, booleans,
 * strings, known ASCII symbols); a failure would be a bug here, not bad input.
 */
export const encodeKnown = (value: AmqpValue): Buffer => {
  const result = encodeValue(value)
  if (Either.isLeft(result)) {
    // A defect, not a recoverable failure: the callers only pass values they constructed.
    throw new Error(`BUG: cannot encode an internally built AMQP value: ${result.left.reason}`)
  }
  return result.right
}

// ---------------------------------------------------------------------------------------------
// Reading helpers

/** The descriptor of a described value, as a number (ulong codes) or a string (symbolic). */
export const descriptorOf = (value: AmqpValue): bigint | string | undefined => {
  if (value._tag !== "Described") return undefined
  const d = value.descriptor
  if (d._tag === "Ulong") return d.value
  if (d._tag === "Symbol") return d.value
  return undefined
}

/** Whether `value` is described by the given numeric code or its symbolic name. */
export const isDescribedAs = (value: AmqpValue, code: bigint, symbolic: string): boolean => {
  const d = descriptorOf(value)
  return d === code || d === symbolic
}

/** A short human-readable rendering, for error messages. */
export const show = (value: AmqpValue): string => {
  switch (value._tag) {
    case "Null":
      return "null"
    case "Binary":
    case "Uuid":
    case "Decimal32":
    case "Decimal64":
    case "Decimal128":
      return `${value._tag.toLowerCase()}(0x${value.value.toString("hex")})`
    case "String":
      return JSON.stringify(value.value)
    case "Symbol":
      return `:${value.value}`
    case "List":
    case "Array":
      return `[${value.items.map(show).join(", ")}]`
    case "Map":
      return `{${value.entries.map(([k, v]) => `${show(k)}: ${show(v)}`).join(", ")}}`
    case "Described": {
      const d = descriptorOf(value)
      return `${typeof d === "bigint" ? `0x${d.toString(16)}` : String(d)}${show(value.value)}`
    }
    default:
      return String(value.value)
  }
}

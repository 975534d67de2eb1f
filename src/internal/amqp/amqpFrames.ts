/**
 * Splits a captured AMQP byte stream into frames and reads performatives with this package's own
 * decoder, independently of rhea. The start-up self-check of the transactional transfer hook and
 * the tests use it to look at what rhea actually put on the wire.
 */
import { Either, Option } from "effect"
import { AmqpCodecError, type AmqpValue, decodeValueAt, descriptorOf } from "./amqpValue.js"

/** One frame of a captured AMQP connection. */
export interface AmqpFrame {
  /** 0 for AMQP frames, 1 for SASL frames. */
  readonly type: number
  readonly channel: number
  /** Absent for an empty (heartbeat) frame. */
  readonly performative: Option.Option<AmqpValue>
  /** The bytes after the performative (a transfer's message payload). */
  readonly payload: Buffer
}

/** The performative descriptor codes of AMQP 1.0 part 2. */
export const Performative = {
  open: 0x10n,
  begin: 0x11n,
  attach: 0x12n,
  flow: 0x13n,
  transfer: 0x14n,
  disposition: 0x15n,
  detach: 0x16n,
  end: 0x17n,
  close: 0x18n
} as const

/**
 * Parses every complete frame in `bytes` (protocol headers such as `AMQP 3 1 0 0` are skipped
 * wherever a frame could start). Bytes of an incomplete last frame are returned in `rest`.
 */
export const parseFrames = (
  bytes: Uint8Array
): Either.Either<{ readonly frames: ReadonlyArray<AmqpFrame>; readonly rest: Buffer }, AmqpCodecError> => {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const frames: Array<AmqpFrame> = []
  let offset = 0
  while (offset < buf.length) {
    if (buf.length - offset >= 8 && buf.toString("ascii", offset, offset + 4) === "AMQP") {
      offset += 8
      continue
    }
    if (buf.length - offset < 8) break
    const size = buf.readUInt32BE(offset)
    if (size < 8) {
      return Either.left(new AmqpCodecError({ reason: `frame size ${size} at offset ${offset} is below 8` }))
    }
    if (buf.length - offset < size) break
    const doff = buf.readUInt8(offset + 4)
    if (doff < 2 || doff * 4 > size) {
      return Either.left(new AmqpCodecError({ reason: `invalid data offset ${doff} at offset ${offset}` }))
    }
    const type = buf.readUInt8(offset + 5)
    const channel = buf.readUInt16BE(offset + 6)
    const body = buf.subarray(offset + doff * 4, offset + size)
    if (body.length === 0) {
      frames.push({ type, channel, performative: Option.none(), payload: Buffer.alloc(0) })
    } else {
      const read = decodeValueAt(body, 0)
      if (Either.isLeft(read)) return Either.left(read.left)
      frames.push({
        type,
        channel,
        performative: Option.some(read.right.value),
        payload: Buffer.from(body.subarray(read.right.end))
      })
    }
    offset += size
  }
  return Either.right({ frames, rest: Buffer.from(buf.subarray(offset)) })
}

/** The numeric descriptor of a frame's performative, if it has one. */
export const performativeCode = (frame: AmqpFrame): bigint | undefined =>
  Option.match(frame.performative, {
    onNone: () => undefined,
    onSome: (p) => {
      const d = descriptorOf(p)
      return typeof d === "bigint" ? d : undefined
    }
  })

/** Field `index` of a performative (absent and null fields are `undefined`). */
export const performativeField = (frame: AmqpFrame, index: number): AmqpValue | undefined =>
  Option.match(frame.performative, {
    onNone: () => undefined,
    onSome: (p) => {
      if (p._tag !== "Described" || p.value._tag !== "List") return undefined
      const f = p.value.items[index]
      return f === undefined || f._tag === "Null" ? undefined : f
    }
  })

/** The index of the `state` field of a transfer (AMQP 1.0 part 2.7.5). */
export const TRANSFER_STATE_FIELD = 7
/** The index of the `state` field of a disposition (AMQP 1.0 part 2.7.6). */
export const DISPOSITION_STATE_FIELD = 4

/**
 * AMQP 1.0 transactions (spec part 4) as bytes and as values rhea can put on the wire. The rhea
 * hooks that go with it (coordinator links, transactional transfers, decoding patches) are in
 * `transactionalTransfer.ts`; run its `installTransactionSupport()` once on both sides.
 *
 * Client side: `encodeDeclare()` / `encodeDischarge(txnId, fail)` give the complete message
 * payload (one amqp-value section) to send on the coordinator link with
 * `sender.send(payload, tag, 0)`: with a message format given, rhea sends the bytes verbatim.
 * The coordinator's answer is `delivery.remote_state` of that send. For `declared` it is rhea's
 * raw described value (an object with `type`, `value` = `[Typed(binary)]` and `descriptor` whose
 * `value` is `0x33`, or `"amqp:declared:list"` if the peer used the symbolic form), raised as
 * the link event `"declared"` once the patches are installed (without them rhea logs
 * "unrecognised outcome" and raises no event, only `"settled"`). Read it with `decodeDeclared`.
 * `accepted` / `rejected` answers are rhea's own outcome objects; `decodeDeliveryState` reads
 * every one of these shapes.
 *
 * Server side (a coordinator on a rhea container, created with
 * `receiver_options: { autoaccept: false }` so that nothing is accepted before it answers):
 * - `isCoordinatorLink(receiver)` tells a coordinator link in `receiver_open`, where
 *   `answerCoordinatorAttach(receiver)` makes the answering attach carry the coordinator target;
 * - a declare / discharge arrives as a message on that link. rhea's parsed
 *   `context.message.body` has lost the control's descriptor (its reader keeps only the first
 *   of two nested descriptors), so decode the raw payload, `rawPayloadOf(context.message)`,
 *   with `decodeControl` (or `decodeDeclare` / `decodeDischarge`);
 * - answer a declare with `delivery.update(true, declared(txnId))`, and a discharge with
 *   `delivery.update(true, deliveryState(accepted))` or
 *   `deliveryState(rejected({ condition: TransactionErrorCondition.unknownId }))`;
 * - the `state` field of an incoming transfer is `context.delivery.remote_state`, which rhea has
 *   unwrapped lossily (a transactional-state becomes `[txnId: Buffer, outcome?: Typed]`, its
 *   descriptor dropped): `decodeTransferState(delivery.remote_state)` reads that shape and a raw
 *   described value, and answers `None` for a transfer outside any transaction. Answer an
 *   enlisted send with `delivery.update(true, transactionalState(txnId, accepted))`;
 * - a settlement of a message the server sent arrives as a disposition whose state is
 *   `transactional-state(txnId, outcome)`: rhea raises `"transactional_state"` (also when the
 *   disposition is unsettled, which rhea would otherwise not report at all) and `"settled"` on
 *   the server's sender; read `context.delivery.remote_state` with `decodeTransactionalState`.
 *
 * Every decoder returns an `Either` with an {@link AmqpCodecError}; nothing here throws on bad
 * input.
 */
import { Either, Option } from "effect"
import rhea from "rhea"
import {
  Amqp,
  AmqpCodecError,
  type AmqpValue,
  decodeValue,
  decodeValues,
  descriptorOf,
  encodeKnown,
  encodeValue,
  isAmqpValue,
  isDescribedAs,
  show
} from "./amqpValue.js"

export { Amqp, AmqpCodecError, type AmqpValue, decodeValue, decodeValues, encodeValue } from "./amqpValue.js"

// ---------------------------------------------------------------------------------------------
// Descriptors and symbols (AMQP 1.0 part 3 and part 4)

/** Numeric descriptor codes (domain 0x00000000) and symbolic names of the types used here. */
export const Descriptor = {
  error: { code: 0x1dn, name: "amqp:error:list" },
  received: { code: 0x23n, name: "amqp:received:list" },
  accepted: { code: 0x24n, name: "amqp:accepted:list" },
  rejected: { code: 0x25n, name: "amqp:rejected:list" },
  released: { code: 0x26n, name: "amqp:released:list" },
  modified: { code: 0x27n, name: "amqp:modified:list" },
  source: { code: 0x28n, name: "amqp:source:list" },
  target: { code: 0x29n, name: "amqp:target:list" },
  coordinator: { code: 0x30n, name: "amqp:coordinator:list" },
  declare: { code: 0x31n, name: "amqp:declare:list" },
  discharge: { code: 0x32n, name: "amqp:discharge:list" },
  declared: { code: 0x33n, name: "amqp:declared:list" },
  transactionalState: { code: 0x34n, name: "amqp:transactional-state:list" },
  amqpValue: { code: 0x77n, name: "amqp:value:*" }
} as const

/** The `txn-capability` symbols a coordinator target may carry. */
export const TxnCapability = {
  localTransactions: "amqp:local-transactions",
  distributedTransactions: "amqp:distributed-transactions",
  promotableTransactions: "amqp:promotable-transactions",
  multiTxnsPerSsn: "amqp:multi-txns-per-ssn",
  multiSsnsPerTxn: "amqp:multi-ssns-per-txn"
} as const

/** A `txn-capability` symbol. */
export type TxnCapabilityName = (typeof TxnCapability)[keyof typeof TxnCapability]

/** The `transaction-error` conditions a coordinator rejects with. */
export const TransactionErrorCondition = {
  unknownId: "amqp:transaction:unknown-id",
  rollback: "amqp:transaction:rollback",
  timeout: "amqp:transaction:timeout"
} as const

// ---------------------------------------------------------------------------------------------
// Models

/** The `error` type (0x1d) carried by a rejected outcome. */
export interface AmqpErrorInfo {
  readonly condition: string
  readonly description?: string
  /** The raw `info` map entries, when present. */
  readonly info?: ReadonlyArray<readonly [AmqpValue, AmqpValue]>
}

declare const OutcomeTypeId: unique symbol

/**
 * Outcomes only come from {@link accepted}, {@link released}, {@link rejected},
 * {@link modified} or a decoder, which all make sure they can be encoded; this type-level mark
 * keeps hand-built literals out, so every function taking an outcome is total.
 */
export interface OutcomeMark {
  readonly [OutcomeTypeId]: "Outcome"
}

/** The accepted outcome (0x24). */
export interface Accepted extends OutcomeMark {
  readonly _tag: "Accepted"
}
/** The rejected outcome (0x25). */
export interface Rejected extends OutcomeMark {
  readonly _tag: "Rejected"
  readonly error?: AmqpErrorInfo
}
/** The released outcome (0x26). */
export interface Released extends OutcomeMark {
  readonly _tag: "Released"
}
/** The modified outcome (0x27). */
export interface Modified extends OutcomeMark {
  readonly _tag: "Modified"
  readonly deliveryFailed?: boolean
  readonly undeliverableHere?: boolean
  /** The raw `message-annotations` map entries (keys are symbols or ulongs). */
  readonly messageAnnotations?: ReadonlyArray<readonly [AmqpValue, AmqpValue]>
}

/** A terminal delivery outcome (AMQP 1.0 part 3.4). */
export type Outcome = Accepted | Rejected | Released | Modified

/** The `declared` outcome (0x33): the coordinator's answer to a declare. */
export interface Declared {
  readonly _tag: "Declared"
  readonly txnId: Buffer
}

/** The `transactional-state` (0x34): work enlisted in `txnId`, with its provisional outcome. */
export interface TransactionalState {
  readonly _tag: "TransactionalState"
  readonly txnId: Buffer
  readonly outcome?: Outcome
}

/** The non-terminal `received` state (0x23). */
export interface Received {
  readonly _tag: "Received"
  readonly sectionNumber: number
  readonly sectionOffset: bigint
}

/** Any delivery state a transfer or a disposition can carry. */
export type DeliveryState = Outcome | Declared | TransactionalState | Received

/** The delivery states this module writes. */
export type EncodableState = Outcome | Declared | TransactionalState

/** A decoded `declare` (0x31). */
export interface Declare {
  readonly _tag: "Declare"
  /** Set only for distributed transactions, which Service Bus does not support. */
  readonly globalId: Option.Option<AmqpValue>
}

/** A decoded `discharge` (0x32). */
export interface Discharge {
  readonly _tag: "Discharge"
  readonly txnId: Buffer
  /** `false` commits, `true` rolls back; absent on the wire means `false`. */
  readonly fail: boolean
}

const mark = <A extends Outcome>(outcome: Omit<A, typeof OutcomeTypeId>): A => outcome as A

/** The accepted outcome. */
export const accepted: Accepted = mark<Accepted>({ _tag: "Accepted" })
/** The released outcome. */
export const released: Released = mark<Released>({ _tag: "Released" })

// Caller-supplied parts (error condition symbols, info and annotation maps) are checked here,
// once, by encoding the outcome.
const checked = <A extends Outcome>(outcome: A): Either.Either<A, AmqpCodecError> =>
  Either.map(encodeValue(outcomeValue(outcome)), () => outcome)

/** A rejected outcome, optionally with an error; fails if the error cannot be encoded. */
export const rejected = (error?: AmqpErrorInfo): Either.Either<Rejected, AmqpCodecError> =>
  checked(mark<Rejected>(error === undefined ? { _tag: "Rejected" } : { _tag: "Rejected", error }))

/** A modified outcome; fails if the annotations cannot be encoded. */
export const modified = (
  fields: Omit<Modified, "_tag" | typeof OutcomeTypeId> = {}
): Either.Either<Modified, AmqpCodecError> => checked(mark<Modified>({ _tag: "Modified", ...fields }))

// ---------------------------------------------------------------------------------------------
// Encoding to AMQP trees and bytes

const fail = (reason: string) => Either.left(new AmqpCodecError({ reason }))

const symbolMap = (entries: ReadonlyArray<readonly [AmqpValue, AmqpValue]>) => Amqp.map(entries)

/** The AMQP tree of an `error` (0x1d). */
export const errorValue = (error: AmqpErrorInfo): AmqpValue => {
  const fields: Array<AmqpValue> = [Amqp.symbol(error.condition)]
  if (error.description !== undefined || error.info !== undefined) {
    fields.push(error.description === undefined ? Amqp.null : Amqp.string(error.description))
  }
  if (error.info !== undefined) fields.push(symbolMap(error.info))
  return Amqp.described(Descriptor.error.code, Amqp.list(fields))
}

// Trailing absent fields are omitted, as the spec allows and as rhea and proton do.
const trimmed = (fields: ReadonlyArray<AmqpValue | undefined>): AmqpValue => {
  const out = fields.map((f) => f ?? Amqp.null)
  while (out.length > 0 && out[out.length - 1]._tag === "Null") out.pop()
  return Amqp.list(out)
}

/** The AMQP tree of an outcome. */
export const outcomeValue = (outcome: Outcome): AmqpValue => {
  switch (outcome._tag) {
    case "Accepted":
      return Amqp.described(Descriptor.accepted.code, Amqp.list([]))
    case "Released":
      return Amqp.described(Descriptor.released.code, Amqp.list([]))
    case "Rejected":
      return Amqp.described(
        Descriptor.rejected.code,
        trimmed([outcome.error === undefined ? undefined : errorValue(outcome.error)])
      )
    case "Modified":
      return Amqp.described(
        Descriptor.modified.code,
        trimmed([
          outcome.deliveryFailed === undefined ? undefined : Amqp.boolean(outcome.deliveryFailed),
          outcome.undeliverableHere === undefined ? undefined : Amqp.boolean(outcome.undeliverableHere),
          outcome.messageAnnotations === undefined ? undefined : symbolMap(outcome.messageAnnotations)
        ])
      )
  }
}

/** The AMQP tree of a `declared` (0x33). */
export const declaredValue = (txnId: Uint8Array): AmqpValue =>
  Amqp.described(Descriptor.declared.code, Amqp.list([Amqp.binary(txnId)]))

/** The AMQP tree of a `transactional-state` (0x34); a send carries no outcome. */
export const transactionalStateValue = (txnId: Uint8Array, outcome?: Outcome): AmqpValue =>
  Amqp.described(
    Descriptor.transactionalState.code,
    Amqp.list(outcome === undefined ? [Amqp.binary(txnId)] : [Amqp.binary(txnId), outcomeValue(outcome)])
  )

/** The AMQP tree of a delivery state. */
export const deliveryStateValue = (state: EncodableState): AmqpValue => {
  switch (state._tag) {
    case "Declared":
      return declaredValue(state.txnId)
    case "TransactionalState":
      return transactionalStateValue(state.txnId, state.outcome)
    default:
      return outcomeValue(state)
  }
}

const amqpValueSection = (body: AmqpValue) => encodeKnown(Amqp.described(Descriptor.amqpValue.code, body))

/**
 * The message payload of a `declare` (0x31) for a local transaction: one amqp-value section,
 * `00 53 77 00 53 31 c0 02 01 40`. Send it with `sender.send(payload, tag, 0)`.
 */
export const encodeDeclare = (): Buffer =>
  amqpValueSection(Amqp.described(Descriptor.declare.code, Amqp.list([Amqp.null])))

/** The message payload of a `discharge` (0x32): `fail = false` commits, `true` rolls back. */
export const encodeDischarge = (txnId: Uint8Array, fail: boolean): Buffer =>
  amqpValueSection(Amqp.described(Descriptor.discharge.code, Amqp.list([Amqp.binary(txnId), Amqp.boolean(fail)])))

/** The bytes of a `declared` (0x33) outcome. */
export const encodeDeclared = (txnId: Uint8Array): Buffer => encodeKnown(declaredValue(txnId))

/** The bytes of a `transactional-state` (0x34). */
export const encodeTransactionalState = (txnId: Uint8Array, outcome?: Outcome): Buffer =>
  encodeKnown(transactionalStateValue(txnId, outcome))

/** The bytes of a delivery state. */
export const encodeDeliveryState = (state: EncodableState): Buffer => encodeKnown(deliveryStateValue(state))

// ---------------------------------------------------------------------------------------------
// rhea interop: rhea writes `Typed` trees. Building them with rhea's own reader from bytes this
// module encoded keeps one source of truth for the encoding, and rhea's writer re-emits a tree
// it read byte for byte.

/** A value in rhea's own representation (its `Typed`), ready for `delivery.update` or an attach. */
export interface RheaValue {
  readonly type: { readonly typecode: number }
  readonly value: unknown
  readonly descriptor?: unknown
}

interface RheaTypesCodec {
  readonly Reader: new(buffer: Buffer) => { read(): RheaValue }
  readonly Writer: new() => { write(value: unknown): void; toBuffer(): Buffer }
}

const rheaTypes = rhea.types as unknown as RheaTypesCodec

/** Bytes of one AMQP value as rhea's `Typed` tree. */
export const toRheaValue = (bytes: Buffer): RheaValue => new rheaTypes.Reader(bytes).read()

/** Whether a value looks like rhea's `Typed` (a type descriptor with a numeric typecode). */
export const isRheaValue = (u: unknown): u is RheaValue =>
  typeof u === "object" && u !== null && "type" in u && "value" in u && typeof u.type === "object" &&
  u.type !== null && "typecode" in u.type && typeof u.type.typecode === "number"

/**
 * Reads a value given as bytes, as this module's tree, as rhea's `Typed`, or as one of rhea's
 * composite objects (its outcomes); rhea values are re-encoded through rhea's writer and decoded
 * here, so rhea's lossy unwrapping never gets involved.
 */
export const fromAny = (value: unknown): Either.Either<AmqpValue, AmqpCodecError> => {
  if (value instanceof Uint8Array) return decodeValue(value)
  if (isAmqpValue(value)) return Either.right(value)
  // rhea's own outcome objects (accepted, rejected, ...) are composites that write themselves
  // through `described()`, which rhea's writer calls.
  if (isRheaValue(value) || isRheaComposite(value)) {
    try {
      const writer = new rheaTypes.Writer()
      writer.write(value)
      return decodeValue(writer.toBuffer())
    } catch (e) {
      return fail(`rhea could not re-encode the value: ${e instanceof Error ? e.message : String(e)}`)
    }
  }
  return fail(`expected AMQP bytes or a described rhea value, got ${describeUnknown(value)}`)
}

const isRheaComposite = (u: unknown): boolean =>
  typeof u === "object" && u !== null && "described" in u && typeof u.described === "function"

const describeUnknown = (u: unknown): string => {
  if (u === null) return "null"
  if (Array.isArray(u)) return `an array of ${u.length}`
  return typeof u
}

/** The `declared(txnId)` state for a coordinator's `delivery.update(true, declared(txnId))`. */
export const declared = (txnId: Uint8Array): RheaValue => toRheaValue(encodeDeclared(txnId))

/** A `transactional-state` for `delivery.update(settled, state)` (with an outcome) or a transfer. */
export const transactionalState = (txnId: Uint8Array, outcome?: Outcome): RheaValue =>
  toRheaValue(encodeTransactionalState(txnId, outcome))

/** A delivery state as a rhea value (e.g. a coordinator's `rejected` answer to a discharge). */
export const deliveryState = (state: EncodableState): RheaValue => toRheaValue(encodeDeliveryState(state))

/** The coordinator target (0x30) with its capabilities, as an AMQP tree. */
export const coordinatorValue = (
  capabilities: ReadonlyArray<TxnCapabilityName> = [TxnCapability.localTransactions]
): AmqpValue =>
  Amqp.described(
    Descriptor.coordinator.code,
    capabilities.length === 0 ? Amqp.list([]) : Amqp.list([Amqp.array(capabilities.map(Amqp.symbol))])
  )

/** The bytes of a coordinator target. */
export const encodeCoordinator = (capabilities?: ReadonlyArray<TxnCapabilityName>): Buffer =>
  encodeKnown(coordinatorValue(capabilities))

/** The coordinator target as a rhea value, for the `target` of a sender's attach. */
export const coordinatorTarget = (capabilities?: ReadonlyArray<TxnCapabilityName>): RheaValue =>
  toRheaValue(encodeCoordinator(capabilities))

// ---------------------------------------------------------------------------------------------
// Decoding

const fieldsOf = (value: AmqpValue, what: string): Either.Either<ReadonlyArray<AmqpValue>, AmqpCodecError> =>
  value._tag === "Described" && value.value._tag === "List"
    ? Either.right(value.value.items)
    : fail(`${what} must be a described list, got ${show(value)}`)

const field = (fields: ReadonlyArray<AmqpValue>, i: number): AmqpValue | undefined => {
  const f = fields[i]
  return f === undefined || f._tag === "Null" ? undefined : f
}

const binaryField = (fields: ReadonlyArray<AmqpValue>, i: number, what: string) => {
  const f = field(fields, i)
  return f?._tag === "Binary" ? Either.right(f.value) : fail(`${what} must be binary, got ${f ? show(f) : "nothing"}`)
}

const booleanField = (fields: ReadonlyArray<AmqpValue>, i: number, what: string) => {
  const f = field(fields, i)
  if (f === undefined) return Either.right(undefined)
  return f._tag === "Boolean" ? Either.right(f.value) : fail(`${what} must be a boolean, got ${show(f)}`)
}

const mapField = (fields: ReadonlyArray<AmqpValue>, i: number, what: string) => {
  const f = field(fields, i)
  if (f === undefined) return Either.right(undefined)
  return f._tag === "Map" ? Either.right(f.entries) : fail(`${what} must be a map, got ${show(f)}`)
}

/** Reads an `error` (0x1d). */
export const decodeError = (value: AmqpValue): Either.Either<AmqpErrorInfo, AmqpCodecError> =>
  Either.gen(function*() {
    if (!isDescribedAs(value, Descriptor.error.code, Descriptor.error.name)) {
      return yield* fail(`expected an error (0x1d), got ${show(value)}`)
    }
    const fields = yield* fieldsOf(value, "error")
    const condition = field(fields, 0)
    if (condition?._tag !== "Symbol") {
      return yield* fail(`error condition must be a symbol, got ${condition ? show(condition) : "nothing"}`)
    }
    const description = field(fields, 1)
    if (description !== undefined && description._tag !== "String") {
      return yield* fail(`error description must be a string, got ${show(description)}`)
    }
    const info = yield* mapField(fields, 2, "error info")
    return {
      condition: condition.value,
      ...(description === undefined ? {} : { description: description.value }),
      ...(info === undefined ? {} : { info })
    }
  })

const codeOf = (value: AmqpValue): bigint | undefined => {
  const d = descriptorOf(value)
  if (typeof d === "bigint") return d
  for (const entry of Object.values(Descriptor)) if (entry.name === d) return entry.code
  return undefined
}

/** Reads any delivery state (outcomes, declared, transactional-state, received) from a tree. */
export const decodeDeliveryStateValue = (value: AmqpValue): Either.Either<DeliveryState, AmqpCodecError> =>
  Either.gen(function*() {
    const code = codeOf(value)
    const fields = yield* fieldsOf(value, "a delivery state")
    switch (code) {
      case Descriptor.accepted.code:
        return accepted
      case Descriptor.released.code:
        return released
      case Descriptor.rejected.code: {
        const error = field(fields, 0)
        return mark<Rejected>(
          error === undefined ? { _tag: "Rejected" } : { _tag: "Rejected", error: yield* decodeError(error) }
        )
      }
      case Descriptor.modified.code: {
        const deliveryFailed = yield* booleanField(fields, 0, "modified delivery-failed")
        const undeliverableHere = yield* booleanField(fields, 1, "modified undeliverable-here")
        const messageAnnotations = yield* mapField(fields, 2, "modified message-annotations")
        return mark<Modified>({
          _tag: "Modified",
          ...(deliveryFailed === undefined ? {} : { deliveryFailed }),
          ...(undeliverableHere === undefined ? {} : { undeliverableHere }),
          ...(messageAnnotations === undefined ? {} : { messageAnnotations })
        })
      }
      case Descriptor.declared.code:
        return { _tag: "Declared", txnId: yield* binaryField(fields, 0, "declared txn-id") } satisfies Declared
      case Descriptor.transactionalState.code: {
        const txnId = yield* binaryField(fields, 0, "transactional-state txn-id")
        const inner = field(fields, 1)
        if (inner === undefined) return { _tag: "TransactionalState", txnId } satisfies TransactionalState
        const outcome = yield* decodeDeliveryStateValue(inner)
        if (!isOutcome(outcome)) {
          return yield* fail(`transactional-state outcome must be accepted, rejected, released or modified`)
        }
        return { _tag: "TransactionalState", txnId, outcome } satisfies TransactionalState
      }
      case Descriptor.received.code: {
        const n = field(fields, 0)
        const o = field(fields, 1)
        if (n?._tag !== "Uint" || o?._tag !== "Ulong") {
          return yield* fail(`received must carry a uint and a ulong, got ${show(value)}`)
        }
        return { _tag: "Received", sectionNumber: n.value, sectionOffset: o.value } satisfies Received
      }
      default:
        return yield* fail(`not a delivery state: ${show(value)}`)
    }
  })

const isOutcome = (s: DeliveryState): s is Outcome =>
  s._tag === "Accepted" || s._tag === "Rejected" || s._tag === "Released" || s._tag === "Modified"

/** Reads any delivery state from bytes, this module's tree, or a raw rhea described value. */
export const decodeDeliveryState = (state: unknown): Either.Either<DeliveryState, AmqpCodecError> =>
  Either.flatMap(fromAny(state), decodeDeliveryStateValue)

/**
 * Reads the `declared` outcome of a declare: on the client, pass `delivery.remote_state` of the
 * declare's delivery (rhea leaves it as a raw described value). Any other state is a failure
 * whose reason names it (a coordinator refuses a declare with `rejected`).
 */
export const decodeDeclared = (remoteState: unknown): Either.Either<Declared, AmqpCodecError> =>
  Either.flatMap(
    decodeDeliveryState(remoteState),
    (s) => s._tag === "Declared" ? Either.right(s) : fail(`expected declared (0x33), got ${describeState(s)}`)
  )

/** Reads a `transactional-state` (from a disposition's state, bytes, or a tree). */
export const decodeTransactionalState = (state: unknown): Either.Either<TransactionalState, AmqpCodecError> => {
  // The transfer shape that rhea's unwrapping leaves is accepted here too.
  if (Array.isArray(state)) {
    return Either.flatMap(
      decodeTransferState(state),
      (o) => Option.isSome(o) ? Either.right(o.value) : fail("not a transactional-state")
    )
  }
  return Either.flatMap(decodeDeliveryState(state), (s) =>
    s._tag === "TransactionalState"
      ? Either.right(s)
      : fail(`expected transactional-state (0x34), got ${describeState(s)}`))
}

/** A one-line description of a delivery state, for messages. */
export const describeState = (s: DeliveryState): string => {
  switch (s._tag) {
    case "Rejected":
      return s.error === undefined
        ? "rejected"
        : `rejected (${s.error.condition}${s.error.description ? `: ${s.error.description}` : ""})`
    case "Declared":
      return `declared (txn-id 0x${s.txnId.toString("hex")})`
    case "TransactionalState":
      return `transactional-state (txn-id 0x${s.txnId.toString("hex")}${
        s.outcome ? `, ${describeState(s.outcome)}` : ""
      })`
    default:
      return s._tag.toLowerCase()
  }
}

/**
 * Reads the transaction of an incoming transfer, from `context.delivery.remote_state` on a rhea
 * receiver (server side). rhea parses a transfer's `state` field lossily: a transactional-state
 * becomes the array `[txnId: Buffer, outcome?: Typed]` without its descriptor. That shape is
 * unambiguous (no other delivery state starts with a binary field), and a raw described value
 * or bytes are read too. `None` means the transfer is not enlisted in a transaction.
 */
export const decodeTransferState = (
  remoteState: unknown
): Either.Either<Option.Option<TransactionalState>, AmqpCodecError> => {
  if (remoteState === undefined || remoteState === null) return Either.right(Option.none())
  if (Array.isArray(remoteState)) {
    const [txnId, outcome] = remoteState as ReadonlyArray<unknown>
    if (!(txnId instanceof Uint8Array)) return Either.right(Option.none())
    const id = Buffer.from(txnId)
    if (outcome === undefined || outcome === null) {
      return Either.right(Option.some({ _tag: "TransactionalState", txnId: id }))
    }
    return Either.flatMap(decodeDeliveryState(outcome), (o) =>
      isOutcome(o)
        ? Either.right(Option.some({ _tag: "TransactionalState", txnId: id, outcome: o }))
        : fail(`transactional-state outcome must be an outcome, got ${describeState(o)}`))
  }
  return Either.map(
    decodeDeliveryState(remoteState),
    (s) => (s._tag === "TransactionalState" ? Option.some(s) : Option.none())
  )
}

// Control messages are amqp-value sections; other sections (header, properties, ...) may come
// with them and are skipped.
const controlBody = (payload: Uint8Array, what: string) =>
  Either.flatMap(decodeValues(payload), (sections) => {
    const body = sections.find((s) => isDescribedAs(s, Descriptor.amqpValue.code, Descriptor.amqpValue.name))
    return body?._tag === "Described"
      ? Either.right(body.value)
      : fail(`a ${what} message must have an amqp-value body section`)
  })

/** Reads a `declare` from the raw payload of a message received on a coordinator link. */
export const decodeDeclare = (payload: Uint8Array): Either.Either<Declare, AmqpCodecError> =>
  Either.gen(function*() {
    const body = yield* controlBody(payload, "declare")
    if (!isDescribedAs(body, Descriptor.declare.code, Descriptor.declare.name)) {
      return yield* fail(`expected declare (0x31), got ${show(body)}`)
    }
    const fields = yield* fieldsOf(body, "declare")
    return { _tag: "Declare", globalId: Option.fromNullable(field(fields, 0)) } satisfies Declare
  })

/** Reads a `discharge` from the raw payload of a message received on a coordinator link. */
export const decodeDischarge = (payload: Uint8Array): Either.Either<Discharge, AmqpCodecError> =>
  Either.gen(function*() {
    const body = yield* controlBody(payload, "discharge")
    if (!isDescribedAs(body, Descriptor.discharge.code, Descriptor.discharge.name)) {
      return yield* fail(`expected discharge (0x32), got ${show(body)}`)
    }
    const fields = yield* fieldsOf(body, "discharge")
    const txnId = yield* binaryField(fields, 0, "discharge txn-id")
    const failFlag = yield* booleanField(fields, 1, "discharge fail")
    return { _tag: "Discharge", txnId, fail: failFlag ?? false } satisfies Discharge
  })

/** Reads a control message payload as a declare or a discharge. */
export const decodeControl = (payload: Uint8Array): Either.Either<Declare | Discharge, AmqpCodecError> =>
  Either.flatMap(
    controlBody(payload, "coordinator control"),
    (body): Either.Either<Declare | Discharge, AmqpCodecError> =>
      isDescribedAs(body, Descriptor.declare.code, Descriptor.declare.name)
        ? decodeDeclare(payload)
        : isDescribedAs(body, Descriptor.discharge.code, Descriptor.discharge.name)
        ? decodeDischarge(payload)
        : fail(`a coordinator accepts only declare or discharge, got ${show(body)}`)
  )

/** Reads a coordinator target (0x30) and its capabilities. */
export const decodeCoordinator = (
  target: unknown
): Either.Either<{ readonly capabilities: ReadonlyArray<string> }, AmqpCodecError> =>
  Either.gen(function*() {
    const value = yield* fromAny(target)
    if (!isDescribedAs(value, Descriptor.coordinator.code, Descriptor.coordinator.name)) {
      return yield* fail(`expected a coordinator target (0x30), got ${show(value)}`)
    }
    const fields = yield* fieldsOf(value, "coordinator")
    const caps = field(fields, 0)
    if (caps === undefined) return { capabilities: [] }
    // A multiple field holds either one value or an array of them.
    const items = caps._tag === "Array" ? caps.items : [caps]
    const capabilities: Array<string> = []
    for (const c of items) {
      if (c._tag !== "Symbol") return yield* fail(`coordinator capabilities must be symbols, got ${show(c)}`)
      capabilities.push(c.value)
    }
    return { capabilities }
  })

/** Whether an attach's target (bytes, tree or rhea value) is a transaction coordinator. */
export const isCoordinatorTarget = (target: unknown): boolean =>
  target !== undefined && target !== null && Either.isRight(decodeCoordinator(target))

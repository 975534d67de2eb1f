/**
 * The small extensions rhea 3 needs to take part in AMQP 1.0 transactions, and the start-up
 * self-check that proves they still work with the rhea that is installed.
 *
 * 1. Transactional transfers (client). rhea never writes the `state` field of a transfer frame
 *    (its frame definition even lacks a writer for that field's type). `sendTransactional` sends
 *    through rhea as usual and marks the delivery; `enableTransactionalTransfers(session)` wraps
 *    that one session's `output(frame, payload)`, the single function rhea's session uses to
 *    emit frames, and for every transfer frame of a marked delivery (found by its delivery-id in
 *    the session's outgoing buffer) sets list field 7, `state`, whose position the AMQP spec
 *    fixes, to `transactional-state(txn-id)`. Other deliveries and sessions are untouched.
 * 2. Coordinator links (client). rhea's `attach_sender` rewrites any `target` option into a plain
 *    target (0x29). `attachCoordinator` creates the sender with the coordinator value as its
 *    `target` option (rhea copies link options into the attach performative verbatim for fields
 *    typed `*`), checks that it landed there, and only then attaches.
 * 3. Decoding (both sides), global and additive, by `installTransactionSupport()`:
 *    - rhea logs "unrecognised outcome" and raises no event for `declared` and
 *      `transactional-state` dispositions; after the patch they stay raw described values (what
 *      rhea gave before, readable with the codec) and are raised as the link events
 *      `"declared"` and `"transactional_state"` (also when the disposition is unsettled);
 *    - rhea turns a coordinator target it receives into `null` with a warning; after the patch
 *      a server's `receiver.target` is the raw coordinator value (`isCoordinatorTarget`);
 *    - rhea's parsed message body loses the descriptor of a declare or discharge; after the
 *      patch `rawPayloadOf(context.message)` gives the transfer's payload bytes.
 *
 * A rhea upgrade that breaks any of this must not degrade into sending non-transactional work,
 * so `verifyTransactionSupport` runs a client and a server rhea container over an in-memory
 * stream at start-up and checks, on the bytes rhea wrote, that a transactional transfer carries
 * `transactional-state(txn-id)` and a plain one no state, that the coordinator attach carries the
 * coordinator target and is recognised by the server, and that a `declared` answer reaches the
 * client as an event with a readable state. It fails with {@link TransactionSupportError}.
 */
import { Duration, Effect, Either, Option, Schema } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { createRequire } from "node:module"
import { Duplex } from "node:stream"
import rhea from "rhea"
import type { Connection, Delivery, EventContext, Message, Sender, Session } from "rhea"
import {
  type AmqpFrame,
  parseFrames,
  Performative,
  performativeCode,
  performativeField,
  TRANSFER_STATE_FIELD
} from "./amqpFrames.js"
import { Amqp, encodeKnown } from "./amqpValue.js"
import {
  accepted,
  coordinatorTarget,
  declared,
  decodeCoordinator,
  decodeDeclared,
  decodeDeliveryStateValue,
  decodeTransferState,
  deliveryState,
  Descriptor,
  isCoordinatorTarget,
  toRheaValue,
  transactionalState,
  TxnCapability,
  type TxnCapabilityName
} from "./transactionCodec.js"

/** rhea, as installed, cannot carry AMQP transactions; nothing transactional may be sent. */
export class TransactionSupportError extends Schema.TaggedError<TransactionSupportError>(
  "effect-eventually/TransactionSupportError"
)("TransactionSupportError", { reason: Schema.String }) {
  override get message(): string {
    return `AMQP transactions are not supported with rhea ${rheaVersion()}: ${this.reason}. ` +
      "The rhea extension in src/internal/amqp/transactionalTransfer.ts must be updated for this rhea version."
  }
}

const unsupported = (reason: string) => Either.left(new TransactionSupportError({ reason }))

const nodeRequire = createRequire(import.meta.url)

const rheaVersion = (): string => {
  try {
    const pkg = nodeRequire("rhea/package.json") as { readonly version?: unknown }
    return typeof pkg.version === "string" ? pkg.version : "(unknown version)"
  } catch {
    return "(unknown version)"
  }
}

/** The link events raised for transaction outcomes once {@link installTransactionSupport} ran. */
export const TransactionEvents = {
  declared: "declared",
  transactionalState: "transactional_state"
} as const

// ---------------------------------------------------------------------------------------------
// rhea internals, reached structurally and checked before use.

type Obj = Record<PropertyKey, unknown>
const isObj = (u: unknown): u is Obj => typeof u === "object" && u !== null
const isFn = (u: unknown): u is (...args: ReadonlyArray<unknown>) => unknown => typeof u === "function"

const HOOKED = Symbol.for("effect-eventually/amqp/transactional-transfer-hook")
const TRANSFER_STATE = Symbol.for("effect-eventually/amqp/transfer-state")
const PATCHED = Symbol.for("effect-eventually/amqp/patched")

// A transfer performative as rhea builds it: a composite whose class carries descriptor 0x14 and
// whose instance keeps the field list in `value`.
const isTransferFrame = (frame: unknown): frame is Obj & { value: Array<unknown>; delivery_id: unknown } => {
  if (!isObj(frame) || !Array.isArray(frame.value)) return false
  const ctor = frame.constructor as unknown
  if (!isFn(ctor) && !isObj(ctor)) return false
  const descriptor = (ctor as unknown as Obj).descriptor
  return isObj(descriptor) && descriptor.numeric === Number(Performative.transfer)
}

/**
 * Lets `session` write the `state` of transfer frames for deliveries sent with
 * {@link sendTransactional}. Idempotent; fails when rhea's session no longer has the shape the
 * hook relies on.
 */
export const enableTransactionalTransfers = (session: unknown): Either.Either<void, TransactionSupportError> => {
  if (!isObj(session)) return unsupported("a session object is required")
  if (session[HOOKED] === true) return Either.void
  const original = session.output
  if (!isFn(original)) return unsupported("rhea's Session no longer has an output(frame, payload) method")
  const outgoing = session.outgoing
  if (!isObj(outgoing) || !isObj(outgoing.deliveries) || !isFn(outgoing.deliveries.by_id)) {
    return unsupported("rhea's Session no longer keeps its outgoing deliveries in outgoing.deliveries.by_id(id)")
  }
  session.output = function(this: Obj, frame: unknown, payload?: unknown) {
    if (isTransferFrame(frame)) {
      // `this.outgoing` is read on every call: rhea replaces it when a connection reconnects.
      const current = this.outgoing as { deliveries: { by_id(id: unknown): unknown } }
      const delivery = current.deliveries.by_id(frame.delivery_id)
      if (isObj(delivery) && delivery[TRANSFER_STATE] !== undefined) {
        frame.value[TRANSFER_STATE_FIELD] = delivery[TRANSFER_STATE]
      }
    }
    return original.call(this, frame, payload)
  }
  Object.defineProperty(session, HOOKED, { value: true })
  return splitMergedDispositions(session)
}

const SPLIT = Symbol.for("effect-eventually/amqp/split-dispositions")

/**
 * Makes `session` write one disposition frame per delivery when rhea merged deliveries with
 * different states into one range. rhea 3.0's `write_dispositions` compares the states of a
 * range only once it holds two deliveries, so two dispositions written in the same tick for
 * consecutive delivery ids (say `transactional-state(txn A, accepted)` then
 * `transactional-state(txn B, rejected)`, or two `declared` answers with different ids) go out
 * as one frame with the first one's state. Ranges of deliveries that share one state are
 * left as they are. Idempotent.
 */
export const splitMergedDispositions = (session: unknown): Either.Either<void, TransactionSupportError> => {
  if (!isObj(session)) return unsupported("a session object is required")
  if (session[SPLIT] === true) return Either.void
  const original = session.output
  if (!isFn(original)) return unsupported("rhea's Session no longer has an output(frame, payload) method")
  let frames: Obj
  try {
    frames = nodeRequire("rhea/lib/frames.js") as Obj
  } catch (e) {
    return unsupported(`rhea/lib/frames.js cannot be loaded (${e instanceof Error ? e.message : String(e)})`)
  }
  const disposition = frames.disposition
  if (!isFn(disposition)) return unsupported("rhea/lib/frames.js no longer exports disposition(fields)")
  session.output = function(this: Obj, frame: unknown, payload?: unknown) {
    if (isObj(frame) && frameCode(frame) === Number(Performative.disposition)) {
      const first = frame.first
      const last = frame.last
      const side = frame.role === true ? this.incoming : this.outgoing
      if (
        typeof first === "number" && typeof last === "number" && last > first && isObj(side) &&
        isObj(side.deliveries) && isFn(side.deliveries.by_id)
      ) {
        const byId = side.deliveries.by_id as (id: number) => unknown
        const states: Array<unknown> = []
        for (let id = first; id <= last; id++) {
          const delivery = byId.call(side.deliveries, id)
          states.push(isObj(delivery) && delivery.state !== undefined ? delivery.state : frame.state)
        }
        if (states.some((state) => state !== states[0])) {
          let result: unknown
          for (let id = first; id <= last; id++) {
            result = original.call(
              this,
              disposition({ role: frame.role, first: id, last: id, settled: frame.settled, state: states[id - first] }),
              payload
            )
          }
          return result
        }
      }
    }
    return original.call(this, frame, payload)
  }
  Object.defineProperty(session, SPLIT, { value: true })
  return Either.void
}

const frameCode = (frame: Obj): number | undefined => {
  const ctor = frame.constructor as unknown
  if (!isFn(ctor) && !isObj(ctor)) return undefined
  const descriptor = (ctor as unknown as Obj).descriptor
  return isObj(descriptor) && typeof descriptor.numeric === "number" ? descriptor.numeric : undefined
}

/** Options of {@link sendTransactional}. */
export interface SendTransactionalOptions {
  readonly tag?: Buffer | string
  /** The message format; only used when `body` is already-encoded bytes. Default 0. */
  readonly format?: number
}

/**
 * Sends a message enlisted in transaction `txnId`: its transfer frame carries
 * `transactional-state(txnId)`. `body` is a rhea message (encoded by rhea) or its encoded
 * bytes. The delivery's outcome arrives as `transactional-state(txnId, outcome)`.
 */
export const sendTransactional = (
  sender: Sender,
  body: Message | Buffer,
  txnId: Uint8Array,
  options: SendTransactionalOptions = {}
): Either.Either<Delivery, TransactionSupportError> =>
  Either.map(enableTransactionalTransfers(sender.session), () => {
    const delivery = Buffer.isBuffer(body)
      ? sender.send(body, options.tag, options.format ?? 0)
      : sender.send(body, options.tag)
    // rhea only queues the delivery here; its frames are written on a later tick, after this
    // marker is set, so the very first transfer frame already carries the state.
    Object.defineProperty(delivery, TRANSFER_STATE, { value: transactionalState(txnId) })
    return delivery
  })

/** Options of {@link attachCoordinator}. */
export interface AttachCoordinatorOptions {
  readonly name?: string
  /** The coordinator's `capabilities`; default `amqp:local-transactions`. */
  readonly capabilities?: ReadonlyArray<TxnCapabilityName>
}

/**
 * Attaches a sender to the transaction coordinator on `session` (the attach carries the
 * coordinator target, 0x30), and enables transactional transfers on that session.
 */
export const attachCoordinator = (
  session: Session,
  options: AttachCoordinatorOptions = {}
): Either.Either<Sender, TransactionSupportError> =>
  Either.gen(function*() {
    yield* enableTransactionalTransfers(session)
    const s = session as unknown as Obj
    if (!isFn(s.create_sender)) return yield* unsupported("rhea's Session no longer has create_sender(name, options)")
    const name = options.name ?? `coordinator-${randomUUID()}`
    const target = coordinatorTarget(options.capabilities ?? [TxnCapability.localTransactions])
    // As other AMQP clients do: a source named after the link.
    const source = toRheaValue(
      encodeKnown(Amqp.described(Descriptor.source.code, Amqp.list([Amqp.string(name)])))
    )
    const sender = s.create_sender.call(session, name, { target, source, autosettle: true }) as Sender
    const attach = (sender as unknown as { local?: { attach?: Obj } }).local?.attach
    if (!isObj(attach) || attach.target !== target) {
      return yield* unsupported("rhea no longer copies a sender's target option into its attach")
    }
    sender.attach()
    return sender
  })

/**
 * Server side: makes the attach that answers a coordinator link carry the coordinator target
 * (a null target would tell the client no coordinator exists). Call it from the link's
 * `receiver_open` handler, before rhea writes the answering attach on the next tick.
 */
export const answerCoordinatorAttach = (
  receiver: unknown,
  capabilities: ReadonlyArray<TxnCapabilityName> = [TxnCapability.localTransactions]
): Either.Either<void, TransactionSupportError> => {
  const local = isObj(receiver) ? receiver.local : undefined
  if (!isObj(local) || !isObj(local.attach)) return unsupported("rhea's links no longer expose local.attach")
  const target = coordinatorTarget(capabilities)
  local.attach.target = target
  return local.attach.target === target ? Either.void : unsupported("rhea's attach no longer accepts a raw target")
}

/** Whether a server-side link was attached by a peer to the transaction coordinator. */
export const isCoordinatorLink = (link: unknown): boolean => isObj(link) && isCoordinatorTarget(link.target)

// ---------------------------------------------------------------------------------------------
// Global, additive decoding patches

const RAW_PAYLOADS = new WeakMap<object, Buffer>()

/** The payload bytes a received message was decoded from (needs {@link installTransactionSupport}). */
export const rawPayloadOf = (message: unknown): Option.Option<Buffer> =>
  isObj(message) ? Option.fromNullable(RAW_PAYLOADS.get(message)) : Option.none()

const describedCode = (value: unknown): number | string | undefined => {
  if (!isObj(value) || !isObj(value.descriptor)) return undefined
  const d = value.descriptor.value
  return typeof d === "number" || typeof d === "string" ? d : undefined
}

const isCode = (value: unknown, entry: { readonly code: bigint; readonly name: string }) => {
  const d = describedCode(value)
  return d === Number(entry.code) || d === entry.name
}

// A transaction delivery state as rhea keeps it (the raw described value), whose class tells
// rhea's outcome dispatch which link event to raise.
class DeclaredState {
  static readonly composite_type = TransactionEvents.declared
  constructor(raw: Obj) {
    Object.assign(this, raw)
  }
}
class TransactionalStateState {
  static readonly composite_type = TransactionEvents.transactionalState
  constructor(raw: Obj) {
    Object.assign(this, raw)
  }
}

const patch = (
  target: Obj,
  key: string,
  what: string,
  wrap: (original: (...args: Array<unknown>) => unknown) => (...args: Array<unknown>) => unknown
): Either.Either<void, TransactionSupportError> => {
  const original = target[key]
  if (!isFn(original)) return unsupported(`${what} is no longer a function`)
  if ((original as unknown as Obj)[PATCHED] === true) return Either.void
  const wrapped = wrap(original as (...args: Array<unknown>) => unknown)
  Object.defineProperty(wrapped, PATCHED, { value: true })
  target[key] = wrapped
  return Either.void
}

/**
 * Installs the global decoding patches (idempotent): transaction outcomes become link events,
 * coordinator targets are kept, and raw payloads of received messages are kept for
 * {@link rawPayloadOf}. Each patch only changes what rhea does for values it does not know.
 */
export const installTransactionSupport = (): Either.Either<void, TransactionSupportError> =>
  Either.gen(function*() {
    const message = rhea.message as unknown as Obj
    yield* patch(message, "unwrap_outcome", "rhea's message.unwrap_outcome", (original) => (outcome) => {
      if (isObj(outcome) && isCode(outcome, Descriptor.declared)) return new DeclaredState(outcome)
      if (isObj(outcome) && isCode(outcome, Descriptor.transactionalState)) return new TransactionalStateState(outcome)
      return original(outcome)
    })
    yield* patch(message, "decode", "rhea's message.decode", (original) => (buffer) => {
      const decoded = original(buffer)
      if (isObj(decoded) && Buffer.isBuffer(buffer)) RAW_PAYLOADS.set(decoded, buffer)
      return decoded
    })
    let terminus: unknown
    try {
      terminus = nodeRequire("rhea/lib/terminus.js")
    } catch (e) {
      return yield* unsupported(`rhea/lib/terminus.js cannot be loaded (${e instanceof Error ? e.message : String(e)})`)
    }
    if (!isObj(terminus)) return yield* unsupported("rhea/lib/terminus.js exports no object")
    yield* patch(terminus, "unwrap", "rhea's terminus.unwrap", (original) => (field) =>
      isObj(field) && isCode(field, Descriptor.coordinator) ? field : original(field))
  })

// ---------------------------------------------------------------------------------------------
// Start-up self-check

/** Two connected in-memory streams; everything written to `client` is also recorded. */
const memoryPair = () => {
  const written: Array<Buffer> = []
  const ends: { client?: Duplex; server?: Duplex } = {}
  const make = (peer: () => Duplex | undefined, record: boolean) =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        if (record) written.push(Buffer.from(chunk))
        peer()?.push(chunk)
        callback()
      },
      final(callback) {
        peer()?.push(null)
        callback()
      }
    })
  ends.client = make(() => ends.server, true)
  ends.server = make(() => ends.client, false)
  return { client: ends.client, server: ends.server, written }
}

const bytesEqual = (a: Uint8Array, b: Uint8Array) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0

/** What the self-check exercises; replaceable only to prove that the check notices breakage. */
export interface SelfCheckHooks {
  readonly sendTransactional: typeof sendTransactional
  readonly attachCoordinator: typeof attachCoordinator
}

const defaultHooks: SelfCheckHooks = { sendTransactional, attachCoordinator }

const runSelfCheck = (hooks: SelfCheckHooks) =>
  Effect.async<void, TransactionSupportError>((resume) => {
    let done = false
    const pair = memoryPair()
    // Without auto-accept, as a coordinator must answer declares itself.
    const server = rhea.create_container({
      id: "transaction-self-check-server",
      receiver_options: { autoaccept: false }
    } as never)
    const client = rhea.create_container({ id: "transaction-self-check-client" })
    const finish = (error?: string) => {
      if (done) return
      done = true
      // Streams are dropped without a close handshake: nothing else uses these connections.
      pair.client.destroy()
      pair.server.destroy()
      resume(error === undefined ? Effect.void : Effect.fail(new TransactionSupportError({ reason: error })))
    }
    for (const container of [server, client]) {
      container.on(
        "error",
        (e: unknown) => finish(`rhea raised an error: ${e instanceof Error ? e.message : String(e)}`)
      )
      container.on("disconnected", () => finish("the in-memory connection closed before the check completed"))
      container.on("protocol_error", (e: unknown) => finish(`protocol error: ${String(e)}`))
    }

    const txnId = randomBytes(8)
    const transactionalBody = Buffer.from([0x00, 0x53, 0x77, 0xa1, 0x03, 0x74, 0x78, 0x6e]) // amqp-value "txn"
    const plainBody = Buffer.from([0x00, 0x53, 0x77, 0xa1, 0x05, 0x70, 0x6c, 0x61, 0x69, 0x6e]) // "plain"
    const received: Array<{ readonly body: Option.Option<Buffer>; readonly state: unknown }> = []
    let serverSawCoordinator = false

    server.on("receiver_open", (context: EventContext) => {
      const receiver = context.receiver
      if (receiver === undefined) return
      if (isCoordinatorLink(receiver)) {
        serverSawCoordinator = true
        const answered = answerCoordinatorAttach(receiver)
        if (Either.isLeft(answered)) finish(answered.left.reason)
      }
    })
    server.on("message", (context: EventContext) => {
      const delivery = context.delivery
      if (delivery === undefined || context.receiver === undefined) return
      if (isCoordinatorLink(context.receiver)) {
        delivery.update(true, declared(txnId))
        return
      }
      received.push({ body: rawPayloadOf(context.message), state: delivery.remote_state })
      delivery.update(true, deliveryState(accepted))
      if (received.length === 2) verifyBytes()
    })

    const verifyBytes = () => {
      const parsed = parseFrames(Buffer.concat(pair.written))
      if (Either.isLeft(parsed)) return finish(`the client's bytes do not parse: ${parsed.left.reason}`)
      const transfers = parsed.right.frames.filter((f) => performativeCode(f) === Performative.transfer)
      const transactional = transfers.find((f) => bytesEqual(f.payload, transactionalBody))
      const plain = transfers.find((f) => bytesEqual(f.payload, plainBody))
      if (transactional === undefined || plain === undefined) {
        return finish("the transfer frames rhea wrote were not found in its output")
      }
      const problem = checkTransferState(transactional, txnId) ?? checkNoState(plain)
      if (problem !== undefined) return finish(problem)
      // The server's view: rhea's own reader and the codec agree with the bytes.
      const [first, second] = received
      const seen = decodeTransferState(first.state)
      if (Either.isLeft(seen) || Option.isNone(seen.right) || !bytesEqual(seen.right.value.txnId, txnId)) {
        return finish("a rhea server does not see the transactional-state of the transfer it received")
      }
      const none = decodeTransferState(second.state)
      if (Either.isLeft(none) || Option.isSome(none.right)) {
        return finish("a rhea server sees a transaction on a plain transfer")
      }
      if (Option.isNone(first.body) || !bytesEqual(first.body.value, transactionalBody)) {
        return finish("rawPayloadOf does not give the payload of a received message")
      }
      finish()
    }

    client.on("connection_open", (context: EventContext) => {
      const session = context.connection.create_session()
      session.begin()
      const coordinator = hooks.attachCoordinator(session)
      if (Either.isLeft(coordinator)) return finish(coordinator.left.reason)
      coordinator.right.once("sendable", () => {
        coordinator.right.send(Buffer.from([0x00, 0x53, 0x77, 0x00, 0x53, 0x31, 0x45]), undefined, 0)
      })
      let declaredSeen = false
      coordinator.right.once(TransactionEvents.declared, (ctx: EventContext) => {
        declaredSeen = true
        const declared = decodeDeclared(ctx.delivery?.remote_state)
        if (Either.isLeft(declared) || !bytesEqual(declared.right.txnId, txnId)) {
          return finish("the client cannot read the declared outcome of a declare")
        }
        const attachProblem = checkCoordinatorAttach(pair.written)
        if (attachProblem !== undefined) return finish(attachProblem)
        if (!serverSawCoordinator) return finish("a rhea server does not recognise a coordinator attach")
        const sender = session.attach_sender({ target: { address: "self-check" } })
        sender.once("sendable", () => {
          const sent = hooks.sendTransactional(sender, transactionalBody, txnId)
          if (Either.isLeft(sent)) return finish(sent.left.reason)
          sender.send(plainBody, undefined, 0)
        })
      })
      // rhea raises the outcome's event before "settled"; a settled declare without a declared
      // event means the answer never reached the client as one.
      coordinator.right.once("settled", () => {
        if (declaredSeen) return
        finish(
          checkCoordinatorAttach(pair.written) ??
            (serverSawCoordinator
              ? "rhea raised no declared event for the coordinator's declared outcome"
              : "a rhea server does not recognise a coordinator attach")
        )
      })
    })

    server.create_connection({ id: "self-check-server" } as never).accept(pair.server as never)
    const clientConnection: Connection = client.connect({
      id: "self-check-client",
      host: "self-check",
      port: 0,
      reconnect: false,
      connection_details: () => ({
        host: "self-check",
        port: 0,
        connect: (_port: number, _host: string, _options: unknown, callback: () => void) => {
          process.nextTick(callback)
          return pair.client
        }
      })
    } as never)
    return Effect.sync(() => {
      if (!done) {
        done = true
        clientConnection.close()
        pair.client.destroy()
        pair.server.destroy()
      }
    })
  })

const checkTransferState = (frame: AmqpFrame, txnId: Uint8Array): string | undefined => {
  const state = performativeField(frame, TRANSFER_STATE_FIELD)
  if (state === undefined) {
    return "rhea wrote a transfer for a transactional send without the transactional-state: " +
      "the hook no longer reaches rhea's transfer frames"
  }
  const decoded = decodeDeliveryStateValue(state)
  if (
    Either.isLeft(decoded) || decoded.right._tag !== "TransactionalState" || !bytesEqual(decoded.right.txnId, txnId)
  ) {
    return "rhea wrote a transfer whose state is not transactional-state with the transaction's id"
  }
  return undefined
}

const checkNoState = (frame: AmqpFrame): string | undefined =>
  performativeField(frame, TRANSFER_STATE_FIELD) === undefined
    ? undefined
    : "rhea wrote a state on a plain (non-transactional) transfer"

const checkCoordinatorAttach = (written: ReadonlyArray<Buffer>): string | undefined => {
  const parsed = parseFrames(Buffer.concat(written))
  if (Either.isLeft(parsed)) return `the client's bytes do not parse: ${parsed.left.reason}`
  const attach = parsed.right.frames.find((f) =>
    performativeCode(f) === Performative.attach && performativeField(f, 6) !== undefined &&
    Either.isRight(decodeCoordinator(performativeField(f, 6)))
  )
  return attach === undefined ? "rhea did not write the coordinator target on the coordinator link's attach" : undefined
}

/**
 * The start-up self-check: fails with {@link TransactionSupportError} unless, with the rhea that
 * is installed, every piece of the transaction extension works end to end (see the file
 * header). Installs the decoding patches first. Run it once before any transactional work.
 */
export const verifyTransactionSupport = (
  options: { readonly timeout?: Duration.DurationInput; readonly hooks?: SelfCheckHooks } = {}
): Effect.Effect<void, TransactionSupportError> =>
  Effect.suspend(() => {
    const installed = installTransactionSupport()
    if (Either.isLeft(installed)) return Effect.fail(installed.left)
    return runSelfCheck(options.hooks ?? defaultHooks).pipe(
      Effect.timeoutFail({
        duration: options.timeout ?? Duration.seconds(10),
        onTimeout: () =>
          new TransactionSupportError({ reason: "the self-check did not complete: rhea never delivered its frames" })
      })
    )
  })

// The parts of rhea's server-side objects the emulator touches, typed narrowly, and the one
// place where it reaches under rhea's public surface.
//
// rhea has no transactions and hides what a server needs for them, so each session that a
// client begins gets three small hooks (installed by `hookSession`, on that session object only):
// - attach: a coordinator target (descriptor 0x30) is remembered before rhea's terminus parser
//   discards it, so the emulator can echo it;
// - transfer: the `state` field of an incoming transfer (transactional-state, 0x34) is kept, and
//   every incoming message is handed over as raw bytes instead of rhea's decoded object;
// - disposition: dispositions for messages the emulator sent are handled by the emulator, since
//   rhea drops the transactional states it does not recognise.
import type { EventEmitter } from "node:events"
import type { Server as NetServer, Socket } from "node:net"
import rhea from "rhea"
import { splitMergedDispositions } from "../../internal/amqp/transactionalTransfer.js"
import type { AmqpValue } from "./codec.js"
import { decodeValue } from "./codec.js"

/** A rhea typed value (opaque to the emulator except for encoding). */
export interface Typed {
  readonly type?: unknown
  readonly value: unknown
  readonly descriptor?: { readonly value: unknown } | undefined
}

export interface Terminus {
  readonly address?: string | null | undefined
  readonly filter?: Record<string, unknown> | null | undefined
}

export interface AttachFrame {
  readonly name: string
  readonly role: boolean
  readonly snd_settle_mode?: number
  readonly rcv_settle_mode?: number
  readonly source?: Terminus | null
  readonly target?: Terminus | null
  readonly properties?: Record<string, unknown> | null
}

export interface LocalAttach {
  source: unknown
  target: unknown
  snd_settle_mode: number
  rcv_settle_mode: number
  max_message_size: number
  properties: unknown
}

export interface Delivery {
  readonly id: number
  readonly tag: Buffer
  readonly format: number
  settled: boolean
  remote_settled: boolean
  readonly link: Link
  update(settled: boolean, state?: unknown): void
}

export interface Link {
  readonly name: string
  readonly session: Session
  readonly connection: Connection
  readonly local: { attach: LocalAttach; handle: number }
  readonly remote: { attach?: AttachFrame }
  credit: number
  delivery_count: number
  _draining?: boolean
  is_sender(): boolean
  is_receiver(): boolean
  is_open(): boolean
  is_closed(): boolean
  set_source(fields: { address?: string | null; filter?: unknown }): void
  set_target(fields: { address?: string | null }): void
  close(error?: { condition: string; description: string }): void
  send(data: Buffer, tag: Buffer | undefined, format: number): Delivery
  set_drained(drained: boolean): void
}

export interface FrameOf<P> {
  readonly channel: number
  readonly performative: P
  readonly payload?: Buffer
}

export interface TransferPerformative {
  readonly handle: number
  readonly delivery_id?: number
  message_format?: number
  readonly more?: boolean
  readonly value: Array<unknown>
}

export interface DispositionPerformative {
  readonly role: boolean
  readonly first: number
  readonly last?: number
  readonly settled?: boolean
  readonly value: Array<unknown>
}

export interface AttachPerformative {
  readonly name: string
  readonly role: boolean
  target: unknown
}

export interface Session {
  readonly connection: Connection
  readonly outgoing: {
    readonly deliveries: { by_id(id: number): Delivery | undefined }
    available(): number
  }
  readonly remote: { readonly handles: Record<number, Link | undefined> }
  on_attach(frame: FrameOf<AttachPerformative>): void
  on_transfer(frame: FrameOf<TransferPerformative>): void
  on_disposition(frame: FrameOf<DispositionPerformative>): void
  close(error?: { condition: string; description: string }): void
}

export interface SaslMechanism {
  readonly username?: string
  readonly outcome?: boolean
  readonly callback?: unknown
}

export interface Connection {
  readonly socket?: Socket
  readonly sasl_transport?: {
    readonly mechanism?: SaslMechanism
    readonly selected?: { readonly mechanism?: SaslMechanism }
  }
  readonly options: { readonly id?: string }
  close(error?: { condition: string; description: string }): void
  is_open(): boolean
  is_closed(): boolean
  _register(): void
}

/** The event context rhea passes to handlers. */
export interface Context {
  readonly connection: Connection
  readonly session?: Session
  readonly sender?: Link
  readonly receiver?: Link
  readonly delivery?: Delivery
  readonly message?: unknown
  readonly format?: number
  readonly error?: unknown
}

/** A message format value the emulator substitutes for 0 so that rhea hands over raw bytes. */
export const RAW_FORMAT_0 = 0xfffffffe

/** Callbacks a hooked session reports to. */
export interface SessionHooks {
  /** A coordinator target was attached under this link name; rhea will see a plain target. */
  readonly onCoordinatorAttach: (session: Session, linkName: string, target: Typed) => void
  /** A transfer carried a delivery state (first frame of the delivery). */
  readonly onTransferState: (link: Link, deliveryId: number, state: AmqpValue) => void
  /** The client settled or changed the state of a delivery the emulator sent. */
  readonly onOutgoingDisposition: (
    session: Session,
    delivery: Delivery,
    settled: boolean,
    state: AmqpValue | undefined
  ) => void
}

const types = (rhea as unknown as {
  readonly types: {
    readonly Writer: new() => { write(value: unknown): void; toBuffer(): Buffer }
    readonly wrap_ulong: (n: number) => Typed
    readonly wrap_list: (items: ReadonlyArray<unknown>) => Typed
    readonly wrap_string: (s: string) => Typed
    readonly wrap_symbol: (s: string) => Typed
    readonly wrap_binary: (b: Buffer) => Typed
    readonly wrap_boolean: (b: boolean) => Typed
    readonly wrap_map: (m: Record<string, unknown>, keyWrapper?: (k: string) => Typed) => Typed
    readonly described: (descriptor: Typed, value: Typed) => Typed
  }
}).types

/** Decodes a rhea typed value through its own encoding, so the emulator reads one value model. */
export const fromTyped = (value: unknown): AmqpValue | undefined => {
  if (value === undefined || value === null) return undefined
  const writer = new types.Writer()
  writer.write(value)
  return decodeValue(writer.toBuffer(), 0)[0]
}

const describedList = (code: number, items: ReadonlyArray<unknown>): Typed =>
  types.described(types.wrap_ulong(code), types.wrap_list(items))

/** Delivery states the emulator writes, as rhea typed values. */
export const states = {
  accepted: (): Typed => describedList(0x24, []),
  rejected: (condition: string, description: string): Typed =>
    describedList(0x25, [describedList(0x1d, [types.wrap_symbol(condition), types.wrap_string(description)])]),
  declared: (txnId: Buffer): Typed => describedList(0x33, [types.wrap_binary(txnId)]),
  transactional: (txnId: Buffer, outcome: Typed): Typed => describedList(0x34, [types.wrap_binary(txnId), outcome]),
  /** A target terminus with just an address. */
  target: (address: string): Typed => describedList(0x29, [types.wrap_string(address)])
}

const isDescribedAs = (value: unknown, code: number, symbol: string): boolean => {
  if (typeof value !== "object" || value === null) return false
  const descriptor = (value as Typed).descriptor
  if (descriptor === undefined) return false
  return descriptor.value === code || descriptor.value === symbol
}

/** Installs the emulator's hooks on one session (see the file comment). */
export const hookSession = (session: Session, hooks: SessionHooks): void => {
  // Answers written in one tick (two declares, two transactional sends) must not be merged into
  // one disposition carrying the first answer's state.
  const split = splitMergedDispositions(session)
  if (split._tag === "Left") throw split.left
  const onAttach = session.on_attach.bind(session)
  session.on_attach = (frame) => {
    const target = frame.performative.target
    if (!frame.performative.role && isDescribedAs(target, 0x30, "amqp:coordinator:list")) {
      hooks.onCoordinatorAttach(session, frame.performative.name, target as Typed)
      frame.performative.target = states.target("$coordinator")
    }
    onAttach(frame)
  }

  const onTransfer = session.on_transfer.bind(session)
  session.on_transfer = (frame) => {
    const p = frame.performative
    if (p.delivery_id !== undefined && p.delivery_id !== null) {
      if (p.message_format === 0 || p.message_format === undefined || p.message_format === null) {
        p.message_format = RAW_FORMAT_0
      }
      const state = p.value[7]
      if (state !== undefined && state !== null) {
        const link = session.remote.handles[p.handle]
        const decoded = fromTyped(state)
        if (link !== undefined && decoded !== undefined) hooks.onTransferState(link, p.delivery_id, decoded)
      }
    }
    onTransfer(frame)
  }

  const onDisposition = session.on_disposition.bind(session)
  session.on_disposition = (frame) => {
    const p = frame.performative
    if (!p.role) {
      onDisposition(frame)
      return
    }
    const last = p.last ?? p.first
    const state = fromTyped(p.value[4])
    for (let id = p.first; id <= last; id++) {
      const delivery = session.outgoing.deliveries.by_id(id)
      if (delivery === undefined || delivery.remote_settled) continue
      if (p.settled === true) delivery.remote_settled = true
      hooks.onOutgoingDisposition(session, delivery, p.settled === true, state)
    }
    session.connection._register()
  }
}

/**
 * Settles a delivery the emulator sent, telling the client the outcome. The client has already
 * settled on its side in spirit (it waits for this), so the delivery is also marked remotely
 * settled: otherwise rhea would keep it in the session's bounded buffer forever.
 */
export const settleOutgoing = (delivery: Delivery, state: Typed): void => {
  delivery.update(true, state)
  delivery.remote_settled = true
}

/** Creates the rhea container the server listens with. */
export const createContainer = (): {
  readonly container: EventEmitter & {
    listen(options: Record<string, unknown>): NetServer
    readonly sasl_server_mechanisms: {
      enable_anonymous(): void
      enable_plain(callback: (username: string, password: string) => boolean): void
    }
  }
} => ({
  container: (rhea as unknown as { create_container(options: Record<string, unknown>): never }).create_container({
    id: "servicebus-emulator"
  })
})

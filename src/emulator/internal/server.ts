// The AMQP side of the emulator: rhea connections, links and frames, mapped onto the broker.
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto"
import type { EventEmitter } from "node:events"
import type { Server as NetServer, Socket } from "node:net"
import { coalesceWrites } from "../../internal/amqp/coalesceWrites.js"
import type { Consumer, Lock, Outcome, Store, Target } from "./broker.js"
import {
  Broker,
  brokerAnnotations,
  BrokerError,
  Conditions,
  deliveryTagOf,
  normalizePath,
  tokenFromString
} from "./broker.js"
import type { BrokerLimits } from "./broker.js"
import type { AmqpValue } from "./codec.js"
import {
  AmqpDescribed,
  AmqpUuid,
  asNumber,
  asRecord,
  asString,
  decodeValue,
  encodeAny,
  encodeArray,
  encodeBinary,
  encodeDescribed,
  encodeInt,
  encodeList,
  encodeMap,
  encodeNull,
  encodeString,
  encodeSymbol,
  encodeUuid
} from "./codec.js"
import type { Envelope, MapEntry } from "./message.js"
import { encodeForDelivery, entry, parseMessage, parseTransfer, sections } from "./message.js"
import type { Connection, Context, Delivery, Link, Session, Typed } from "./rhea.js"
import { createContainer, hookSession, RAW_FORMAT_0, settleOutgoing, states } from "./rhea.js"

/** How the server authenticates clients. */
export interface AuthOptions {
  /** Shared access keys by name; when empty, any SAS token and any PLAIN password is accepted. */
  readonly keys: ReadonlyMap<string, string>
  readonly acceptJwt: boolean
}

/** Fault injection state, shared with the public API. */
export class Faults {
  refuseRemaining = 0
  refuseCondition: string = Conditions.serverBusy
  delayMs = 0
  delayRemaining = Number.POSITIVE_INFINITY

  /** True when the next operation must be refused. */
  takeRefusal(): boolean {
    if (this.refuseRemaining <= 0) return false
    this.refuseRemaining--
    return true
  }

  /** Runs an operation now, or after the injected delay. */
  run(f: () => void): void {
    if (this.delayMs > 0 && this.delayRemaining > 0) {
      this.delayRemaining--
      setTimeout(f, this.delayMs)
    } else {
      f()
    }
  }
}

interface SessionState {
  via: string | undefined
  readonly coordinatorTargets: Map<string, Typed>
}

type LinkRole =
  | { readonly kind: "cbs" }
  | { readonly kind: "management"; readonly entityPath: string }
  | { readonly kind: "reply" }
  | { readonly kind: "coordinator" }
  | { readonly kind: "send"; readonly target: Target; readonly via: string }
  | { readonly kind: "receive"; readonly store: Store; readonly consumer: Consumer }

interface LinkState {
  readonly link: Link
  readonly conn: ConnState
  readonly session: SessionState
  readonly role: LinkRole
  /** Delivery states read from incoming transfers, by delivery id. */
  readonly transferStates: Map<number, AmqpValue>
  sent: number
}

interface ConnState {
  readonly connection: Connection
  readonly authorizedAll: boolean
  readonly tokens: Array<{ readonly audience: string; readonly expiresAt: number }>
  readonly replyLinks: Map<string, Link>
  readonly links: Set<LinkState>
  readonly sessions: WeakMap<Session, SessionState>
  closed: boolean
}

const UNAUTHORIZED = 401

/** A running emulator: the listening socket plus the broker behind it. */
export class EmulatorServer {
  readonly broker: Broker
  readonly faults = new Faults()
  private readonly connections = new Map<Connection, ConnState>()
  private readonly linkStates = new WeakMap<Link, LinkState>()
  private readonly outgoing = new WeakMap<Delivery, Lock>()
  private readonly sockets = new Set<Socket>()
  private net: NetServer | undefined
  private tagCounter = 0

  constructor(
    private readonly auth: AuthOptions,
    limits: BrokerLimits
  ) {
    this.broker = new Broker(limits)
  }

  // -------------------------------------------------------------------------------------------
  // Lifecycle

  listen(host: string, port: number): Promise<number> {
    const { container } = createContainer()
    const mechanisms = container.sasl_server_mechanisms
    mechanisms.enable_anonymous()
    mechanisms.enable_plain((username, password) => this.checkPlain(username, password))
    this.wire(container)
    const server = container.listen({
      host,
      port,
      receiver_options: { autoaccept: false, credit_window: 500 },
      sender_options: { autosettle: true },
      // Large enough that a 256 KB message plus framing never needs more than a few frames.
      max_frame_size: 65536,
      // Request/response round trips (settlements, management) would otherwise wait on Nagle.
      tcp_no_delay: true,
      container_id: "servicebus-emulator"
    })
    this.net = server
    server.on("connection", (socket: Socket) => {
      this.sockets.add(socket)
      socket.on("close", () => {
        this.sockets.delete(socket)
        for (const conn of this.connections.values()) {
          if (conn.connection.socket === socket) this.dropConnection(conn)
        }
      })
      // A client that vanishes must not take the server with it.
      socket.on("error", () => undefined)
    })
    return new Promise((resolve, reject) => {
      server.once("error", reject)
      server.once("listening", () => {
        server.off("error", reject)
        const address = server.address()
        resolve(typeof address === "object" && address !== null ? address.port : port)
      })
    })
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy()
    this.sockets.clear()
    for (const conn of [...this.connections.values()]) this.dropConnection(conn)
    this.broker.close()
    const server = this.net
    this.net = undefined
    if (server !== undefined) {
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }

  /** Closes every client connection, with an error the SDK treats as transient. */
  /** Detaches every message link (senders and receivers), keeping the connections. */
  detachLinks(): number {
    let detached = 0
    for (const conn of this.connections.values()) {
      for (const state of [...conn.links]) {
        if (state.role.kind !== "send" && state.role.kind !== "receive") continue
        this.releaseLink(state)
        state.link.close({ condition: "amqp:link:detach-forced", description: "The emulator detached the link." })
        detached++
      }
    }
    return detached
  }

  closeConnections(abrupt: boolean): number {
    const all = [...this.connections.values()]
    for (const conn of all) {
      if (abrupt) {
        // The connection is gone at once, as when a broker node fails: its links are released now,
        // not when the socket's close event comes, so that nothing more is delivered on them and a
        // graceful close right after does not write to a dead connection.
        conn.connection.socket?.destroy()
        this.dropConnection(conn)
      } else {
        conn.connection.close({
          condition: "amqp:connection:forced",
          description: "The emulator closed the connection."
        })
      }
    }
    return all.length
  }

  get connectionCount(): number {
    return this.connections.size
  }

  private checkPlain(username: string, password: string): boolean {
    if (this.auth.keys.size === 0) return true
    const key = this.auth.keys.get(username)
    return key !== undefined && safeEqual(key, password)
  }

  // -------------------------------------------------------------------------------------------
  // rhea events

  private wire(container: EventEmitter): void {
    const guard = <A extends Array<unknown>>(f: (...args: A) => void) => (...args: A) => {
      try {
        f(...args)
      } catch (error) {
        this.onHandlerFailure(args[0] as Context, error)
      }
    }
    container.on("connection_open", guard((ctx: Context) => this.onConnectionOpen(ctx)))
    container.on("session_open", guard((ctx: Context) => this.onSessionOpen(ctx)))
    container.on("receiver_open", guard((ctx: Context) => this.onReceiverOpen(ctx)))
    container.on("sender_open", guard((ctx: Context) => this.onSenderOpen(ctx)))
    container.on("message", guard((ctx: Context) => this.onMessage(ctx)))
    container.on("sender_flow", guard((ctx: Context) => this.onSenderFlow(ctx)))
    for (const event of ["sender_close", "receiver_close"]) {
      container.on(event, guard((ctx: Context) => this.onLinkClose(ctx.sender ?? ctx.receiver)))
    }
    container.on(
      "session_close",
      guard((ctx: Context) => {
        if (ctx.session !== undefined) this.onSessionClose(ctx.session)
      })
    )
    container.on(
      "connection_close",
      guard((ctx: Context) => {
        const conn = this.connections.get(ctx.connection)
        if (conn !== undefined) this.dropConnection(conn)
      })
    )
    container.on(
      "disconnected",
      guard((ctx: Context) => {
        const conn = this.connections.get(ctx.connection)
        if (conn !== undefined) this.dropConnection(conn)
      })
    )
    // Errors that rhea raises for a peer (bad frames, links closed with errors) only concern
    // that peer: rhea ends its socket, and the server goes on serving the others.
    for (
      const event of ["error", "protocol_error", "connection_error", "session_error", "sender_error", "receiver_error"]
    ) {
      container.on(event, () => undefined)
    }
  }

  private onHandlerFailure(ctx: Context | undefined, error: unknown): void {
    const description = error instanceof Error ? error.message : String(error)
    const link = ctx?.receiver ?? ctx?.sender
    try {
      if (link !== undefined && !link.is_closed()) link.close({ condition: Conditions.internal, description })
      else ctx?.connection?.close({ condition: Conditions.internal, description })
    } catch {
      ctx?.connection?.socket?.destroy()
    }
  }

  private onConnectionOpen(ctx: Context): void {
    // The answers written in one tick go out together (rhea writes each frame on its own).
    coalesceWrites(ctx.connection)
    const sasl = ctx.connection.sasl_transport
    const mechanism = sasl?.mechanism ?? sasl?.selected?.mechanism
    // Only PLAIN has a callback; it succeeded, or the connection would not be open.
    const plain = mechanism !== undefined && typeof mechanism.callback === "function" && mechanism.outcome === true
    this.connections.set(ctx.connection, {
      connection: ctx.connection,
      authorizedAll: plain || this.auth.keys.size === 0,
      tokens: [],
      replyLinks: new Map(),
      links: new Set(),
      sessions: new WeakMap(),
      closed: false
    })
  }

  private conn(connection: Connection): ConnState {
    const conn = this.connections.get(connection)
    if (conn === undefined) throw new Error("connection is not open")
    return conn
  }

  private sessionState(conn: ConnState, session: Session): SessionState {
    let state = conn.sessions.get(session)
    if (state === undefined) {
      state = { via: undefined, coordinatorTargets: new Map() }
      conn.sessions.set(session, state)
    }
    return state
  }

  private onSessionOpen(ctx: Context): void {
    const session = ctx.session!
    const conn = this.conn(ctx.connection)
    const state = this.sessionState(conn, session)
    hookSession(session, {
      onCoordinatorAttach: (_session, name, target) => {
        state.coordinatorTargets.set(name, target)
      },
      onTransferState: (link, deliveryId, value) => {
        this.linkStates.get(link)?.transferStates.set(deliveryId, value)
      },
      onOutgoingDisposition: (_session, delivery, settled, value) => {
        try {
          this.onDisposition(delivery, settled, value)
        } catch (error) {
          settleOutgoing(delivery, states.rejected(Conditions.internal, String(error)))
        }
      }
    })
  }

  private register(link: Link, conn: ConnState, session: SessionState, role: LinkRole): LinkState {
    const state: LinkState = { link, conn, session, role, transferStates: new Map(), sent: 0 }
    this.linkStates.set(link, state)
    conn.links.add(state)
    return state
  }

  private refuseLink(link: Link, condition: string, description: string): void {
    // An attach answered without the client's terminus tells it the link is refused; the
    // detach that follows carries the reason.
    if (link.is_sender()) link.local.attach.source = null
    else link.local.attach.target = null
    link.close({ condition, description })
  }

  private isAuthorized(conn: ConnState, path: string): boolean {
    if (conn.authorizedAll) return true
    const now = Date.now()
    const key = normalizePath(path).toLowerCase()
    return conn.tokens.some((t) =>
      t.expiresAt > now && (t.audience === "" || key === t.audience || key.startsWith(`${t.audience}/`))
    )
  }

  /** A client sender attached: the emulator receives on it. */
  private onReceiverOpen(ctx: Context): void {
    const link = ctx.receiver!
    const conn = this.conn(ctx.connection)
    const session = this.sessionState(conn, link.session)
    const remote = link.remote.attach
    const coordinatorTarget = session.coordinatorTargets.get(link.name)
    if (coordinatorTarget !== undefined) {
      session.coordinatorTargets.delete(link.name)
      link.local.attach.target = coordinatorTarget
      link.set_source({ address: remote?.source?.address ?? null })
      this.register(link, conn, session, { kind: "coordinator" })
      return
    }
    const address = remote?.target?.address ?? ""
    link.set_target({ address })
    link.set_source({ address: remote?.source?.address ?? null })
    if (address === "$cbs") {
      this.register(link, conn, session, { kind: "cbs" })
      return
    }
    const path = normalizePath(address)
    if (path === "$management" || path.toLowerCase().endsWith("/$management")) {
      const entityPath = path.slice(0, Math.max(0, path.length - "/$management".length))
      if (!this.isAuthorized(conn, path)) {
        return this.refuseLink(link, Conditions.unauthorized, `Unauthorized access to "${path}": put a token first.`)
      }
      this.register(link, conn, session, { kind: "management", entityPath })
      return
    }
    const destination = remote?.properties?.["com.microsoft:transfer-destination-address"]
    const destinationPath = typeof destination === "string" ? normalizePath(destination) : undefined
    const target = this.broker.findTarget(destinationPath ?? path)
    if (target === undefined) {
      return this.refuseLink(
        link,
        Conditions.notFound,
        `The messaging entity "${destinationPath ?? path}" could not be found. Configure it in the emulator's entities.`
      )
    }
    if (
      !this.isAuthorized(conn, path) || (destinationPath !== undefined && !this.isAuthorized(conn, destinationPath))
    ) {
      return this.refuseLink(link, Conditions.unauthorized, `Unauthorized access to "${path}": put a token first.`)
    }
    const linkVia = destinationPath !== undefined ? (this.broker.findTarget(path) ?? target) : target
    const via = this.broker.viaOf(linkVia)
    if (session.via === undefined) session.via = via
    link.local.attach.max_message_size = this.broker.settingsOf(target).maxMessageSizeBytes
    this.register(link, conn, session, { kind: "send", target, via })
  }

  /** A client receiver attached: the emulator sends on it. */
  private onSenderOpen(ctx: Context): void {
    const link = ctx.sender!
    const conn = this.conn(ctx.connection)
    const session = this.sessionState(conn, link.session)
    const remote = link.remote.attach
    const address = remote?.source?.address ?? ""
    const replyTo = remote?.target?.address ?? undefined
    link.set_source({ address })
    link.set_target({ address: replyTo ?? null })
    link.local.attach.snd_settle_mode = remote?.snd_settle_mode ?? 0
    link.local.attach.rcv_settle_mode = remote?.rcv_settle_mode ?? 0
    const path = normalizePath(address)
    if (address === "$cbs" || path === "$management" || path.toLowerCase().endsWith("/$management")) {
      conn.replyLinks.set(link.name, link)
      if (replyTo !== undefined && replyTo !== null) conn.replyLinks.set(replyTo, link)
      this.register(link, conn, session, { kind: "reply" })
      return
    }
    const filter = remote?.source?.filter
    if (filter !== undefined && filter !== null && "com.microsoft:session-filter" in filter) {
      return this.refuseLink(
        link,
        "amqp:not-implemented",
        "Message sessions are not emulated: use an entity without requiresSession."
      )
    }
    const store = this.broker.findStore(path)
    if (store === undefined) {
      return this.refuseLink(
        link,
        Conditions.notFound,
        `The messaging entity "${path}" could not be found. Configure it in the emulator's entities.`
      )
    }
    if (!this.isAuthorized(conn, path)) {
      return this.refuseLink(link, Conditions.unauthorized, `Unauthorized access to "${path}": put a token first.`)
    }
    if (session.via === undefined) session.via = store.viaEntity
    const peekLock = remote?.snd_settle_mode !== 1
    const holder: { state?: LinkState } = {}
    const consumer: Consumer = {
      peekLock,
      available: () => {
        const state = holder.state
        if (state === undefined || !link.is_open()) return 0
        const limit = link.credit + link.delivery_count - state.sent
        return Math.min(limit, link.session.outgoing.available())
      },
      deliver: (message, lock) => {
        const payload = encodeForDelivery(message.env, {
          deliveryCount: message.deliveryCount,
          annotations: brokerAnnotations(message, lock)
        })
        const tag = lock !== undefined ? deliveryTagOf(lock.token) : this.nextTag()
        const delivery = link.send(payload, tag, 0)
        holder.state!.sent++
        if (lock !== undefined) this.outgoing.set(delivery, lock)
      }
    }
    holder.state = this.register(link, conn, session, { kind: "receive", store, consumer })
    store.addConsumer(consumer)
  }

  private nextTag(): Buffer {
    const tag = Buffer.allocUnsafe(8)
    tag.writeDoubleBE(++this.tagCounter)
    return tag
  }

  private onSenderFlow(ctx: Context): void {
    const link = ctx.sender!
    const state = this.linkStates.get(link)
    if (state === undefined || state.role.kind !== "receive") return
    state.role.store.pump()
    if (link._draining === true) forceDrainReply(link)
  }

  private onLinkClose(link: Link | undefined): void {
    if (link === undefined) return
    const state = this.linkStates.get(link)
    if (state === undefined) return
    this.releaseLink(state)
  }

  private releaseLink(state: LinkState): void {
    state.conn.links.delete(state)
    this.linkStates.delete(state.link)
    switch (state.role.kind) {
      case "receive":
        state.role.store.removeConsumer(state.role.consumer)
        break
      case "coordinator":
        this.broker.rollbackOwnedBy(state)
        break
      case "reply":
        for (const [key, link] of state.conn.replyLinks) if (link === state.link) state.conn.replyLinks.delete(key)
        break
    }
  }

  private onSessionClose(session: Session): void {
    const conn = this.connections.get(session.connection)
    if (conn === undefined) return
    for (const state of [...conn.links]) if (state.link.session === session) this.releaseLink(state)
  }

  private dropConnection(conn: ConnState): void {
    if (conn.closed) return
    conn.closed = true
    this.connections.delete(conn.connection)
    for (const state of [...conn.links]) this.releaseLink(state)
  }

  // -------------------------------------------------------------------------------------------
  // Incoming transfers

  private onMessage(ctx: Context): void {
    const link = ctx.receiver!
    const delivery = ctx.delivery!
    const state = this.linkStates.get(link)
    const payload = ctx.message
    if (state === undefined || !Buffer.isBuffer(payload)) {
      delivery.update(true, states.rejected(Conditions.notAllowed, "This link does not accept messages."))
      return
    }
    // Arrived after this side closed the connection: the client never hears of an outcome, so
    // the message is not taken (it is sent again on the next connection).
    if (!ctx.connection.is_open()) return
    const format = ctx.format === undefined || ctx.format === RAW_FORMAT_0 ? 0 : ctx.format
    const transferState = state.transferStates.get(delivery.id)
    state.transferStates.delete(delivery.id)
    switch (state.role.kind) {
      case "send":
        return this.onSend(state, state.role.target, state.role.via, delivery, payload, format, transferState)
      case "coordinator":
        return this.onControl(state, delivery, payload)
      case "cbs":
        return this.onCbs(state, delivery, payload)
      case "management":
        return this.onManagement(state, state.role.entityPath, delivery, payload, transferState)
      default:
        delivery.update(true, states.rejected(Conditions.notAllowed, "This link does not accept messages."))
    }
  }

  private onSend(
    state: LinkState,
    target: Target,
    linkVia: string,
    delivery: Delivery,
    payload: Buffer,
    format: number,
    transferState: AmqpValue | undefined
  ): void {
    const txnId = transactionIdOf(transferState)
    this.faults.run(() => {
      if (this.faults.takeRefusal()) {
        delivery.update(
          true,
          states.rejected(this.faults.refuseCondition, "The server is busy. Please retry the operation.")
        )
        return
      }
      try {
        let envs: Array<Envelope>
        try {
          envs = parseTransfer(payload, format)
        } catch (error) {
          throw new BrokerError(Conditions.decodeError, `The message could not be decoded: ${String(error)}`)
        }
        this.broker.checkSize(target, envs, payload.length)
        if (txnId !== undefined) {
          const txn = this.broker.findTransaction(txnId)
          this.broker.enlistSend(txn, state.session.via ?? linkVia, target, envs)
          delivery.update(true, states.transactional(txnId, states.accepted()))
        } else {
          this.broker.send(target, envs)
          delivery.update(true, states.accepted())
        }
      } catch (error) {
        delivery.update(true, rejection(error))
      }
    })
  }

  private onControl(state: LinkState, delivery: Delivery, payload: Buffer): void {
    try {
      const body = amqpValueOf(payload)
      if (!(body instanceof AmqpDescribed)) {
        throw new BrokerError(Conditions.decodeError, "A coordinator message must be a declare or a discharge.")
      }
      const fields = Array.isArray(body.value) ? body.value as ReadonlyArray<AmqpValue> : []
      if (body.descriptor === 0x31 || body.descriptor === "amqp:declare:list") {
        if (this.broker.limits.transactions === false) {
          // What Service Bus answers on a Basic tier namespace.
          throw new BrokerError(
            Conditions.notAllowed,
            "Transaction is unsupported because the namespace is of 'Basic' tier."
          )
        }
        const txn = this.broker.declare(state)
        delivery.update(true, states.declared(txn.id))
        return
      }
      if (body.descriptor === 0x32 || body.descriptor === "amqp:discharge:list") {
        const id = fields[0]
        if (!Buffer.isBuffer(id)) throw new BrokerError(Conditions.decodeError, "A discharge needs a txn-id.")
        const txn = this.broker.findTransaction(id)
        this.broker.discharge(txn, fields[1] === true)
        delivery.update(true, states.accepted())
        return
      }
      throw new BrokerError(Conditions.decodeError, `Unknown coordinator message ${String(body.descriptor)}.`)
    } catch (error) {
      delivery.update(true, rejection(error))
    }
  }

  // -------------------------------------------------------------------------------------------
  // Settlement of delivered messages

  private onDisposition(delivery: Delivery, _settled: boolean, value: AmqpValue | undefined): void {
    const lock = this.outgoing.get(delivery)
    if (lock === undefined || value === undefined) return
    this.outgoing.delete(delivery)
    const state = this.linkStates.get(delivery.link)
    let txnId: Buffer | undefined
    let outcomeValue: AmqpValue | undefined = value
    if (
      value instanceof AmqpDescribed &&
      (value.descriptor === 0x34 || value.descriptor === "amqp:transactional-state:list")
    ) {
      const fields = Array.isArray(value.value) ? value.value as ReadonlyArray<AmqpValue> : []
      txnId = Buffer.isBuffer(fields[0]) ? fields[0] : undefined
      outcomeValue = fields[1] ?? undefined
    }
    const outcome = outcomeOf(outcomeValue)
    if (outcome === undefined) {
      // A state that settles nothing (received, or none): the lock stays until it expires.
      this.outgoing.set(delivery, lock)
      return
    }
    this.faults.run(() => {
      if (this.faults.takeRefusal()) {
        settleOutgoing(
          delivery,
          states.rejected(this.faults.refuseCondition, "The server is busy. Please retry the operation.")
        )
        return
      }
      try {
        if (txnId !== undefined) {
          const txn = this.broker.findTransaction(txnId)
          const via = state?.session.via ?? lock.message.store.viaEntity
          if (lock.message.store.viaEntity !== via) {
            throw new BrokerError(
              Conditions.notAllowed,
              `A transaction on this session works through entity "${via}"; settle messages of "${lock.message.store.path}" on another session.`
            )
          }
          this.broker.enlistSettlement(txn, via, lock, outcome)
          settleOutgoing(delivery, states.transactional(txnId, states.accepted()))
        } else {
          this.broker.settle(lock, outcome)
          settleOutgoing(delivery, states.accepted())
        }
      } catch (error) {
        settleOutgoing(delivery, rejection(error))
      }
    })
  }

  // -------------------------------------------------------------------------------------------
  // Claims-based security

  private onCbs(state: LinkState, delivery: Delivery, payload: Buffer): void {
    delivery.update(true, states.accepted())
    let request: Envelope
    try {
      request = parseMessage(payload)
    } catch {
      return
    }
    const props = appProps(request)
    const token = asString(amqpValueOf(request.body))
    const type = asString(props.get("type")) ?? ""
    const audience = asString(props.get("name")) ?? ""
    let status = 202
    let description = "Accepted"
    const result = token === undefined ? undefined : this.validateToken(type, token, audience)
    if (result === undefined || typeof result === "string") {
      status = UNAUTHORIZED
      description = result ?? "The put-token request has no token."
    } else {
      state.conn.tokens.push({ audience: normalizePath(audience).toLowerCase(), expiresAt: result.expiresAt })
    }
    this.reply(state.conn, request, { "status-code": status, "status-description": description }, encodeNull(), true)
  }

  /** Returns the token's expiry, or why it is refused. */
  private validateToken(type: string, token: string, audience: string): { expiresAt: number } | string {
    if (type === "jwt") {
      if (!this.auth.acceptJwt) return "JWT tokens are not accepted by this emulator (acceptJwt is off)."
      const parts = token.split(".")
      if (parts.length !== 3) return "The JWT is malformed: it must have three parts."
      try {
        const header = JSON.parse(Buffer.from(parts[0], "base64url").toString("utf8")) as unknown
        const payload = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8")) as unknown
        if (typeof header !== "object" || header === null || typeof payload !== "object" || payload === null) {
          return "The JWT is malformed: its header and payload must be JSON objects."
        }
      } catch {
        return "The JWT is malformed: its header and payload must be base64url JSON."
      }
      return { expiresAt: Number.POSITIVE_INFINITY }
    }
    if (type !== "servicebus.windows.net:sastoken") return `Unsupported token type "${type}".`
    const fields = new Map<string, string>()
    const body = token.replace(/^SharedAccessSignature\s+/, "")
    for (const pair of body.split("&")) {
      const i = pair.indexOf("=")
      if (i > 0) fields.set(pair.slice(0, i), pair.slice(i + 1))
    }
    const sr = fields.get("sr")
    const sig = fields.get("sig")
    const se = fields.get("se")
    const skn = fields.get("skn")
    if (sr === undefined || sig === undefined || se === undefined || skn === undefined) {
      return "The SAS token is malformed: it needs sr, sig, se and skn."
    }
    const expiresAt = Number(se) * 1000
    if (!Number.isFinite(expiresAt) || expiresAt <= Date.now()) return "The SAS token has expired."
    if (this.auth.keys.size > 0) {
      const key = this.auth.keys.get(decodeURIComponent(skn))
      if (key === undefined) return `The SAS key name "${decodeURIComponent(skn)}" is not known.`
      const expected = createHmac("sha256", key).update(`${sr}\n${se}`).digest("base64")
      if (!safeEqual(expected, decodeURIComponent(sig))) {
        return "The SAS token's signature does not match: check the SharedAccessKey."
      }
    }
    const resource = normalizePath(decodeURIComponent(sr)).toLowerCase()
    const wanted = normalizePath(audience).toLowerCase()
    if (resource !== "" && wanted !== resource && !wanted.startsWith(`${resource}/`)) {
      return `The SAS token is for "${resource}", not for "${wanted}".`
    }
    return { expiresAt }
  }

  /** Sends a response on the client's reply link. */
  private reply(
    conn: ConnState,
    request: Envelope,
    status: Record<string, number | string>,
    body: Buffer,
    kebab: boolean
  ): void {
    const replyTo = request.properties.replyTo
    const link = replyTo === undefined ? undefined : conn.replyLinks.get(replyTo)
    if (link === undefined || !link.is_open()) return
    const correlation = request.properties.messageId
    const properties = encodeDescribed(
      0x73,
      encodeList([
        encodeNull(),
        encodeNull(),
        encodeNull(),
        encodeNull(),
        encodeNull(),
        correlation === undefined ? encodeNull() : encodeAny(correlation)
      ])
    )
    const pairs: Array<Buffer> = []
    for (const [key, value] of Object.entries(status)) {
      const camel = key.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())
      const name = kebab ? key : camel
      pairs.push(
        encodeString(name),
        typeof value === "number"
          ? encodeInt(value)
          : key === "error-condition"
          ? encodeSymbol(value)
          : encodeString(value)
      )
    }
    const applicationProperties = encodeDescribed(0x74, encodeMap(pairs))
    const delivery = link.send(
      Buffer.concat([properties, applicationProperties, encodeDescribed(0x77, body)]),
      undefined,
      0
    )
    delivery.settled = true
  }

  // -------------------------------------------------------------------------------------------
  // $management

  private onManagement(
    state: LinkState,
    entityPath: string,
    delivery: Delivery,
    payload: Buffer,
    transferState: AmqpValue | undefined
  ): void {
    // Requests inside a transaction are answered with a plain accepted (as Service Bus does).
    delivery.update(true, states.accepted())
    let request: Envelope
    try {
      request = parseMessage(payload)
    } catch {
      return
    }
    const txnId = transactionIdOf(transferState)
    this.faults.run(() => {
      const respond = (status: number, description: string, body: Buffer, condition?: string) =>
        this.reply(
          state.conn,
          request,
          condition === undefined
            ? { "status-code": status, "status-description": description }
            : { "status-code": status, "status-description": description, "error-condition": condition },
          body,
          false
        )
      if (this.faults.takeRefusal()) {
        return respond(
          503,
          "The server is busy. Please retry the operation.",
          encodeNull(),
          this.faults.refuseCondition
        )
      }
      try {
        const operation = asString(appProps(request).get("operation")) ?? ""
        const body = asRecord(amqpValueOf(request.body))
        const result = this.management(state, entityPath, operation, body, txnId)
        respond(result.status, result.status === 204 ? "No Content" : "OK", result.body)
      } catch (error) {
        const e = error instanceof BrokerError ? error : new BrokerError(Conditions.internal, String(error))
        respond(statusOf(e.condition), e.description, encodeNull(), e.condition)
      }
    })
  }

  private management(
    state: LinkState,
    entityPath: string,
    operation: string,
    body: ReadonlyMap<string, AmqpValue>,
    txnId: Buffer | undefined
  ): { status: number; body: Buffer } {
    const store = () => {
      const s = this.broker.findStore(entityPath)
      if (s === undefined) {
        throw new BrokerError(Conditions.notFound, `The messaging entity "${entityPath}" could not be found.`)
      }
      return s
    }
    const target = () => {
      const t = this.broker.findTarget(entityPath)
      if (t === undefined) {
        throw new BrokerError(Conditions.notFound, `The messaging entity "${entityPath}" could not be found.`)
      }
      return t
    }
    const ok = (pairs: Array<Buffer>) => ({ status: 200, body: encodeMap(pairs) })
    // Lock tokens are known only to the entity whose message they lock.
    const lockOf = (token: Buffer) => {
      const lock = this.broker.findLock(token)
      if (lock.message.store !== this.broker.findStore(entityPath)) {
        throw new BrokerError(
          Conditions.lockLost,
          "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue."
        )
      }
      return lock
    }
    switch (operation) {
      case "com.microsoft:renew-lock": {
        const expirations: Array<Buffer> = []
        for (const token of lockTokens(body)) {
          const until = this.broker.renewLock(lockOf(token))
          const b = Buffer.allocUnsafe(8)
          b.writeBigInt64BE(BigInt(until))
          expirations.push(b)
        }
        return ok([encodeString("expirations"), encodeArray(0x83, expirations)])
      }
      case "com.microsoft:peek-message": {
        const from = asNumber(body.get("from-sequence-number")) ?? 1
        const count = asNumber(body.get("message-count")) ?? 1
        const messages = this.broker.peek(store(), from, count)
        if (messages.length === 0) return { status: 204, body: encodeNull() }
        return ok([
          encodeString("messages"),
          encodeList(messages.map((m) =>
            encodeMap([
              encodeString("message"),
              encodeBinary(encodeForDelivery(m.env, {
                deliveryCount: m.deliveryCount,
                annotations: brokerAnnotations(m, undefined)
              }))
            ])
          ))
        ])
      }
      case "com.microsoft:schedule-message": {
        const list = body.get("messages")
        const envs: Array<Envelope> = []
        for (const item of Array.isArray(list) ? list as ReadonlyArray<AmqpValue> : []) {
          const bytes = asRecord(item).get("message")
          if (!Buffer.isBuffer(bytes)) {
            throw new BrokerError(Conditions.argumentError, "A scheduled message has no body.")
          }
          envs.push(parseMessage(bytes))
        }
        const t = target()
        this.broker.checkSize(t, envs, 0)
        const seqs = this.broker.send(t, envs)
        return ok([
          encodeString("sequence-numbers"),
          encodeArray(
            0x81,
            seqs.map((s) => {
              const b = Buffer.allocUnsafe(8)
              b.writeBigInt64BE(BigInt(s))
              return b
            })
          )
        ])
      }
      case "com.microsoft:cancel-scheduled-message": {
        this.broker.cancelScheduled(target(), sequenceNumbers(body))
        return ok([])
      }
      case "com.microsoft:receive-by-sequence-number": {
        const peekLock = asNumber(body.get("receiver-settle-mode")) !== 0
        const received = this.broker.receiveDeferred(store(), sequenceNumbers(body), peekLock)
        return ok([
          encodeString("messages"),
          encodeList(received.map(({ lock, message }) =>
            encodeMap([
              encodeString("message"),
              encodeBinary(encodeForDelivery(message.env, {
                deliveryCount: message.deliveryCount,
                annotations: brokerAnnotations(message, lock)
              })),
              encodeString("lock-token"),
              encodeUuid(lock?.token ?? Buffer.alloc(16))
            ])
          ))
        ])
      }
      case "com.microsoft:update-disposition": {
        const status = asString(body.get("disposition-status"))
        const properties = propertiesToModify(body.get("properties-to-modify"))
        let outcome: Outcome
        switch (status) {
          case "completed":
            outcome = { _tag: "complete" }
            break
          case "abandoned":
            outcome = { _tag: "abandon", properties }
            break
          case "defered":
          case "deferred":
            outcome = { _tag: "defer", properties }
            break
          case "suspended":
            outcome = {
              _tag: "deadLetter",
              reason: asString(body.get("deadletter-reason")),
              description: asString(body.get("deadletter-description")),
              properties
            }
            break
          default:
            throw new BrokerError(Conditions.argumentError, `Unknown disposition status "${String(status)}".`)
        }
        for (const token of lockTokens(body)) {
          const lock = lockOf(token)
          if (txnId !== undefined) {
            const txn = this.broker.findTransaction(txnId)
            this.broker.enlistSettlement(txn, state.session.via ?? lock.message.store.viaEntity, lock, outcome)
          } else {
            this.broker.settle(lock, outcome)
          }
        }
        return ok([])
      }
      default:
        throw new BrokerError("amqp:not-implemented", `The operation "${operation}" is not supported by the emulator.`)
    }
  }

  // -------------------------------------------------------------------------------------------
  // Fault hooks

  /** Expires the lock with this token (as the SDK shows it) now. */
  expireLock(lockToken: string): boolean {
    const token = tokenFromString(lockToken)
    if (token === undefined) return false
    const lock = this.broker.locks.get(token.toString("hex"))
    if (lock === undefined) return false
    this.broker.expireLock(lock)
    return true
  }

  /** Expires every lock, or those of one entity, now. */
  expireLocks(entityPath: string | undefined): number {
    const store = entityPath === undefined ? undefined : this.broker.findStore(entityPath)
    let count = 0
    for (const lock of [...this.broker.locks.values()]) {
      if (store !== undefined && lock.message.store !== store) continue
      if (lock.enlisted !== undefined) continue
      this.broker.expireLock(lock)
      count++
    }
    return count
  }
}

/** Answers a drain request: whatever credit is left is used up, and the client is told. */
const forceDrainReply = (link: Link): void => {
  const l = link as Link & { issue_flow: boolean; _get_drain?: () => boolean }
  l.issue_flow = true
  // rhea writes a drain reply only while credit is left; after the last transfer it would
  // never answer, and the SDK would wait for it until its drain timeout.
  l._get_drain = function(this: Link & { _get_drain?: () => boolean }) {
    delete this._get_drain
    this.delivery_count += this.credit
    this.credit = 0
    return true
  }
  link.connection._register()
}

const safeEqual = (a: string, b: string): boolean => {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}

const rejection = (error: unknown): Typed =>
  error instanceof BrokerError
    ? states.rejected(error.condition, error.description)
    : states.rejected(Conditions.internal, error instanceof Error ? error.message : String(error))

const statusOf = (condition: string): number => {
  switch (condition) {
    case Conditions.notFound:
    case Conditions.messageNotFound:
      return 404
    case Conditions.lockLost:
      return 410
    case Conditions.serverBusy:
      return 503
    case Conditions.unauthorized:
      return 401
    case Conditions.argumentError:
    case Conditions.notAllowed:
    case Conditions.decodeError:
      return 400
    case Conditions.sizeExceeded:
    case Conditions.resourceLimit:
      return 403
    case "amqp:not-implemented":
      return 501
    default:
      return 500
  }
}

const appProps = (env: Envelope): ReadonlyMap<string, AmqpValue> => {
  const out = new Map<string, AmqpValue>()
  for (const e of env.appProperties) out.set(e.key, e.value)
  return out
}

/** The amqp-value body of a message (or of its body bytes). */
const amqpValueOf = (bytes: Buffer): AmqpValue | undefined => {
  for (const section of sections(bytes)) {
    if (section.code === 0x77) return decodeValue(bytes, section.valueStart)[0]
  }
  return undefined
}

const transactionIdOf = (state: AmqpValue | undefined): Buffer | undefined => {
  if (!(state instanceof AmqpDescribed)) return undefined
  if (state.descriptor !== 0x34 && state.descriptor !== "amqp:transactional-state:list") return undefined
  const fields = Array.isArray(state.value) ? state.value as ReadonlyArray<AmqpValue> : []
  return Buffer.isBuffer(fields[0]) ? fields[0] : undefined
}

const propertiesToModify = (value: AmqpValue | undefined): Array<MapEntry> => {
  const out: Array<MapEntry> = []
  if (value instanceof Map) {
    for (const [k, v] of value) {
      const key = asString(k as AmqpValue)
      if (key !== undefined) out.push(entry(key, encodeAny(v), false))
    }
  }
  return out
}

/** Maps a disposition outcome to what Service Bus does with it. */
const outcomeOf = (value: AmqpValue | undefined): Outcome | undefined => {
  if (!(value instanceof AmqpDescribed)) return undefined
  const fields = Array.isArray(value.value) ? value.value as ReadonlyArray<AmqpValue> : []
  switch (value.descriptor) {
    case 0x24:
    case "amqp:accepted:list":
      return { _tag: "complete" }
    case 0x25:
    case "amqp:rejected:list": {
      const error = fields[0]
      const errorFields = error instanceof AmqpDescribed && Array.isArray(error.value)
        ? error.value as ReadonlyArray<AmqpValue>
        : []
      const info = errorFields[2]
      const properties: Array<MapEntry> = []
      let reason: string | undefined
      let description: string | undefined
      if (info instanceof Map) {
        for (const [k, v] of info) {
          const key = asString(k as AmqpValue)
          if (key === "DeadLetterReason") reason = asString(v as AmqpValue)
          else if (key === "DeadLetterErrorDescription") description = asString(v as AmqpValue)
          else if (key !== undefined) properties.push(entry(key, encodeAny(v), false))
        }
      }
      return { _tag: "deadLetter", reason, description, properties }
    }
    case 0x26:
    case "amqp:released:list":
      return { _tag: "abandon" }
    case 0x27:
    case "amqp:modified:list": {
      const properties = propertiesToModify(fields[2])
      return fields[1] === true ? { _tag: "defer", properties } : { _tag: "abandon", properties }
    }
    default:
      return undefined
  }
}

const lockTokens = (body: ReadonlyMap<string, AmqpValue>): Array<Buffer> => {
  const value = body.get("lock-tokens")
  const list = Array.isArray(value) ? value as ReadonlyArray<AmqpValue> : [value ?? null]
  const out: Array<Buffer> = []
  for (const item of list) {
    if (item instanceof AmqpUuid) out.push(item.bytes)
    else if (Buffer.isBuffer(item) && item.length === 16) out.push(item)
    else throw new BrokerError(Conditions.argumentError, "lock-tokens must be an array of uuids.")
  }
  return out
}

const sequenceNumbers = (body: ReadonlyMap<string, AmqpValue>): Array<number> => {
  const value = body.get("sequence-numbers")
  const list = Array.isArray(value) ? value as ReadonlyArray<AmqpValue> : []
  return list.map((v) => asNumber(v) ?? -1)
}

export const randomKey = (): string => randomBytes(32).toString("base64")

// The broker: entities, messages, locks, scheduling, expiry, duplicate detection and
// transactions, independent of AMQP. The server turns frames into calls on it.
import { randomBytes } from "node:crypto"
import { encodeLong, encodeString, encodeTimestamp } from "./codec.js"
import type { Predicate } from "./filter.js"
import { filterInput } from "./filter.js"
import { MinHeap } from "./heap.js"
import type { Envelope, MapEntry } from "./message.js"
import { annotation, entry, messageIdKey, withEntries } from "./message.js"

// Lock tokens and transaction ids are drawn from a pool of random bytes refilled 4 KiB at a time:
// one `randomBytes` call per message costs more than the rest of locking it.
let randomPool = Buffer.alloc(0)
let randomOffset = 0
const randomId = (size: number): Buffer => {
  if (randomOffset + size > randomPool.length) {
    randomPool = randomBytes(4096)
    randomOffset = 0
  }
  const id = Buffer.from(randomPool.subarray(randomOffset, randomOffset + size))
  randomOffset += size
  return id
}

/** Settings of a queue or subscription (and, for the send side, of a topic). */
export interface EntitySettings {
  readonly lockDurationMs: number
  readonly maxDeliveryCount: number
  readonly defaultTtlMs: number
  readonly deadLetterOnExpiry: boolean
  readonly duplicateDetectionWindowMs: number
  readonly maxMessageSizeBytes: number
}

/** An AMQP error condition with a description, as the broker reports failures. */
export class BrokerError extends Error {
  override readonly name = "BrokerError"
  constructor(readonly condition: string, readonly description: string) {
    super(description)
  }
}

export const Conditions = {
  notFound: "amqp:not-found",
  lockLost: "com.microsoft:message-lock-lost",
  serverBusy: "com.microsoft:server-busy",
  messageNotFound: "com.microsoft:message-not-found",
  sizeExceeded: "amqp:link:message-size-exceeded",
  notAllowed: "amqp:not-allowed",
  invalidField: "amqp:invalid-field",
  decodeError: "amqp:decode-error",
  unauthorized: "amqp:unauthorized-access",
  argumentError: "com.microsoft:argument-error",
  internal: "amqp:internal-error",
  txnUnknown: "amqp:transaction:unknown-id",
  txnRollback: "amqp:transaction:rollback",
  txnTimeout: "amqp:transaction:timeout",
  resourceLimit: "amqp:resource-limit-exceeded",
  entityDisabled: "com.microsoft:entity-disabled"
} as const

/** Something that takes messages from a queue or subscription: a receiver link. */
export interface Consumer {
  readonly peekLock: boolean
  /** How many more messages it can take now. */
  readonly available: () => number
  readonly deliver: (message: StoredMessage, lock: Lock | undefined) => void
}

/** A message in a queue, subscription or dead-letter queue. */
export interface StoredMessage {
  readonly seq: number
  env: Envelope
  readonly store: Store
  readonly enqueuedAt: number
  readonly expiresAt: number
  deliveryCount: number
  state: "ready" | "locked" | "deferred" | "scheduled" | "removed"
  deferred: boolean
  scheduledAt: number | undefined
  timer: ReturnType<typeof setTimeout> | undefined
  lock: Lock | undefined
  readonly deadLetterSource: string | undefined
}

/** A peek-lock on a message. The token is the 16 bytes of a GUID in network order. */
export interface Lock {
  readonly token: Buffer
  readonly key: string
  readonly message: StoredMessage
  lockedUntil: number
  timer: ReturnType<typeof setTimeout> | undefined
  enlisted: Transaction | undefined
}

/** How a message is settled. */
export type Outcome =
  | { readonly _tag: "complete" }
  | { readonly _tag: "abandon"; readonly properties?: ReadonlyArray<MapEntry> }
  | { readonly _tag: "defer"; readonly properties?: ReadonlyArray<MapEntry> }
  | {
    readonly _tag: "deadLetter"
    readonly reason?: string | undefined
    readonly description?: string | undefined
    readonly properties?: ReadonlyArray<MapEntry>
  }

/** A subscription rule. */
export interface Rule {
  readonly name: string
  readonly predicate: Predicate
}

const TTL_INFINITE = Number.POSITIVE_INFINITY

/** A queue, a subscription, or a dead-letter queue. */
export class Store {
  nextSeq = 1
  readonly all = new Map<number, StoredMessage>()
  readonly ready = new MinHeap<StoredMessage>((m) => m.seq)
  readonly consumers: Array<Consumer> = []
  private cursor = 0
  readonly dlq: Store | undefined

  constructor(
    readonly broker: Broker,
    /** The path clients use, e.g. `orders`, `events/Subscriptions/audit`, `orders/$DeadLetterQueue`. */
    readonly path: string,
    /** The entity that transactions see: the queue, or the subscription's topic. */
    readonly viaEntity: string,
    readonly settings: EntitySettings,
    isDeadLetter: boolean
  ) {
    this.dlq = isDeadLetter
      ? undefined
      : new Store(broker, `${path}/$DeadLetterQueue`, viaEntity, settings, true)
  }

  get isDeadLetter(): boolean {
    return this.dlq === undefined
  }

  addConsumer(consumer: Consumer): void {
    this.consumers.push(consumer)
    this.pump()
  }

  removeConsumer(consumer: Consumer): void {
    const i = this.consumers.indexOf(consumer)
    if (i >= 0) this.consumers.splice(i, 1)
  }

  /** Hands ready messages to consumers with credit, round robin, until one side runs out. */
  pump(): void {
    const consumers = this.consumers
    if (consumers.length === 0) return
    const now = Date.now()
    while (this.ready.size > 0) {
      let consumer: Consumer | undefined
      for (let tried = 0; tried < consumers.length; tried++) {
        const c = consumers[(this.cursor + tried) % consumers.length]
        if (c.available() > 0) {
          consumer = c
          this.cursor = (this.cursor + tried + 1) % consumers.length
          break
        }
      }
      if (consumer === undefined) return
      const message = this.ready.pop()!
      if (message.state !== "ready") continue
      if (message.expiresAt <= now) {
        this.expire(message)
        continue
      }
      if (consumer.peekLock) {
        const lock = this.broker.lock(message)
        consumer.deliver(message, lock)
      } else {
        this.remove(message)
        consumer.deliver(message, undefined)
      }
    }
  }

  enqueue(
    env: Envelope,
    options: {
      readonly scheduledAt?: number | undefined
      readonly deliveryCount?: number
      readonly deadLetterSource?: string | undefined
      readonly now: number
    }
  ): StoredMessage {
    const ttl = Math.min(env.ttl ?? TTL_INFINITE, this.settings.defaultTtlMs)
    const enqueuedAt = options.scheduledAt !== undefined && options.scheduledAt > options.now
      ? options.scheduledAt
      : options.now
    const message: StoredMessage = {
      seq: this.nextSeq++,
      env,
      store: this,
      enqueuedAt,
      expiresAt: this.isDeadLetter ? TTL_INFINITE : enqueuedAt + ttl,
      deliveryCount: options.deliveryCount ?? 0,
      state: "ready",
      deferred: false,
      scheduledAt: undefined,
      timer: undefined,
      lock: undefined,
      deadLetterSource: options.deadLetterSource
    }
    this.all.set(message.seq, message)
    if (options.scheduledAt !== undefined && options.scheduledAt > options.now) {
      message.state = "scheduled"
      message.scheduledAt = options.scheduledAt
      this.broker.scheduleTimer(message, options.scheduledAt - options.now)
    } else {
      this.ready.push(message)
      this.broker.watchExpiry(message)
    }
    return message
  }

  /** Makes a scheduled message visible. */
  activate(message: StoredMessage): void {
    if (message.state !== "scheduled") return
    message.state = "ready"
    message.scheduledAt = undefined
    message.timer = undefined
    this.ready.push(message)
    this.broker.watchExpiry(message)
    this.pump()
  }

  /** Puts a message back after an abandon or a lost lock. */
  release(message: StoredMessage): void {
    message.lock = undefined
    if (message.deferred) {
      message.state = "deferred"
      return
    }
    message.state = "ready"
    this.ready.push(message)
    this.pump()
  }

  remove(message: StoredMessage): void {
    message.state = "removed"
    if (message.timer !== undefined) clearTimeout(message.timer)
    message.timer = undefined
    this.all.delete(message.seq)
  }

  /** A message whose time to live has passed: dead-lettered or dropped. */
  expire(message: StoredMessage): void {
    if (message.state === "removed" || message.state === "locked") return
    this.remove(message)
    if (this.settings.deadLetterOnExpiry && this.dlq !== undefined) {
      this.deadLetter(message, "TTLExpiredException", "The message expired and was dead lettered.", [])
    }
  }

  deadLetter(
    message: StoredMessage,
    reason: string | undefined,
    description: string | undefined,
    properties: ReadonlyArray<MapEntry>
  ): void {
    if (message.state !== "removed") this.remove(message)
    const dlq = this.dlq
    if (dlq === undefined) return
    const updates: Array<MapEntry> = [...properties]
    if (reason !== undefined) updates.push(entry("DeadLetterReason", encodeString(reason), false))
    if (description !== undefined) updates.push(entry("DeadLetterErrorDescription", encodeString(description), false))
    const env: Envelope = { ...message.env, appProperties: withEntries(message.env.appProperties, updates) }
    dlq.enqueue(env, { deliveryCount: message.deliveryCount, deadLetterSource: this.path, now: Date.now() })
    dlq.pump()
  }

  /** Counts by state, for tests and the admin API. */
  counts(): { active: number; locked: number; deferred: number; scheduled: number } {
    let active = 0
    let locked = 0
    let deferred = 0
    let scheduled = 0
    for (const m of this.all.values()) {
      if (m.state === "ready") active++
      else if (m.state === "locked") locked++
      else if (m.state === "deferred") deferred++
      else if (m.state === "scheduled") scheduled++
    }
    return { active, locked, deferred, scheduled }
  }
}

/** A topic: fans messages out to its subscriptions. */
export class Topic {
  readonly subscriptions = new Map<string, { readonly store: Store; readonly rules: Array<Rule> }>()
  nextSeq = 1
  readonly scheduled = new Map<number, { readonly envs: Envelope; readonly timer: ReturnType<typeof setTimeout> }>()
  constructor(readonly name: string, readonly settings: EntitySettings) {}
}

/** An AMQP transaction. */
export class Transaction {
  readonly sends: Array<{ readonly target: Target; readonly envs: ReadonlyArray<Envelope> }> = []
  readonly settlements: Array<{ readonly lock: Lock; readonly outcome: Outcome }> = []
  operations = 0
  via: string | undefined = undefined
  timer: ReturnType<typeof setTimeout> | undefined = undefined
  state: "active" | "failed" | "timedOut" = "active"
  failure: string | undefined = undefined
  constructor(readonly id: Buffer, readonly owner: object) {}
  get key(): string {
    return this.id.toString("hex")
  }
}

/** Where a send goes. */
export type Target =
  | { readonly _tag: "queue"; readonly store: Store }
  | { readonly _tag: "topic"; readonly topic: Topic }

/** Limits of the broker that are not per entity. */
export interface BrokerLimits {
  readonly transactionTimeoutMs: number
  readonly maxTransactionOperations: number
  /** False for a namespace without transactions (the Basic tier). */
  readonly transactions?: boolean | undefined
}

const dotnetGuidOrder = (bytes: Buffer): Buffer =>
  Buffer.from([
    bytes[3],
    bytes[2],
    bytes[1],
    bytes[0],
    bytes[5],
    bytes[4],
    bytes[7],
    bytes[6],
    ...bytes.subarray(8, 16)
  ])

/**
 * The lock token as sent in a delivery tag: Service Bus writes the GUID in .NET byte order,
 * which reverses the first three groups.
 */
export const deliveryTagOf = (token: Buffer): Buffer => dotnetGuidOrder(token)

/** The lock token (network order) from a delivery tag. */
export const tokenOfDeliveryTag = (tag: Buffer): Buffer => dotnetGuidOrder(tag)

/** Parses a GUID string as the SDK shows lock tokens. */
export const tokenFromString = (text: string): Buffer | undefined => {
  const hex = text.replace(/-/g, "")
  return /^[0-9a-fA-F]{32}$/.test(hex) ? Buffer.from(hex, "hex") : undefined
}

export class Broker {
  readonly queues = new Map<string, Store>()
  readonly topics = new Map<string, Topic>()
  readonly locks = new Map<string, Lock>()
  readonly transactions = new Map<string, Transaction>()
  private readonly duplicates = new Map<string, Map<string, number>>()
  private expirySweep: ReturnType<typeof setInterval> | undefined
  private closed = false

  constructor(readonly limits: BrokerLimits) {
    // Messages that expire while nobody receives are found by a slow sweep; receivers find
    // expired messages themselves when they pop them.
    this.expirySweep = setInterval(() => this.sweepExpired(), 1000)
    this.expirySweep.unref()
  }

  close(): void {
    this.closed = true
    if (this.expirySweep !== undefined) clearInterval(this.expirySweep)
    for (const lock of this.locks.values()) if (lock.timer !== undefined) clearTimeout(lock.timer)
    for (const store of this.stores()) {
      for (const m of store.all.values()) if (m.timer !== undefined) clearTimeout(m.timer)
    }
    for (const topic of this.topics.values()) for (const s of topic.scheduled.values()) clearTimeout(s.timer)
    for (const txn of this.transactions.values()) if (txn.timer !== undefined) clearTimeout(txn.timer)
  }

  *stores(): Generator<Store> {
    for (const q of this.queues.values()) {
      yield q
      yield q.dlq!
    }
    for (const t of this.topics.values()) {
      for (const s of t.subscriptions.values()) {
        yield s.store
        yield s.store.dlq!
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Entities

  createQueue(name: string, settings: EntitySettings): Store {
    const key = name.toLowerCase()
    if (this.queues.has(key) || this.topics.has(key)) {
      throw new BrokerError("com.microsoft:entity-already-exists", `The entity "${name}" already exists.`)
    }
    const store = new Store(this, name, key, settings, false)
    this.queues.set(key, store)
    return store
  }

  createTopic(name: string, settings: EntitySettings): Topic {
    const key = name.toLowerCase()
    if (this.queues.has(key) || this.topics.has(key)) {
      throw new BrokerError("com.microsoft:entity-already-exists", `The entity "${name}" already exists.`)
    }
    const topic = new Topic(name, settings)
    this.topics.set(key, topic)
    return topic
  }

  createSubscription(topicName: string, name: string, settings: EntitySettings, rules: Array<Rule>): Store {
    const topic = this.topics.get(topicName.toLowerCase())
    if (topic === undefined) throw new BrokerError(Conditions.notFound, `The topic "${topicName}" does not exist.`)
    const key = name.toLowerCase()
    if (topic.subscriptions.has(key)) {
      throw new BrokerError(
        "com.microsoft:entity-already-exists",
        `The subscription "${name}" of topic "${topicName}" already exists.`
      )
    }
    const store = new Store(this, `${topic.name}/Subscriptions/${name}`, topic.name.toLowerCase(), settings, false)
    topic.subscriptions.set(key, { store, rules })
    return store
  }

  /** Resolves a path to a receivable store (queue, subscription, or one of their DLQs). */
  findStore(path: string): Store | undefined {
    const parts = normalizePath(path).split("/")
    let store: Store | undefined
    let rest: Array<string>
    if (parts.length >= 3 && parts[1].toLowerCase() === "subscriptions") {
      store = this.topics.get(parts[0].toLowerCase())?.subscriptions.get(parts[2].toLowerCase())?.store
      rest = parts.slice(3)
    } else {
      store = this.queues.get(parts[0].toLowerCase())
      rest = parts.slice(1)
    }
    if (store === undefined) return undefined
    if (rest.length === 0) return store
    if (rest.length === 1 && rest[0].toLowerCase() === "$deadletterqueue") return store.dlq
    return undefined
  }

  /** Resolves a path to something a sender can send to. */
  findTarget(path: string): Target | undefined {
    const key = normalizePath(path).toLowerCase()
    const queue = this.queues.get(key)
    if (queue !== undefined) return { _tag: "queue", store: queue }
    const topic = this.topics.get(key)
    if (topic !== undefined) return { _tag: "topic", topic }
    return undefined
  }

  settingsOf(target: Target): EntitySettings {
    return target._tag === "queue" ? target.store.settings : target.topic.settings
  }

  viaOf(target: Target): string {
    return target._tag === "queue" ? target.store.viaEntity : target.topic.name.toLowerCase()
  }

  // -------------------------------------------------------------------------------------------
  // Sending

  /** Checks sizes before anything is enqueued. */
  checkSize(target: Target, envs: ReadonlyArray<Envelope>, payloadSize: number): void {
    const max = this.settingsOf(target).maxMessageSizeBytes
    if (payloadSize > max) {
      throw new BrokerError(
        Conditions.sizeExceeded,
        `The received message (size: ${payloadSize} bytes) exceeds the limit (${max} bytes) currently allowed on the link.`
      )
    }
    for (const env of envs) {
      if (env.size > max) {
        throw new BrokerError(
          Conditions.sizeExceeded,
          `The received message (size: ${env.size} bytes) exceeds the limit (${max} bytes) currently allowed on the link.`
        )
      }
    }
  }

  /** Enqueues messages now; returns the sequence numbers (of the queue, or of the topic). */
  send(target: Target, envs: ReadonlyArray<Envelope>, scheduledAt?: number): Array<number> {
    const now = Date.now()
    const settings = this.settingsOf(target)
    const out: Array<number> = []
    for (const env of envs) {
      if (settings.duplicateDetectionWindowMs > 0 && this.isDuplicate(target, env, now)) {
        out.push(-1)
        continue
      }
      const scheduledAnnotation = annotation(env.annotations, "x-opt-scheduled-enqueue-time")
      const when = scheduledAt ?? (scheduledAnnotation instanceof Date ? scheduledAnnotation.getTime() : undefined)
      if (target._tag === "queue") {
        const message = target.store.enqueue(env, { scheduledAt: when, now })
        out.push(message.seq)
      } else {
        const topic = target.topic
        const seq = topic.nextSeq++
        if (when !== undefined && when > now) {
          const timer = setTimeout(() => {
            topic.scheduled.delete(seq)
            this.fanOut(topic, env, Date.now())
          }, Math.min(when - now, 2 ** 31 - 1))
          timer.unref()
          topic.scheduled.set(seq, { envs: env, timer })
        } else {
          this.fanOut(topic, env, now)
        }
        out.push(seq)
      }
    }
    if (target._tag === "queue") target.store.pump()
    return out
  }

  private fanOut(topic: Topic, env: Envelope, now: number): void {
    const input = filterInput(env)
    for (const { rules, store } of topic.subscriptions.values()) {
      if (rules.some((rule) => rule.predicate(input))) {
        store.enqueue(env, { now })
        store.pump()
      }
    }
  }

  private isDuplicate(target: Target, env: Envelope, now: number): boolean {
    const id = messageIdKey(env.properties.messageId)
    if (id === undefined) return false
    const entity = this.viaOf(target)
    let seen = this.duplicates.get(entity)
    if (seen === undefined) {
      seen = new Map()
      this.duplicates.set(entity, seen)
    }
    const window = this.settingsOf(target).duplicateDetectionWindowMs
    const at = seen.get(id)
    if (at !== undefined && now - at < window) return true
    seen.delete(id)
    seen.set(id, now)
    // Insertion order is time order: drop the entries that left the window.
    for (const [key, time] of seen) {
      if (now - time < window) break
      seen.delete(key)
    }
    return false
  }

  /** Cancels scheduled messages by sequence number. */
  cancelScheduled(target: Target, seqs: ReadonlyArray<number>): void {
    for (const seq of seqs) {
      if (target._tag === "queue") {
        const m = target.store.all.get(seq)
        if (m !== undefined && m.state === "scheduled") target.store.remove(m)
      } else {
        const s = target.topic.scheduled.get(seq)
        if (s !== undefined) {
          clearTimeout(s.timer)
          target.topic.scheduled.delete(seq)
        }
      }
    }
  }

  scheduleTimer(message: StoredMessage, delayMs: number): void {
    const timer = setTimeout(() => {
      if (message.scheduledAt !== undefined && message.scheduledAt > Date.now()) {
        this.scheduleTimer(message, message.scheduledAt - Date.now())
        return
      }
      message.store.activate(message)
    }, Math.min(Math.max(0, delayMs), 2 ** 31 - 1))
    timer.unref()
    message.timer = timer
  }

  watchExpiry(_message: StoredMessage): void {
    // Expiry is found by the sweep and on delivery; nothing to arm per message.
  }

  private sweepExpired(): void {
    if (this.closed) return
    const now = Date.now()
    for (const store of this.stores()) {
      if (store.isDeadLetter) continue
      for (const m of store.all.values()) {
        if (m.state === "ready" && m.expiresAt <= now) store.expire(m)
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Locks and settlement

  lock(message: StoredMessage): Lock {
    const token = randomId(16)
    const lock: Lock = {
      token,
      key: token.toString("hex"),
      message,
      lockedUntil: Date.now() + message.store.settings.lockDurationMs,
      timer: undefined,
      enlisted: undefined
    }
    message.state = "locked"
    message.lock = lock
    this.locks.set(lock.key, lock)
    this.armLock(lock)
    return lock
  }

  private armLock(lock: Lock): void {
    if (lock.timer !== undefined) clearTimeout(lock.timer)
    lock.timer = setTimeout(() => this.expireLock(lock), Math.max(0, lock.lockedUntil - Date.now()))
    lock.timer.unref()
  }

  /** The lock has run out: the message goes back, one delivery attempt later. */
  expireLock(lock: Lock): void {
    if (this.locks.get(lock.key) !== lock) return
    if (lock.enlisted !== undefined) return
    this.dropLock(lock)
    const message = lock.message
    message.deliveryCount++
    this.afterFailedDelivery(message)
  }

  private afterFailedDelivery(message: StoredMessage): void {
    const store = message.store
    if (message.deliveryCount >= store.settings.maxDeliveryCount && !store.isDeadLetter) {
      store.deadLetter(
        message,
        "MaxDeliveryCountExceeded",
        `Message could not be consumed after ${store.settings.maxDeliveryCount} delivery attempts.`,
        []
      )
    } else {
      store.release(message)
    }
  }

  private dropLock(lock: Lock): void {
    if (lock.timer !== undefined) clearTimeout(lock.timer)
    lock.timer = undefined
    this.locks.delete(lock.key)
    if (lock.message.lock === lock) lock.message.lock = undefined
  }

  findLock(token: Buffer): Lock {
    const lock = this.locks.get(token.toString("hex"))
    if (lock === undefined) {
      throw new BrokerError(
        Conditions.lockLost,
        "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue."
      )
    }
    return lock
  }

  renewLock(lock: Lock): number {
    if (lock.enlisted !== undefined) return lock.lockedUntil
    lock.lockedUntil = Date.now() + lock.message.store.settings.lockDurationMs
    this.armLock(lock)
    return lock.lockedUntil
  }

  /** Applies an outcome to a locked message (outside any transaction). */
  settle(lock: Lock, outcome: Outcome): void {
    if (this.locks.get(lock.key) !== lock) {
      throw new BrokerError(
        Conditions.lockLost,
        "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue."
      )
    }
    if (lock.enlisted !== undefined) {
      throw new BrokerError(
        Conditions.notAllowed,
        "The message is already settled in a transaction that is not yet discharged."
      )
    }
    this.apply(lock, outcome)
  }

  private apply(lock: Lock, outcome: Outcome): void {
    this.dropLock(lock)
    const message = lock.message
    const store = message.store
    switch (outcome._tag) {
      case "complete":
        store.remove(message)
        break
      case "abandon":
        this.modify(message, outcome.properties)
        message.deliveryCount++
        this.afterFailedDelivery(message)
        break
      case "defer":
        this.modify(message, outcome.properties)
        message.deferred = true
        message.state = "deferred"
        break
      case "deadLetter":
        store.deadLetter(message, outcome.reason, outcome.description, outcome.properties ?? [])
        break
    }
  }

  private modify(message: StoredMessage, properties: ReadonlyArray<MapEntry> | undefined): void {
    if (properties !== undefined && properties.length > 0) {
      message.env = { ...message.env, appProperties: withEntries(message.env.appProperties, properties) }
    }
  }

  /** Locks (or, receive-and-delete, removes) deferred messages by sequence number. */
  receiveDeferred(
    store: Store,
    seqs: ReadonlyArray<number>,
    peekLock: boolean
  ): Array<{ message: StoredMessage; lock: Lock | undefined }> {
    const out: Array<{ message: StoredMessage; lock: Lock | undefined }> = []
    for (const seq of seqs) {
      const message = store.all.get(seq)
      if (message === undefined || !message.deferred || message.state !== "deferred") {
        throw new BrokerError(
          Conditions.messageNotFound,
          `Failed to lock one or more specified messages. The message with sequence number ${seq} was not found or is not deferred.`
        )
      }
    }
    for (const seq of seqs) {
      const message = store.all.get(seq)!
      if (peekLock) {
        out.push({ message, lock: this.lock(message) })
      } else {
        store.remove(message)
        out.push({ message, lock: undefined })
      }
    }
    return out
  }

  /** Messages from a sequence number on, in order, without locking them. */
  peek(store: Store, fromSeq: number, count: number): Array<StoredMessage> {
    const out: Array<StoredMessage> = []
    const now = Date.now()
    for (const m of store.all.values()) {
      if (out.length >= count) break
      if (m.seq < fromSeq || m.state === "removed") continue
      if (m.state === "ready" && m.expiresAt <= now) continue
      out.push(m)
    }
    return out
  }

  // -------------------------------------------------------------------------------------------
  // Transactions

  declare(owner: object): Transaction {
    const txn = new Transaction(randomId(8), owner)
    this.transactions.set(txn.key, txn)
    return txn
  }

  findTransaction(id: Buffer): Transaction {
    const txn = this.transactions.get(id.toString("hex"))
    if (txn === undefined) {
      throw new BrokerError(Conditions.txnUnknown, `Transaction ${id.toString("hex")} is not known.`)
    }
    return txn
  }

  private enlist(txn: Transaction, via: string, operations: number): void {
    if (txn.state === "timedOut") {
      throw new BrokerError(Conditions.txnTimeout, `Transaction ${txn.key} has timed out and was rolled back.`)
    }
    if (txn.via === undefined) txn.via = via
    else if (txn.via !== via) {
      this.fail(txn, "operations on more than one entity without a common via entity")
      throw new BrokerError(
        Conditions.notAllowed,
        `Transaction ${txn.key} already works on entity "${txn.via}"; "${via}" can only join it through a send-via on the same session.`
      )
    }
    if (txn.operations + operations > this.limits.maxTransactionOperations) {
      this.fail(txn, `more than ${this.limits.maxTransactionOperations} operations`)
      throw new BrokerError(
        Conditions.resourceLimit,
        `A transaction cannot have more than ${this.limits.maxTransactionOperations} messages; transaction ${txn.key} will be rolled back.`
      )
    }
    if (txn.operations === 0 && txn.timer === undefined) {
      txn.timer = setTimeout(() => this.timeOut(txn), this.limits.transactionTimeoutMs)
      txn.timer.unref()
    }
    txn.operations += operations
  }

  private fail(txn: Transaction, reason: string): void {
    if (txn.state === "active") {
      txn.state = "failed"
      txn.failure = reason
    }
  }

  private timeOut(txn: Transaction): void {
    if (!this.transactions.has(txn.key)) return
    this.undo(txn)
    txn.state = "timedOut"
  }

  /** Records a send to be made visible at commit. */
  enlistSend(txn: Transaction, via: string, target: Target, envs: ReadonlyArray<Envelope>): void {
    this.enlist(txn, via, envs.length)
    txn.sends.push({ target, envs })
  }

  /** Records a settlement to be applied at commit; the lock is held until then. */
  enlistSettlement(txn: Transaction, via: string, lock: Lock, outcome: Outcome): void {
    if (this.locks.get(lock.key) !== lock) {
      throw new BrokerError(
        Conditions.lockLost,
        "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue."
      )
    }
    if (lock.enlisted !== undefined) {
      throw new BrokerError(Conditions.notAllowed, "The message is already settled in a transaction.")
    }
    this.enlist(txn, via, 1)
    lock.enlisted = txn
    if (lock.timer !== undefined) clearTimeout(lock.timer)
    lock.timer = undefined
    txn.settlements.push({ lock, outcome })
  }

  /** Commits or rolls back. Throws the discharge failure, if any. */
  discharge(txn: Transaction, fail: boolean): void {
    this.transactions.delete(txn.key)
    if (txn.timer !== undefined) clearTimeout(txn.timer)
    if (txn.state === "timedOut") {
      throw new BrokerError(Conditions.txnTimeout, `Transaction ${txn.key} timed out and was rolled back.`)
    }
    if (fail) {
      this.undo(txn)
      return
    }
    if (txn.state === "failed") {
      this.undo(txn)
      throw new BrokerError(Conditions.txnRollback, `Transaction ${txn.key} was rolled back: ${txn.failure}.`)
    }
    const lost = txn.settlements.find(({ lock }) => this.locks.get(lock.key) !== lock)
    if (lost !== undefined) {
      this.undo(txn)
      throw new BrokerError(Conditions.txnRollback, `Transaction ${txn.key} was rolled back: a message lock was lost.`)
    }
    for (const { envs, target } of txn.sends) this.send(target, envs)
    const touched = new Set<Store>()
    for (const { lock, outcome } of txn.settlements) {
      lock.enlisted = undefined
      touched.add(lock.message.store)
      this.apply(lock, outcome)
    }
    for (const store of touched) store.pump()
  }

  /** Rolls back: enlisted sends are dropped, enlisted locks go back to normal. */
  private undo(txn: Transaction): void {
    const now = Date.now()
    for (const { lock } of txn.settlements) {
      if (lock.enlisted !== txn) continue
      lock.enlisted = undefined
      if (this.locks.get(lock.key) !== lock) continue
      if (lock.lockedUntil <= now) this.expireLock(lock)
      else this.armLock(lock)
    }
    txn.settlements.length = 0
    txn.sends.length = 0
  }

  /** Rolls back every transaction of an owner (a coordinator link or a connection). */
  rollbackOwnedBy(owner: object): void {
    for (const txn of [...this.transactions.values()]) {
      if (txn.owner === owner) {
        this.transactions.delete(txn.key)
        if (txn.timer !== undefined) clearTimeout(txn.timer)
        this.undo(txn)
      }
    }
  }
}

/** Strips a scheme and host and surrounding slashes from an address. */
export const normalizePath = (address: string): string => {
  let path = address
  const scheme = /^[a-z]+:\/\/[^/]*/i.exec(path)
  if (scheme !== null) path = path.slice(scheme[0].length)
  return path.replace(/^\/+|\/+$/g, "")
}

/** The broker annotations a receiver sees on a message. */
export const brokerAnnotations = (message: StoredMessage, lock: Lock | undefined): Array<MapEntry> => {
  const out: Array<MapEntry> = [
    entry("x-opt-enqueued-time", encodeTimestamp(message.enqueuedAt), true),
    entry("x-opt-sequence-number", encodeLong(message.seq), true)
  ]
  if (lock !== undefined) out.push(entry("x-opt-locked-until", encodeTimestamp(lock.lockedUntil), true))
  if (message.deadLetterSource !== undefined) {
    out.push(entry("x-opt-deadletter-source", encodeString(message.deadLetterSource), true))
  }
  if (message.state === "deferred" || (message.deferred && message.state === "locked")) {
    out.push(entry("x-opt-message-state", encodeIntValue(1), true))
  } else if (message.state === "scheduled") {
    out.push(entry("x-opt-message-state", encodeIntValue(2), true))
  }
  return out
}

const encodeIntValue = (value: number): Buffer => {
  const out = Buffer.allocUnsafe(5)
  out[0] = 0x71
  out.writeInt32BE(value, 1)
  return out
}

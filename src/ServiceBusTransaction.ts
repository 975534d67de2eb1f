/**
 * Azure Service Bus transactions: complete a received message and send new ones atomically.
 * The official JavaScript SDK has none; this module speaks AMQP 1.0 transactions itself, on one
 * connection and one session per {@link TransactionalSession}:
 *
 * - the transaction coordinator link is attached first;
 * - then the receiver on the entity being processed, which becomes the session's "via" entity
 *   (for a subscription, its topic);
 * - then senders to the destinations, on the same session, so that Service Bus accepts sends to
 *   other queues and topics in a transaction that settles messages of the via entity.
 *
 * {@link run} declares a transaction, runs the body, and discharges it: commit when the body
 * succeeds, rollback when it fails or is interrupted. Until the commit, nothing the body sent is
 * visible and the settled messages stay locked; after a rollback, the received messages are
 * delivered again when their locks expire (or at once if abandoned outside the transaction).
 *
 * @since 0.1.0
 */
import type { TokenCredential } from "@azure/identity"
import type { Duration, Effect, Redacted, Scope } from "effect"
import { Context, Layer, Schema } from "effect"
import * as internal from "./internal/serviceBusTransaction.js"
import type { OutgoingMessage, Properties, ReceivedMessage } from "./Message.js"
import type { Settlement, Source } from "./MessageReceiver.js"
import type { ReceiveError, SendError, ServiceError, SettleError } from "./ServiceBusError.js"
import { isTransient as isTransientServiceBusError } from "./ServiceBusError.js"

/**
 * The most messages (sends plus settlements) one Service Bus transaction may hold.
 *
 * @since 0.1.0
 * @category models
 */
export const maxOperations = 100

/**
 * A transaction would hold more than {@link maxOperations} messages. Raised when the operation
 * that crosses the limit is enlisted, before it (or anything enlisted and not yet flushed) is
 * sent; the transaction is rolled back.
 *
 * @since 0.1.0
 * @category errors
 */
export class TransactionTooLarge extends Schema.TaggedError<TransactionTooLarge>(
  "effect-eventually/TransactionTooLarge"
)("TransactionTooLarge", {
  /** The operations the transaction would hold. */
  operations: Schema.Number,
  limit: Schema.Number
}) {
  override get message(): string {
    return `A Service Bus transaction can hold at most ${this.limit} messages (sends and settlements); this one would hold ${this.operations}. Nothing was committed. Split the work into several transactions, or send fewer messages per received message.`
  }
}

/**
 * The coordinator refused to commit: it rolled the transaction back (for instance, a lock was
 * lost, or an enlisted operation was refused), or no longer knew it. None of its work happened;
 * the received messages are delivered again.
 *
 * @since 0.1.0
 * @category errors
 */
export class TransactionFailed extends Schema.TaggedError<TransactionFailed>("effect-eventually/TransactionFailed")(
  "TransactionFailed",
  {
    /** The transaction id, in hexadecimal. */
    transactionId: Schema.String,
    entity: Schema.String,
    /** The AMQP error condition (`amqp:transaction:rollback`, `amqp:transaction:unknown-id`, ...). */
    condition: Schema.optional(Schema.String),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Service Bus transaction 0x${this.transactionId} on "${this.entity}" was not committed${
      this.condition === undefined ? "" : ` (${this.condition})`
    }: ${this.reason}. None of its sends or settlements happened; the received messages will be delivered again.`
  }
}

/**
 * The transaction ran longer than Service Bus allows (2 minutes from its first operation) and
 * was rolled back. None of its work happened.
 *
 * @since 0.1.0
 * @category errors
 */
export class TransactionTimeout extends Schema.TaggedError<TransactionTimeout>(
  "effect-eventually/TransactionTimeout"
)("TransactionTimeout", {
  transactionId: Schema.String,
  entity: Schema.String,
  reason: Schema.optional(Schema.String)
}) {
  override get message(): string {
    return `Service Bus transaction 0x${this.transactionId} on "${this.entity}" timed out and was rolled back${
      this.reason === undefined ? "" : ` (${this.reason})`
    }. Keep transactions short (well under 2 minutes), then retry.`
  }
}

/**
 * Transactions cannot run: the namespace has none (the Basic tier refuses the transaction
 * coordinator), or the installed AMQP library (rhea) cannot carry them (the start-up self-check
 * failed). Nothing was sent. Permanent: use the idempotent mode, or a Standard namespace, or pin
 * rhea to a working version.
 *
 * @since 0.1.0
 * @category errors
 */
export class TransactionsUnsupported extends Schema.TaggedError<TransactionsUnsupported>(
  "effect-eventually/TransactionsUnsupported"
)("TransactionsUnsupported", { reason: Schema.String }) {
  override get message(): string {
    return `Service Bus transactions cannot run: ${this.reason}. Nothing was sent; use the non-transactional (idempotent) mode meanwhile.`
  }
}

/**
 * Every failure of a transaction.
 *
 * @since 0.1.0
 * @category errors
 */
export type TransactionError =
  | TransactionTooLarge
  | TransactionFailed
  | TransactionTimeout
  | SendError
  | SettleError

/**
 * True for failures worth retrying as they are: the transient Service Bus failures (connection
 * lost, timeouts, throttling) and {@link TransactionTimeout}. After any transaction failure
 * nothing was committed.
 *
 * @since 0.1.0
 * @category errors
 */
export const isTransient = (error: unknown): boolean =>
  isTransientServiceBusError(error) ||
  (typeof error === "object" && error !== null && "_tag" in error && error._tag === "TransactionTimeout")

/**
 * How a {@link TransactionalSession} reaches its namespace: a connection string (SAS key or
 * shared access signature; `UseDevelopmentEmulator=true` for plain TCP), or a namespace with a
 * `TokenCredential` (Entra ID).
 *
 * @since 0.1.0
 * @category models
 */
export type Connection =
  | { readonly connectionString: Redacted.Redacted<string> }
  | {
    /** `<namespace>.servicebus.windows.net`, or `host:port` for a local emulator. */
    readonly fullyQualifiedNamespace: string
    readonly credential: TokenCredential
    /** Plain TCP instead of TLS, as to a local emulator. */
    readonly useDevelopmentEmulator?: boolean
  }

/**
 * Options of a transactional session: the connection, the processed entity and the destinations.
 *
 * @since 0.1.0
 * @category models
 */
export interface SessionOptions {
  readonly connection: Connection
  /** The queue or subscription whose messages are processed: the session's via entity. */
  readonly entity: Source
  /** Queues and topics to attach senders to at once (others are attached on first send). */
  readonly destinations?: ReadonlyArray<string>
  /** How long to wait for each answer of Service Bus (attach, send, settle, declare, discharge); 30 s by default. */
  readonly operationTimeout?: Duration.DurationInput
}

/**
 * Options of a receive on a transactional session.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReceiveOptions {
  /** How long to wait for the first message; 60 s by default. */
  readonly maxWait?: Duration.DurationInput
  /** After the first message, how long to wait for more before returning; 20 ms by default. */
  readonly maxWaitAfterFirst?: Duration.DurationInput
}

/**
 * One AMQP connection and session to a namespace, set up for transactions over one via entity.
 *
 * @since 0.1.0
 * @category models
 */
export interface TransactionalSession {
  /** The path messages are received from (`orders`, `events/Subscriptions/billing`). */
  readonly entity: string
  /** The via entity: the queue, or the topic of the subscription. */
  readonly viaEntity: string
  /**
   * Receives up to `maxMessages` messages in peek-lock mode, waiting up to `maxWait` for the
   * first. An empty array means none arrived in time.
   */
  readonly receive: (
    maxMessages: number,
    options?: ReceiveOptions
  ) => Effect.Effect<ReadonlyArray<ReceivedMessage>, ReceiveError>
  /**
   * Settles a message outside any transaction: on the receive link while the message's delivery
   * is open there, otherwise by lock token through the entity's `$management` node (for instance
   * a message whose settlement in a transaction was rolled back, while its lock lasts).
   */
  readonly settle: (message: ReceivedMessage, settlement: Settlement) => Effect.Effect<void, SettleError>
  /**
   * Renews the lock of a message of the entity (`com.microsoft:renew-lock` on its `$management`
   * node, on this session's connection) and returns the new lock expiry. A lost or unknown lock
   * is `MessageLockLost`. A message already settled in a transaction that is not yet discharged
   * keeps its lock until the discharge.
   */
  readonly renewLock: (message: ReceivedMessage) => Effect.Effect<Date, SettleError>
}

/**
 * @since 0.1.0
 * @category services
 */
export const TransactionalSession: Context.Tag<TransactionalSession, TransactionalSession> = Context.GenericTag<
  TransactionalSession
>("effect-eventually/ServiceBusTransaction/TransactionalSession")

/**
 * An open transaction. Every operation is enlisted: it takes effect at commit, or never.
 * Operations are buffered and sent together when the body ends (or at {@link Transaction.flush}),
 * and {@link run} waits for Service Bus to accept each of them before it commits.
 *
 * A settlement goes on the receive link while the message's delivery is open there; once that
 * delivery has had a disposition (in a transaction that was then rolled back), the message is
 * settled by lock token through the entity's `$management` node (`update-disposition`, enlisted
 * in the transaction), so it can be completed, abandoned, dead-lettered or deferred again while
 * its lock lasts.
 *
 * @since 0.1.0
 * @category models
 */
export interface Transaction {
  /** The transaction id, in hexadecimal. */
  readonly id: string
  /** Operations enlisted so far (messages sent plus messages settled). */
  readonly operations: () => number
  readonly complete: (message: ReceivedMessage) => Effect.Effect<void, TransactionError>
  readonly abandon: (message: ReceivedMessage, properties?: Properties) => Effect.Effect<void, TransactionError>
  readonly deadLetter: (
    message: ReceivedMessage,
    options: { readonly reason: string; readonly description?: string; readonly properties?: Properties }
  ) => Effect.Effect<void, TransactionError>
  readonly defer: (message: ReceivedMessage, properties?: Properties) => Effect.Effect<void, TransactionError>
  readonly settle: (message: ReceivedMessage, settlement: Settlement) => Effect.Effect<void, TransactionError>
  /** Sends messages to a queue or topic (the via entity included). */
  readonly send: (
    destination: string,
    messages: OutgoingMessage | ReadonlyArray<OutgoingMessage>
  ) => Effect.Effect<void, TransactionError>
  /**
   * Sends what is enlisted so far and waits until Service Bus has accepted every operation into
   * the transaction (still invisible until the commit).
   */
  readonly flush: Effect.Effect<void, TransactionError>
}

/**
 * Opens a transactional session for the lifetime of the scope: checks once per process that
 * rhea can carry transactions, connects, authorizes the entity and the destinations, and attaches
 * the coordinator, the receiver and the senders in that order on one session.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeSession: (
  options: SessionOptions
) => Effect.Effect<TransactionalSession, ServiceError | TransactionsUnsupported, Scope.Scope> = internal.makeSession

/**
 * A layer with a {@link TransactionalSession} that lives as long as the layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerSession = (
  options: SessionOptions
): Layer.Layer<TransactionalSession, ServiceError | TransactionsUnsupported> =>
  Layer.scoped(TransactionalSession, makeSession(options))

/**
 * Runs `body` in a new transaction on the session: declare, run the body, send what it
 * enlisted, wait for every operation to be accepted, then commit. When the body fails or is
 * interrupted, or an operation is refused, the transaction is rolled back and the failure is
 * returned. A commit refused by Service Bus is a {@link TransactionFailed} or
 * {@link TransactionTimeout}; a connection lost on the way is a transient `ConnectionLost`
 * (Service Bus rolls back what was not committed).
 *
 * @since 0.1.0
 * @category constructors
 */
export const run: <A, E, R>(
  session: TransactionalSession,
  body: (transaction: Transaction) => Effect.Effect<A, E, R>
) => Effect.Effect<A, E | TransactionError, R> = internal.run

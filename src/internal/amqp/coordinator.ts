/**
 * Client side of an AMQP 1.0 transaction coordinator on one rhea session: attach the coordinator
 * link, `declare` a transaction and `discharge` it (commit or roll back). Work is enlisted with
 * `sendTransactional` and with dispositions carrying `transactionalState(txnId, outcome)` on the
 * same session. Closing the coordinator link (the end of `make`'s scope) makes the coordinator
 * roll back every transaction that was not discharged.
 */
import { Duration, Effect, Either, Schema, type Scope } from "effect"
import type { Delivery, EventContext, Sender, Session } from "rhea"
import { awaitCallback } from "./callbackWait.js"
import {
  attachCoordinator,
  installTransactionSupport,
  TransactionEvents,
  type TransactionSupportError
} from "./transactionalTransfer.js"
import {
  decodeDeliveryState,
  type DeliveryState,
  describeState,
  encodeDeclare,
  encodeDischarge,
  TransactionErrorCondition,
  type TxnCapabilityName
} from "./transactionCodec.js"

const txnHex = (txnId: Uint8Array) => Buffer.from(txnId).toString("hex")

/** The coordinator does not know the transaction (already discharged, or never declared). */
export class TransactionUnknownId extends Schema.TaggedError<TransactionUnknownId>(
  "effect-eventually/TransactionUnknownId"
)("TransactionUnknownId", { txnId: Schema.String, description: Schema.optional(Schema.String) }) {
  override get message(): string {
    return `The coordinator does not know transaction 0x${this.txnId}${
      this.description ? ` (${this.description})` : ""
    }: its work was not committed. Start the work again in a new transaction.`
  }
}

/** The coordinator rolled the transaction back instead of committing it. */
export class TransactionRolledBack extends Schema.TaggedError<TransactionRolledBack>(
  "effect-eventually/TransactionRolledBack"
)("TransactionRolledBack", { txnId: Schema.String, description: Schema.optional(Schema.String) }) {
  override get message(): string {
    return `Transaction 0x${this.txnId} was rolled back by the coordinator${
      this.description ? ` (${this.description})` : ""
    }: none of its work happened. Retry it in a new transaction.`
  }
}

/** The transaction ran longer than the coordinator allows and was rolled back. */
export class TransactionTimedOut extends Schema.TaggedError<TransactionTimedOut>(
  "effect-eventually/TransactionTimedOut"
)("TransactionTimedOut", { txnId: Schema.String, description: Schema.optional(Schema.String) }) {
  override get message(): string {
    return `Transaction 0x${this.txnId} timed out at the coordinator and was rolled back${
      this.description ? ` (${this.description})` : ""
    }: keep transactions shorter, then retry.`
  }
}

/** The coordinator refused a declare or discharge for another reason. */
export class TransactionRejected extends Schema.TaggedError<TransactionRejected>(
  "effect-eventually/TransactionRejected"
)("TransactionRejected", {
  operation: Schema.Literal("declare", "discharge"),
  condition: Schema.optional(Schema.String),
  description: Schema.optional(Schema.String)
}) {
  override get message(): string {
    return `The transaction coordinator refused the ${this.operation}${
      this.condition ? ` with ${this.condition}` : ""
    }${this.description ? `: ${this.description}` : ""}.`
  }
}

/** No answer from the coordinator in time; whether a discharge took effect is unknown. */
export class CoordinatorTimeout extends Schema.TaggedError<CoordinatorTimeout>(
  "effect-eventually/CoordinatorTimeout"
)("CoordinatorTimeout", { operation: Schema.Literal("attach", "declare", "discharge"), millis: Schema.Number }) {
  override get message(): string {
    return `The transaction coordinator did not answer the ${this.operation} within ${this.millis} ms${
      this.operation === "discharge" ? "; the transaction's outcome is unknown" : ""
    }.`
  }
}

/** The coordinator link is closed or answered with something a coordinator never sends. */
export class CoordinatorUnavailable extends Schema.TaggedError<CoordinatorUnavailable>(
  "effect-eventually/CoordinatorUnavailable"
)("CoordinatorUnavailable", {
  reason: Schema.String,
  /** The error condition of the detach, when the coordinator refused the link. */
  condition: Schema.optionalWith(Schema.String, { exact: true })
}) {
  override get message(): string {
    return `The transaction coordinator is unavailable: ${this.reason}.`
  }
}

/** Every failure of a coordinator operation. */
export type CoordinatorError =
  | TransactionUnknownId
  | TransactionRolledBack
  | TransactionTimedOut
  | TransactionRejected
  | CoordinatorTimeout
  | CoordinatorUnavailable

/** A transaction coordinator link on one session. */
export interface Coordinator {
  readonly sender: Sender
  /** Declares a local transaction and returns its id. */
  readonly declare: Effect.Effect<Buffer, CoordinatorError>
  /** Commits (`fail = false`) or rolls back (`fail = true`) a transaction. */
  readonly discharge: (txnId: Uint8Array, fail: boolean) => Effect.Effect<void, CoordinatorError>
  /**
   * Writes one control message (an encoded `declare` or `discharge`) and calls `onAnswer` once
   * with the coordinator's answer, or with `CoordinatorUnavailable` when the link closes first.
   * Returns a function that stops listening. No timeout: callers that need one set it. Read the
   * answer with {@link declareResult} or {@link dischargeResult}.
   */
  readonly request: (
    payload: Buffer,
    onAnswer: (answer: Either.Either<DeliveryState, CoordinatorUnavailable>) => void
  ) => () => void
}

/** What a declare's answer means: the new transaction's id, or why there is none. */
export const declareResult = (state: DeliveryState): Either.Either<Buffer, CoordinatorError> => {
  if (state._tag === "Declared") return Either.right(state.txnId)
  const rejected = rejection(state)
  if (rejected !== undefined) {
    return Either.left(
      new TransactionRejected({
        operation: "declare",
        ...optional("condition", rejected.condition),
        ...optional("description", rejected.description)
      })
    )
  }
  return Either.left(
    new CoordinatorUnavailable({ reason: `the coordinator answered a declare with ${describeState(state)}` })
  )
}

/** What a discharge's answer means. */
export const dischargeResult = (txnId: Uint8Array, state: DeliveryState): Either.Either<void, CoordinatorError> => {
  if (state._tag === "Accepted") return Either.void
  const rejected = rejection(state)
  const txn = txnHex(txnId)
  if (rejected !== undefined) {
    const fields = { txnId: txn, ...optional("description", rejected.description) }
    switch (rejected.condition) {
      case TransactionErrorCondition.unknownId:
        return Either.left(new TransactionUnknownId(fields))
      case TransactionErrorCondition.rollback:
        return Either.left(new TransactionRolledBack(fields))
      case TransactionErrorCondition.timeout:
        return Either.left(new TransactionTimedOut(fields))
      default:
        return Either.left(
          new TransactionRejected({
            operation: "discharge",
            ...optional("condition", rejected.condition),
            ...optional("description", rejected.description)
          })
        )
    }
  }
  return Either.left(
    new CoordinatorUnavailable({ reason: `the coordinator answered a discharge with ${describeState(state)}` })
  )
}

/** Options of {@link make}. */
export interface CoordinatorOptions {
  /** How long to wait for each answer of the coordinator; default 30 seconds. */
  readonly timeout?: Duration.DurationInput
  readonly name?: string
  readonly capabilities?: ReadonlyArray<TxnCapabilityName>
}

const linkEvents = ["sender_close", "sender_error"] as const
const outcomeEvents = [TransactionEvents.declared, "accepted", "rejected", "released", "modified", "settled"] as const

// Listens for the coordinator's answer to one control delivery; returns the cleanup.
const listenOutcome = (
  sender: Sender,
  delivery: Delivery,
  onAnswer: (answer: Either.Either<DeliveryState, CoordinatorUnavailable>) => void
): () => void => {
  let done = false
  const onOutcome = (context: EventContext) => {
    if (context.delivery !== delivery) return
    if (delivery.remote_state === undefined || delivery.remote_state === null) {
      // Settled without a state: there is nothing to read, which a coordinator never does.
      if (delivery.remote_settled) finish(Either.left("the coordinator settled a control message without an outcome"))
      return
    }
    const state = decodeDeliveryState(delivery.remote_state)
    finish(Either.isLeft(state) ? Either.left(`unreadable outcome: ${state.left.reason}`) : Either.right(state.right))
  }
  const onClose = (context: EventContext) => {
    const error = context.sender?.error as { description?: string; condition?: string } | undefined
    finish(Either.left(`the coordinator link closed${error ? ` (${error.condition}: ${error.description})` : ""}`))
  }
  const finish = (result: Either.Either<DeliveryState, string>) => {
    if (done) return
    cleanup()
    onAnswer(Either.mapLeft(result, (reason) => new CoordinatorUnavailable({ reason })))
  }
  const cleanup = () => {
    done = true
    for (const e of outcomeEvents) sender.removeListener(e, onOutcome)
    for (const e of linkEvents) sender.removeListener(e, onClose)
  }
  for (const e of outcomeEvents) sender.on(e, onOutcome)
  for (const e of linkEvents) sender.on(e, onClose)
  return cleanup
}

const rejection = (state: DeliveryState) =>
  state._tag === "Rejected" ? { condition: state.error?.condition, description: state.error?.description } : undefined

const optional = <K extends string>(key: K, value: string | undefined): { [P in K]?: string } =>
  (value === undefined ? {} : { [key]: value }) as { [P in K]?: string }

/**
 * Attaches a coordinator link on `session` (installing rhea's transaction support first) and
 * closes it when the scope ends, which rolls back undischarged transactions.
 */
export const make = (
  session: Session,
  options: CoordinatorOptions = {}
): Effect.Effect<Coordinator, CoordinatorError | TransactionSupportError, Scope.Scope> =>
  Effect.gen(function*() {
    const timeout = Duration.decode(options.timeout ?? Duration.seconds(30))
    const millis = Duration.toMillis(timeout)
    yield* installTransactionSupport()
    const sender = yield* Effect.acquireRelease(
      attachCoordinator(session, {
        ...(options.name === undefined ? {} : { name: options.name }),
        ...(options.capabilities === undefined ? {} : { capabilities: options.capabilities })
      }),
      (sender) => Effect.sync(() => sender.close())
    )
    // A refused link is answered with a null target (as decoded here: a typed value holding
    // null), then detached with the reason.
    const accepted = () => {
      const target = (sender as unknown as { remote?: { attach?: { target?: unknown } } }).remote?.attach?.target
      if (target == null) return false
      return !(typeof target === "object" && "value" in target && target.value == null)
    }
    yield* Effect.async<void, CoordinatorUnavailable>((resume) => {
      const onOpen = () => {
        if (accepted()) done(undefined)
      }
      const onClose = (context: EventContext) => {
        const error = context.sender?.error as { description?: string; condition?: string } | undefined
        done(
          new CoordinatorUnavailable({
            reason: `the coordinator refused the link${error ? ` (${error.condition}: ${error.description})` : ""}`,
            ...(error?.condition === undefined ? {} : { condition: error.condition })
          })
        )
      }
      const done = (refused: CoordinatorUnavailable | undefined) => {
        cleanup()
        resume(refused === undefined ? Effect.void : Effect.fail(refused))
      }
      const cleanup = () => {
        sender.removeListener("sender_open", onOpen)
        for (const e of linkEvents) sender.removeListener(e, onClose)
      }
      if (sender.is_remote_open() && accepted()) return resume(Effect.void)
      sender.on("sender_open", onOpen)
      for (const e of linkEvents) sender.on(e, onClose)
      return Effect.sync(cleanup)
    }).pipe(
      Effect.timeoutFail({
        duration: timeout,
        onTimeout: () => new CoordinatorTimeout({ operation: "attach", millis })
      })
    )

    // Each pending operation listens on the link; many may run at once.
    sender.setMaxListeners(0)
    let tag = 0
    // Control messages are never pre-settled; they are sent as bytes because rhea's message
    // encoder cannot write a described value inside an amqp-value body.
    const request = (
      payload: Buffer,
      onAnswer: (answer: Either.Either<DeliveryState, CoordinatorUnavailable>) => void
    ): () => void => {
      // A link the coordinator detached is not closed locally until rhea's next tick.
      if (sender.is_closed() || !sender.is_remote_open()) {
        onAnswer(Either.left(new CoordinatorUnavailable({ reason: "the coordinator link is closed" })))
        return () => undefined
      }
      const delivery = sender.send(payload, Buffer.from(`txn-${tag++}`), 0)
      return listenOutcome(sender, delivery, onAnswer)
    }

    // One callback wait with its own timer: no fiber per control message.
    const control = <A>(
      payload: Buffer,
      operation: "declare" | "discharge",
      read: (state: DeliveryState) => Either.Either<A, CoordinatorError>
    ): Effect.Effect<A, CoordinatorError> =>
      awaitCallback<A, CoordinatorError, CoordinatorTimeout>(
        (finish) => request(payload, (answer) => finish(Either.flatMap(answer, read))),
        { timeout, onTimeout: () => new CoordinatorTimeout({ operation, millis }) }
      )

    const declare: Effect.Effect<Buffer, CoordinatorError> = Effect.suspend(() =>
      control(encodeDeclare(), "declare", declareResult)
    ).pipe(Effect.withSpan("AmqpCoordinator.declare"))

    const discharge = (txnId: Uint8Array, fail: boolean): Effect.Effect<void, CoordinatorError> =>
      Effect.suspend(() => control(encodeDischarge(txnId, fail), "discharge", (state) => dischargeResult(txnId, state)))
        .pipe(Effect.withSpan("AmqpCoordinator.discharge", { attributes: { txnId: txnHex(txnId), fail } }))

    return { sender, declare, discharge, request }
  })

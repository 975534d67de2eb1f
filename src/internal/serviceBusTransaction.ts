// The transactional session and `run`. Links are raw rhea links on one session (the transaction
// extension hooks that session's frames): coordinator first, then the receiver on the via entity,
// then senders. Enlisted operations are buffered and written together at `flush`, so a
// transaction that would exceed the limit fails before any of its work is on the wire, and the
// operations are pipelined instead of paid for one round trip at a time.
import { Cause, Chunk, Duration, Effect, Either, Exit, Option, Queue, Scope } from "effect"
import type { Delivery, EventContext, Message as RheaMessage, Receiver, Sender } from "rhea"
import rhea from "rhea"
import type { OutgoingMessage, Properties, ReceivedMessage } from "../Message.js"
import type { Settlement } from "../MessageReceiver.js"
import type { ServiceError, SettleError } from "../ServiceBusError.js"
import {
  AlreadySettled,
  ConnectionLost,
  MessageLockLost,
  OperationTimeout,
  ServiceBusFailure,
  ServiceBusUnavailable
} from "../ServiceBusError.js"
import type * as Api from "../ServiceBusTransaction.js"
import {
  maxOperations,
  TransactionFailed,
  TransactionsUnsupported,
  TransactionTimeout,
  TransactionTooLarge
} from "../ServiceBusTransaction.js"
import * as Coordinator from "./amqp/coordinator.js"
import { sendTransactional, TransactionEvents, verifyTransactionSupport } from "./amqp/transactionalTransfer.js"
import {
  accepted,
  Amqp,
  type AmqpValue,
  decodeDeliveryState,
  type DeliveryState,
  deliveryState,
  describeState,
  modified,
  type Outcome,
  rejected,
  transactionalState,
  TransactionErrorCondition
} from "./amqp/transactionCodec.js"
import * as AmqpConnection from "./amqpConnection.js"
import { decodeBodyBytes, encodeAll, type Encoded, jsonContentType, splitProperties } from "./messageCodec.js"
import { entityPath as pathOf } from "./messageReceiver.js"
import { sendError, settleError } from "./serviceBusErrors.js"

const defaultOperationTimeout = Duration.seconds(30)

// ---------------------------------------------------------------------------------------------
// The one-time self-check

let verified = false
const ensureTransactionSupport: Effect.Effect<void, TransactionsUnsupported> = Effect.suspend(() =>
  verified ? Effect.void : verifyTransactionSupport().pipe(
    Effect.tap(() =>
      Effect.sync(() => {
        verified = true
      })
    ),
    Effect.mapError((error) => new TransactionsUnsupported({ reason: error.message }))
  )
)

// ---------------------------------------------------------------------------------------------
// Messages

/** The lock token as the SDK shows it: the delivery tag as a GUID in .NET byte order. */
export const lockTokenOf = (tag: Buffer): string => {
  const b = tag.length === 16 ? tag : Buffer.concat([tag, Buffer.alloc(16)]).subarray(0, 16)
  const order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15]
  const hex = Buffer.from(order.map((i) => b[i])).toString("hex")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

const toAmqpMessage = (encoded: Encoded): RheaMessage => {
  const { message } = encoded
  const annotations: Record<string, unknown> = {}
  const amqp: RheaMessage = {
    body: rhea.message.data_section(encoded.body),
    content_type: jsonContentType,
    message_id: message.messageId
  }
  if (message.subject !== undefined) amqp.subject = message.subject
  if (message.correlationId !== undefined) amqp.correlation_id = message.correlationId
  if (message.sessionId !== undefined) amqp.group_id = message.sessionId
  if (message.timeToLive !== undefined) amqp.ttl = Duration.toMillis(message.timeToLive)
  if (message.partitionKey !== undefined) annotations["x-opt-partition-key"] = message.partitionKey
  if (message.scheduledEnqueueTime !== undefined) {
    annotations["x-opt-scheduled-enqueue-time"] = message.scheduledEnqueueTime
  }
  if (Object.keys(annotations).length > 0) amqp.message_annotations = annotations
  if (Object.keys(encoded.applicationProperties).length > 0) {
    amqp.application_properties = encoded.applicationProperties
  }
  return amqp
}

const bodyOf = (body: unknown): unknown => {
  if (Buffer.isBuffer(body)) return decodeBodyBytes(body)
  if (typeof body === "object" && body !== null && "typecode" in body && "content" in body) {
    const section = body as { typecode: number; content: unknown }
    // 0x75: a data section; 0x77: an amqp-value; 0x76: an amqp-sequence.
    if (section.typecode === 0x75 && Buffer.isBuffer(section.content)) return decodeBodyBytes(section.content)
    return section.content
  }
  return body
}

const asDate = (u: unknown): Date | undefined => u instanceof Date ? u : typeof u === "number" ? new Date(u) : undefined

const asBigInt = (u: unknown): bigint => {
  if (typeof u === "bigint") return u
  if (typeof u === "number") return BigInt(u)
  if (Buffer.isBuffer(u) && u.length === 8) return u.readBigInt64BE()
  return 0n
}

const toReceived = (entity: string, message: RheaMessage, delivery: Delivery): ReceivedMessage => {
  const annotations = (message.message_annotations ?? {}) as Record<string, unknown>
  const { causationId, properties, traceparent } = splitProperties(
    message.application_properties as Record<string, unknown> | undefined
  )
  const received: { -readonly [K in keyof ReceivedMessage]: ReceivedMessage[K] } = {
    entity,
    body: bodyOf(message.body),
    sequenceNumber: asBigInt(annotations["x-opt-sequence-number"]),
    deliveryCount: (typeof message.delivery_count === "number" ? message.delivery_count : 0) + 1,
    enqueuedTime: asDate(annotations["x-opt-enqueued-time"]) ?? new Date(0),
    lockToken: lockTokenOf(Buffer.from(delivery.tag)),
    state: "active"
  }
  if (message.message_id !== undefined) received.messageId = String(message.message_id)
  if (typeof message.subject === "string") received.subject = message.subject
  if (message.correlation_id !== undefined) received.correlationId = String(message.correlation_id)
  if (typeof message.group_id === "string") received.sessionId = message.group_id
  if (typeof annotations["x-opt-partition-key"] === "string") {
    received.partitionKey = annotations["x-opt-partition-key"]
  }
  if (causationId !== undefined) received.causationId = causationId
  if (traceparent !== undefined) received.traceparent = traceparent
  if (properties !== undefined) received.applicationProperties = properties
  const lockedUntil = asDate(annotations["x-opt-locked-until"])
  if (lockedUntil !== undefined) received.lockedUntil = lockedUntil
  if (typeof message.ttl === "number" && message.ttl < 0xffffffff) received.timeToLive = Duration.millis(message.ttl)
  return received
}

// ---------------------------------------------------------------------------------------------
// Outcomes

const propertiesMap = (properties: Properties | undefined): ReadonlyArray<readonly [AmqpValue, AmqpValue]> =>
  Object.entries(properties ?? {}).map(([key, value]) =>
    [
      Amqp.string(key),
      typeof value === "string"
        ? Amqp.string(value)
        : typeof value === "boolean"
        ? Amqp.boolean(value)
        : Number.isInteger(value)
        ? { _tag: "Long", value: BigInt(value) }
        : { _tag: "Double", value }
    ] as const
  )

const outcomeOf = (settlement: Settlement): Outcome => {
  const result: Either.Either<Outcome, unknown> = (() => {
    switch (settlement._tag) {
      case "Complete":
        return Either.right(accepted)
      case "Abandon":
        return modified({
          deliveryFailed: false,
          undeliverableHere: false,
          messageAnnotations: propertiesMap(settlement.properties)
        })
      case "Defer":
        return modified({
          deliveryFailed: false,
          undeliverableHere: true,
          messageAnnotations: propertiesMap(settlement.properties)
        })
      case "DeadLetter":
        return rejected({
          condition: "com.microsoft:dead-letter",
          ...(settlement.description === undefined ? {} : { description: settlement.description }),
          info: [
            [Amqp.string("DeadLetterReason"), Amqp.string(settlement.reason)],
            ...(settlement.description === undefined
              ? []
              : [[Amqp.string("DeadLetterErrorDescription"), Amqp.string(settlement.description)] as const]),
            ...propertiesMap(settlement.properties)
          ]
        })
    }
  })()
  // The values above are all encodable; an unencodable property falls back to the bare outcome.
  return Either.getOrElse(result, () => settlement._tag === "Complete" ? accepted : Either.getOrThrow(modified()))
}

const settlementName = (settlement: Settlement): string => {
  switch (settlement._tag) {
    case "Complete":
      return "complete"
    case "Abandon":
      return "abandon"
    case "DeadLetter":
      return "deadLetter"
    case "Defer":
      return "defer"
  }
}

// ---------------------------------------------------------------------------------------------
// Waiting for rhea

const linkClosedError = (link: Sender | Receiver, operation: string, entity: string): ServiceError => {
  const error = link.error as { condition?: string; description?: string } | undefined
  return error === undefined
    ? new ServiceBusUnavailable({ operation, entity, reason: "the link was closed" })
    : AmqpConnection.serviceError(operation, entity)(error)
}

/** Waits until Service Bus answers for `delivery` (a state, or settlement). */
const awaitAnswer = (
  link: Sender | Receiver,
  delivery: Delivery,
  events: ReadonlyArray<string>,
  operation: string,
  entity: string
): Effect.Effect<DeliveryState, ServiceError> =>
  Effect.async<DeliveryState, ServiceError>((resume) => {
    const onEvent = (ctx: EventContext) => {
      if (ctx.delivery !== delivery) return
      if (delivery.remote_state === undefined || delivery.remote_state === null) {
        if (delivery.remote_settled) {
          finish(Effect.fail(new ServiceBusUnavailable({ operation, entity, reason: "settled without an outcome" })))
        }
        return
      }
      const state = decodeDeliveryState(delivery.remote_state)
      finish(
        Either.isLeft(state)
          ? Effect.fail(
            new ServiceBusUnavailable({ operation, entity, reason: `unreadable outcome: ${state.left.reason}` })
          )
          : Effect.succeed(state.right)
      )
    }
    const onClose = () => finish(Effect.fail(linkClosedError(link, operation, entity)))
    const closeEvents = link.is_sender() ? ["sender_close", "sender_error"] : ["receiver_close", "receiver_error"]
    const finish = (result: Effect.Effect<DeliveryState, ServiceError>) => {
      cleanup()
      resume(result)
    }
    const cleanup = () => {
      for (const e of events) link.removeListener(e, onEvent)
      for (const e of closeEvents) link.removeListener(e, onClose)
    }
    for (const e of events) link.on(e, onEvent)
    for (const e of closeEvents) link.on(e, onClose)
    return Effect.sync(cleanup)
  })

const senderEvents = [
  "accepted",
  "rejected",
  "released",
  "modified",
  TransactionEvents.transactionalState,
  "settled"
] as const

/** Waits for a link's attach to be answered; a refusal (null terminus, then detach) fails. */
const awaitAttach = <L extends Sender | Receiver>(link: L, operation: string, entity: string) =>
  Effect.async<L, ServiceError>((resume) => {
    const sender = link.is_sender()
    const openEvent = sender ? "sender_open" : "receiver_open"
    const closeEvents = sender ? ["sender_close", "sender_error"] : ["receiver_close", "receiver_error"]
    const onOpen = () => {
      const remote = (link as unknown as { remote?: { attach?: { source?: unknown; target?: unknown } } }).remote
        ?.attach
      // A refused link is answered with a null terminus and then detached with the reason.
      if (sender ? remote?.target == null : remote?.source == null) return
      cleanup()
      resume(Effect.succeed(link))
    }
    const onClose = () => {
      cleanup()
      resume(Effect.fail(linkClosedError(link, operation, entity)))
    }
    const cleanup = () => {
      link.removeListener(openEvent, onOpen)
      for (const e of closeEvents) link.removeListener(e, onClose)
    }
    link.on(openEvent, onOpen)
    for (const e of closeEvents) link.on(e, onClose)
    return Effect.sync(cleanup)
  })

const awaitSendable = (sender: Sender): Effect.Effect<void> =>
  sender.sendable() ? Effect.void : Effect.async<void>((resume) => {
    const onSendable = () => {
      if (!sender.sendable()) return
      sender.removeListener("sendable", onSendable)
      resume(Effect.void)
    }
    sender.on("sendable", onSendable)
    return Effect.sync(() => sender.removeListener("sendable", onSendable))
  })

// ---------------------------------------------------------------------------------------------
// The session

interface SessionInternals {
  readonly connection: AmqpConnection.AmqpConnection
  readonly entity: string
  readonly coordinator: Coordinator.Coordinator
  readonly receiver: Receiver
  readonly deliveries: Map<string, Delivery>
  readonly sender: (destination: string) => Effect.Effect<Sender, ServiceError>
  readonly guard: <A, E, R>(effect: Effect.Effect<A, E, R>, operation: string) => Effect.Effect<A, E | ServiceError, R>
}

const creditOf = (receiver: Receiver): number => (receiver as unknown as { readonly credit: number }).credit

const internals = new WeakMap<Api.TransactionalSession, SessionInternals>()

export const makeSession = (
  options: Api.SessionOptions
): Effect.Effect<Api.TransactionalSession, ServiceError | TransactionsUnsupported, Scope.Scope> =>
  Effect.gen(function*() {
    yield* ensureTransactionSupport
    const operationTimeout = Duration.decode(options.operationTimeout ?? defaultOperationTimeout)
    const entity = pathOf(options.entity)
    const viaEntity = options.entity._tag === "Queue" ? options.entity.queue : options.entity.topic
    const connection = yield* AmqpConnection.make(options.connection, { operationTimeout })
    const scope = yield* Effect.scope

    // Every wire operation fails fast when the connection drops, and within the timeout.
    const guard = <A, E, R>(
      effect: Effect.Effect<A, E, R>,
      operation: string
    ): Effect.Effect<A, E | ServiceError, R> =>
      Effect.suspend((): Effect.Effect<A, E | ServiceError, R> =>
        connection.isLost()
          ? Effect.fail(new ConnectionLost({ operation, entity, reason: "the connection was lost" }))
          : AmqpConnection.guarded(
            effect,
            connection.lost,
            operationTimeout,
            () =>
              new OperationTimeout({
                operation,
                entity,
                reason: `no answer within ${Duration.format(operationTimeout)}`
              })
          )
      )

    yield* connection.authorize(entity)
    for (const destination of options.destinations ?? []) yield* connection.authorize(destination)

    const session = yield* connection.openSession
    const coordinator = yield* Coordinator.make(session, { timeout: operationTimeout }).pipe(
      Effect.mapError((error): ServiceError | TransactionsUnsupported =>
        error._tag === "TransactionSupportError"
          ? new TransactionsUnsupported({ reason: error.reason })
          : new ServiceBusUnavailable({
            operation: "attach coordinator",
            entity,
            reason: error.message
          })
      ),
      (effect) => guard(effect, "attach coordinator")
    )

    // The receiver is the first entity link: it makes `entity` (its topic, for a subscription)
    // the via entity of the session.
    const queue = yield* Queue.unbounded<ReceivedMessage>()
    const deliveries = new Map<string, Delivery>()
    const receiver = yield* Effect.acquireRelease(
      Effect.suspend(() => {
        const link = session.attach_receiver({
          name: `receiver-${entity}-${crypto.randomUUID()}`,
          source: { address: entity },
          autoaccept: false,
          credit_window: 0,
          rcv_settle_mode: 1,
          snd_settle_mode: 0
        })
        link.setMaxListeners(0)
        link.on("message", (ctx: EventContext) => {
          if (ctx.delivery === undefined || ctx.message === undefined) return
          const received = toReceived(entity, ctx.message, ctx.delivery)
          deliveries.set(received.lockToken!, ctx.delivery)
          Queue.unsafeOffer(queue, received)
        })
        return guard(awaitAttach(link, "attach receiver", entity), "attach receiver")
      }),
      (link) =>
        Effect.sync(() => {
          link.on("receiver_error", () => undefined)
          if (!connection.isLost() && link.is_open()) link.close()
        })
    )

    const senders = new Map<string, Effect.Effect<Sender, ServiceError>>()
    const attachSender = (destination: string) =>
      Effect.gen(function*() {
        yield* connection.authorize(destination)
        return yield* Effect.acquireRelease(
          Effect.suspend(() => {
            const link = session.attach_sender({
              name: `sender-${destination}-${crypto.randomUUID()}`,
              target: { address: destination },
              autosettle: true
            })
            link.setMaxListeners(0)
            return guard(awaitAttach(link, "attach sender", destination), "attach sender")
          }),
          (link) =>
            Effect.sync(() => {
              link.on("sender_error", () => undefined)
              if (!connection.isLost() && link.is_open()) link.close()
            })
        ).pipe(Effect.provideService(Scope.Scope, scope))
      })
    const sender = (destination: string): Effect.Effect<Sender, ServiceError> =>
      Effect.suspend(() => {
        const key = destination.toLowerCase()
        let cached = senders.get(key)
        if (cached === undefined) {
          cached = Effect.runSync(Effect.cached(attachSender(destination)))
          senders.set(key, cached)
        }
        // A failed attach is not remembered: the next send tries again.
        return Effect.tapError(cached, () => Effect.sync(() => senders.delete(key)))
      })
    for (const destination of options.destinations ?? []) yield* sender(destination)

    let wanted = 0
    const receive = (maxMessages: number, receiveOptions: Api.ReceiveOptions = {}) =>
      Effect.gen(function*() {
        const max = Math.max(1, Math.floor(maxMessages))
        const maxWait = Duration.decode(receiveOptions.maxWait ?? Duration.seconds(60))
        const after = Duration.decode(receiveOptions.maxWaitAfterFirst ?? Duration.millis(20))
        // Concurrent receives share the link: grant what all of them still want.
        wanted += max
        const buffered = yield* Queue.size(queue)
        const missing = wanted - buffered - creditOf(receiver)
        if (missing > 0) receiver.add_credit(missing)
        const first = yield* Effect.raceFirst(
          Effect.interruptible(Effect.timeoutOption(Queue.take(queue), maxWait)),
          Effect.interruptible(connection.lost)
        ).pipe(Effect.ensuring(Effect.sync(() => {
          wanted -= max
        })))
        if (Option.isNone(first)) return [] as ReadonlyArray<ReceivedMessage>
        const out: Array<ReceivedMessage> = [first.value]
        while (out.length < max) {
          const more = yield* Queue.takeUpTo(queue, max - out.length)
          out.push(...Chunk.toReadonlyArray(more))
          if (out.length >= max) break
          const next = yield* Queue.take(queue).pipe(Effect.timeoutOption(after))
          if (Option.isNone(next)) break
          out.push(next.value)
        }
        // Credit not used stays granted: messages that arrive later wait, locked, in the session's
        // buffer for the next receive (draining the credit races with concurrent receives).
        return out as ReadonlyArray<ReceivedMessage>
      }).pipe(Effect.withSpan("ServiceBusTransaction.receive", { attributes: { entity, maxMessages } }))

    const settle = (message: ReceivedMessage, settlement: Settlement) =>
      settleDelivery(internalsOf, message, settlement, undefined).pipe(
        Effect.mapError((error): SettleError =>
          error._tag === "TransactionFailed" || error._tag === "TransactionTimeout"
            ? new ServiceBusFailure({ operation: "settle", entity, reason: error.message })
            : error
        ),
        Effect.withSpan("ServiceBusTransaction.settle", {
          attributes: { entity, messageId: message.messageId ?? "", settlement: settlement._tag }
        })
      )

    const api: Api.TransactionalSession = { entity, viaEntity, receive, settle }
    const internalsOf: SessionInternals = {
      connection,
      entity,
      coordinator,
      receiver,
      deliveries,
      sender,
      guard
    }
    internals.set(api, internalsOf)
    return api
  }).pipe(Effect.withSpan("ServiceBusTransaction.makeSession"))

/** Sends a disposition for a received message and waits for Service Bus to settle it. */
const settleDelivery = (
  session: SessionInternals,
  message: ReceivedMessage,
  settlement: Settlement,
  txnId: Uint8Array | undefined
): Effect.Effect<void, SettleError | TransactionFailed | TransactionTimeout> =>
  Effect.suspend(() => {
    const operation = settlementName(settlement)
    const context = { operation, entity: session.entity, messageId: message.messageId, lockToken: message.lockToken }
    const delivery = message.lockToken === undefined ? undefined : session.deliveries.get(message.lockToken)
    if (delivery === undefined) {
      return Effect.fail(
        new MessageLockLost({
          ...context,
          entity: session.entity,
          reason: "the message was not received on this session, or is already settled"
        })
      )
    }
    const outcome = outcomeOf(settlement)
    const answer = awaitAnswer(session.receiver, delivery, ["settled"], operation, session.entity)
    // Once a disposition is written, rhea will not write another for the delivery: after a
    // rollback the message is settled when it is delivered again.
    const write = Effect.sync(() => {
      session.deliveries.delete(message.lockToken!)
      delivery.update(false, txnId === undefined ? deliveryState(outcome) : transactionalState(txnId, outcome))
    })
    return session.guard(Effect.zipRight(write, answer, { concurrent: true }), operation).pipe(
      Effect.flatMap((state) => {
        const result = checkAnswer(state, txnId, session.entity)
        if (result === undefined) return Effect.void
        return Effect.fail(
          result._tag === "Rejected"
            ? settleError({ condition: result.condition, description: result.description }, context)
            : result.error
        )
      })
    )
  })

type AnswerProblem =
  | { readonly _tag: "Rejected"; readonly condition: string | undefined; readonly description: string | undefined }
  | { readonly _tag: "Error"; readonly error: TransactionFailed | TransactionTimeout | ServiceBusUnavailable }

/** Undefined when the answer accepts the operation (in the transaction, when there is one). */
const checkAnswer = (
  state: DeliveryState,
  txnId: Uint8Array | undefined,
  entity: string
): AnswerProblem | undefined => {
  const outcome = state._tag === "TransactionalState" ? state.outcome : state
  if (outcome?._tag === "Accepted") return undefined
  if (outcome?._tag === "Rejected") {
    const condition = outcome.error?.condition
    const description = outcome.error?.description
    const transactionId = txnId === undefined ? "" : Buffer.from(txnId).toString("hex")
    if (condition === TransactionErrorCondition.timeout) {
      return {
        _tag: "Error",
        error: new TransactionTimeout({
          transactionId,
          entity,
          ...(description === undefined ? {} : { reason: description })
        })
      }
    }
    if (condition === TransactionErrorCondition.unknownId || condition === TransactionErrorCondition.rollback) {
      return {
        _tag: "Error",
        error: new TransactionFailed({ transactionId, entity, condition, reason: description ?? "refused" })
      }
    }
    return { _tag: "Rejected", condition, description }
  }
  return {
    _tag: "Error",
    error: new ServiceBusUnavailable({
      operation: "transaction",
      entity,
      reason: `Service Bus answered with ${describeState(state)}`
    })
  }
}

// ---------------------------------------------------------------------------------------------
// Transactions

type Pending =
  | { readonly _tag: "Send"; readonly destination: string; readonly messages: ReadonlyArray<Encoded> }
  | { readonly _tag: "Settle"; readonly message: ReceivedMessage; readonly settlement: Settlement }

const sendOne = (
  session: SessionInternals,
  destination: string,
  encoded: Encoded,
  txnId: Uint8Array
): Effect.Effect<void, Api.TransactionError> =>
  Effect.gen(function*() {
    const sender = yield* session.sender(destination)
    const context = { operation: "send", entity: destination, messageId: encoded.message.messageId }
    yield* session.guard(awaitSendable(sender), "send")
    const state = yield* session.guard(
      Effect.suspend(() => {
        const delivery = sendTransactional(sender, toAmqpMessage(encoded), txnId)
        if (Either.isLeft(delivery)) {
          return Effect.fail(new ServiceBusUnavailable({ ...context, reason: delivery.left.message }))
        }
        return awaitAnswer(sender, delivery.right, senderEvents, "send", destination)
      }),
      "send"
    )
    const problem = checkAnswer(state, txnId, session.entity)
    if (problem === undefined) return
    return yield* Effect.fail(
      problem._tag === "Rejected"
        ? sendError({ condition: problem.condition, description: problem.description }, context)
        : problem.error
    )
  })

const coordinatorError = (
  error: Coordinator.CoordinatorError,
  entity: string,
  operation: "declare" | "discharge"
): TransactionFailed | TransactionTimeout | ServiceError => {
  switch (error._tag) {
    case "TransactionRolledBack":
      return new TransactionFailed({
        transactionId: error.txnId,
        entity,
        condition: TransactionErrorCondition.rollback,
        reason: error.description ?? "the coordinator rolled it back"
      })
    case "TransactionUnknownId":
      return new TransactionFailed({
        transactionId: error.txnId,
        entity,
        condition: TransactionErrorCondition.unknownId,
        reason: error.description ?? "the coordinator does not know it"
      })
    case "TransactionTimedOut":
      return new TransactionTimeout({
        transactionId: error.txnId,
        entity,
        ...(error.description === undefined ? {} : { reason: error.description })
      })
    case "TransactionRejected":
      return new TransactionFailed({
        transactionId: "",
        entity,
        ...(error.condition === undefined ? {} : { condition: error.condition }),
        reason: error.description ?? `the coordinator refused the ${error.operation}`
      })
    case "CoordinatorTimeout":
      return new OperationTimeout({
        operation,
        entity,
        reason: operation === "discharge"
          ? "the coordinator did not answer the discharge in time; the outcome is unknown"
          : error.message
      })
    case "CoordinatorUnavailable":
      return new ServiceBusUnavailable({ operation, entity, reason: error.reason })
  }
}

export const run = <A, E, R>(
  api: Api.TransactionalSession,
  body: (transaction: Api.Transaction) => Effect.Effect<A, E, R>
): Effect.Effect<A, E | Api.TransactionError, R> => {
  const session = internals.get(api)
  if (session === undefined) {
    return Effect.dieMessage("ServiceBusTransaction.run needs a session made by ServiceBusTransaction.makeSession")
  }
  const entity = session.entity
  return Effect.uninterruptibleMask((restore) =>
    Effect.gen(function*() {
      const txnId = yield* restore(
        session.guard(
          session.coordinator.declare.pipe(Effect.mapError((e) => coordinatorError(e, entity, "declare"))),
          "declare"
        )
      )
      const transactionId = txnId.toString("hex")
      yield* Effect.annotateCurrentSpan("transactionId", transactionId)
      let pending: Array<Pending> = []
      let operations = 0
      const settled = new Map<string, string>()

      const enlist = (count: number, item: Pending): Effect.Effect<void, TransactionTooLarge> =>
        Effect.suspend(() => {
          if (operations + count > maxOperations) {
            return Effect.fail(new TransactionTooLarge({ operations: operations + count, limit: maxOperations }))
          }
          operations += count
          pending.push(item)
          return Effect.void
        })

      const settle = (message: ReceivedMessage, settlement: Settlement): Effect.Effect<void, Api.TransactionError> =>
        Effect.suspend((): Effect.Effect<void, Api.TransactionError> => {
          const token = message.lockToken
          if (token === undefined || !session.deliveries.has(token)) {
            return Effect.fail(
              new MessageLockLost({
                operation: settlementName(settlement),
                entity,
                messageId: message.messageId,
                lockToken: token,
                reason: "the message was not received on this session, or is already settled"
              })
            )
          }
          const previous = settled.get(token)
          if (previous !== undefined) {
            return Effect.fail(
              new AlreadySettled({
                entity,
                messageId: message.messageId,
                settlement: previous,
                attempted: settlementName(settlement)
              })
            )
          }
          return Effect.tap(
            enlist(1, { _tag: "Settle", message, settlement }),
            () => Effect.sync(() => settled.set(token, settlementName(settlement)))
          )
        })

      const send = (
        destination: string,
        messages: OutgoingMessage | ReadonlyArray<OutgoingMessage>
      ): Effect.Effect<void, Api.TransactionError> => {
        const list: ReadonlyArray<OutgoingMessage> = Array.isArray(messages)
          ? messages
          : [messages as OutgoingMessage]
        return Effect.flatMap(encodeAll(destination, list), (encoded) =>
          encoded.length === 0 ? Effect.void : enlist(encoded.length, { _tag: "Send", destination, messages: encoded }))
      }

      const flush: Effect.Effect<void, Api.TransactionError> = Effect.suspend(() => {
        const batch = pending
        pending = []
        const work: Array<Effect.Effect<void, Api.TransactionError>> = []
        for (const item of batch) {
          if (item._tag === "Settle") {
            work.push(settleDelivery(session, item.message, item.settlement, txnId))
          } else {for (const encoded of item.messages) {
              work.push(sendOne(session, item.destination, encoded, txnId))
            }}
        }
        return Effect.all(work, { concurrency: "unbounded", discard: true })
      }).pipe(Effect.withSpan("ServiceBusTransaction.flush", { attributes: { entity, transactionId } }))

      const transaction: Api.Transaction = {
        id: transactionId,
        operations: () =>
          operations,
        complete: (message) =>
          settle(message, { _tag: "Complete" }),
        abandon: (message, properties) =>
          settle(message, properties === undefined ? { _tag: "Abandon" } : { _tag: "Abandon", properties }),
        deadLetter: (message, o) => settle(message, { _tag: "DeadLetter", ...o }),
        defer: (message, properties) =>
          settle(message, properties === undefined ? { _tag: "Defer" } : { _tag: "Defer", properties }),
        settle,
        send,
        flush
      }

      const exit = yield* Effect.exit(restore(Effect.tap(body(transaction), () => flush)))
      if (Exit.isSuccess(exit)) {
        // Once the commit is on the wire its outcome is the transaction's: not interruptible.
        yield* session.guard(
          session.coordinator.discharge(txnId, false).pipe(
            Effect.mapError((e) => coordinatorError(e, entity, "discharge"))
          ),
          "commit"
        )
        return exit.value
      }
      if (!session.connection.isLost()) {
        yield* session.guard(session.coordinator.discharge(txnId, true), "rollback").pipe(
          Effect.catchAllCause((cause) =>
            Effect.logDebug("Service Bus transaction rollback was not confirmed", Cause.squash(cause))
          )
        )
      }
      return yield* exit
    })
  ).pipe(Effect.withSpan("Transaction.run", { attributes: { entity } }))
}

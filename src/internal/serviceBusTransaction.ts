// The transactional session and `run`. Links are raw rhea links on one session (the transaction
// extension hooks that session's frames): coordinator first, then the receiver on the via entity,
// then senders. Enlisted operations are buffered and written together at `flush`, so a
// transaction that would exceed the limit fails before any of its work is on the wire, and the
// operations are pipelined instead of paid for one round trip at a time. Every wire operation
// is a callback wait (`awaitCallback`) with its own timer and connection-lost listener, so many
// transactions can be in flight on the session without a fiber per operation.
import { Cause, Duration, Effect, Either, Exit, Scope } from "effect"
import type { Delivery, EventContext, Message as RheaMessage, Receiver, Sender } from "rhea"
import type { OutgoingMessage, Properties, ReceivedMessage } from "../Message.js"
import type { Settlement } from "../MessageReceiver.js"
import type { SendError, ServiceError, SettleError } from "../ServiceBusError.js"
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
import { awaitCallback, type Start } from "./amqp/callbackWait.js"
import * as Coordinator from "./amqp/coordinator.js"
import * as Management from "./amqp/management.js"
import {
  enableTransactionalTransfers,
  sendTransactional,
  TransactionEvents,
  verifyTransactionSupport
} from "./amqp/transactionalTransfer.js"
import {
  accepted,
  Amqp,
  type AmqpValue,
  decodeDeliveryState,
  type DeliveryState,
  deliveryState,
  describeState,
  encodeDeclare,
  encodeDischarge,
  modified,
  type Outcome,
  rejected,
  transactionalState,
  TransactionErrorCondition
} from "./amqp/transactionCodec.js"
import * as AmqpConnection from "./amqpConnection.js"
import { decodeBodyBytes, encodeAll, type Encoded, splitProperties, toRheaMessage } from "./messageCodec.js"
import { entityPath as pathOf } from "./messageReceiver.js"
import { sendError, settleError } from "./serviceBusErrors.js"
import { annotateSpan, withSpanIfTracing } from "./tracing.js"

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

// Operations waiting for an answer, by link and delivery. Each link gets one listener per event,
// whatever the number of operations in flight on it.
interface Waiter {
  readonly operation: string
  readonly entity: string
  readonly onAnswer: (answer: Either.Either<DeliveryState, ServiceError>) => void
}
const waitersByLink = new WeakMap<Sender | Receiver, Map<Delivery, Waiter>>()

const waitersOf = (link: Sender | Receiver, events: ReadonlyArray<string>): Map<Delivery, Waiter> => {
  let waiters = waitersByLink.get(link)
  if (waiters !== undefined) return waiters
  const map = new Map<Delivery, Waiter>()
  waiters = map
  waitersByLink.set(link, map)
  const onEvent = (ctx: EventContext) => {
    const delivery = ctx.delivery
    if (delivery === undefined) return
    const waiter = map.get(delivery)
    if (waiter === undefined) return
    const { entity, operation } = waiter
    if (delivery.remote_state === undefined || delivery.remote_state === null) {
      if (delivery.remote_settled) {
        answer(
          delivery,
          Either.left(new ServiceBusUnavailable({ operation, entity, reason: "settled without an outcome" }))
        )
      }
      return
    }
    const state = decodeDeliveryState(delivery.remote_state)
    answer(
      delivery,
      Either.isLeft(state)
        ? Either.left(
          new ServiceBusUnavailable({ operation, entity, reason: `unreadable outcome: ${state.left.reason}` })
        )
        : Either.right(state.right)
    )
  }
  const answer = (delivery: Delivery, result: Either.Either<DeliveryState, ServiceError>) => {
    const waiter = map.get(delivery)
    if (waiter === undefined) return
    map.delete(delivery)
    waiter.onAnswer(result)
  }
  const onClose = () => {
    const all = [...map]
    map.clear()
    for (const [, waiter] of all) waiter.onAnswer(Either.left(linkClosedError(link, waiter.operation, waiter.entity)))
  }
  for (const e of events) link.on(e, onEvent)
  for (const e of link.is_sender() ? ["sender_close", "sender_error"] : ["receiver_close", "receiver_error"]) {
    link.on(e, onClose)
  }
  return waiters
}

/**
 * Listens until Service Bus answers for `delivery` (a state, or settlement) on `link`, or the
 * link closes, and calls `onAnswer` once; returns a function that stops listening. `events` are
 * the link's events that carry answers (the same for every call on one link).
 */
const listenAnswer = (
  link: Sender | Receiver,
  delivery: Delivery,
  events: ReadonlyArray<string>,
  operation: string,
  entity: string,
  onAnswer: (answer: Either.Either<DeliveryState, ServiceError>) => void
): () => void => {
  const waiters = waitersOf(link, events)
  const waiter: Waiter = { operation, entity, onAnswer }
  waiters.set(delivery, waiter)
  return () => {
    if (waiters.get(delivery) === waiter) waiters.delete(delivery)
  }
}

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

/** Calls `f` once `sender` has credit (at once when it has); returns a function that stops waiting. */
const whenSendable = (sender: Sender, f: () => void): () => void => {
  if (sender.sendable()) {
    f()
    return () => undefined
  }
  const onSendable = () => {
    if (!sender.sendable()) return
    sender.removeListener("sendable", onSendable)
    f()
  }
  sender.on("sendable", onSendable)
  return () => sender.removeListener("sendable", onSendable)
}

// ---------------------------------------------------------------------------------------------
// The session

interface SessionInternals {
  readonly connection: AmqpConnection.AmqpConnection
  readonly entity: string
  /** Undefined on a session opened without transactions (`makePlainSession`). */
  readonly coordinator: Coordinator.Coordinator | undefined
  readonly receiver: Receiver
  readonly deliveries: Map<string, Delivery>
  readonly sender: (destination: string) => Effect.Effect<Sender, ServiceError>
  readonly guard: <A, E, R>(effect: Effect.Effect<A, E, R>, operation: string) => Effect.Effect<A, E | ServiceError, R>
  /**
   * Runs one wire operation written as callbacks (see `awaitCallback`): fails with
   * `ConnectionLost` when the connection drops and with `OperationTimeout` after the session's
   * operation timeout (`timeoutReason` for its reason, when given).
   */
  readonly wire: <A, E>(
    start: Start<A, E>,
    operation: () => string,
    timeoutReason?: string
  ) => Effect.Effect<A, E | ServiceError>
  /** Starts getting a declared transaction: the one declared ahead when there is one. */
  readonly declare: Start<Buffer, Coordinator.CoordinatorError>
  /** Declares the next transaction ahead if one was taken; called just before a write. */
  readonly prepareNext: () => void
  /** Takes a transaction declared ahead when one is ready, without waiting. */
  readonly takeReady: () => Buffer | undefined
  /** Counts a transaction taken with `declare` or `takeReady` as ended. */
  readonly release: () => void
  /** The sender to a destination when it is attached and open. */
  readonly readySender: (destination: string) => Sender | undefined
  /** The entity's `$management` links on this session, attached on first use. */
  readonly management: Effect.Effect<Management.ManagementChannel, ServiceError>
}

const creditOf = (receiver: Receiver): number => (receiver as unknown as { readonly credit: number }).credit

/** A transaction declared ahead is used only this long after its declare; older ones are rolled back. */
const spareMaxAgeMillis = 60_000

/** The most transactions a session declares ahead. */
const maxSpares = 16

const internals = new WeakMap<Api.TransactionalSession, SessionInternals>()

export const makeSession = (
  options: Api.SessionOptions
): Effect.Effect<Api.TransactionalSession, ServiceError | TransactionsUnsupported, Scope.Scope> => open(options, true)

/**
 * A session without a coordinator, for a namespace without transactions (the Basic tier): it
 * receives, settles, renews locks and sends (`sendThenSettle`), each on its own; `run` refuses it.
 */
export const makePlainSession = (
  options: Api.SessionOptions
): Effect.Effect<Api.TransactionalSession, ServiceError | TransactionsUnsupported, Scope.Scope> => open(options, false)

const open = (
  options: Api.SessionOptions,
  transactions: boolean
): Effect.Effect<Api.TransactionalSession, ServiceError | TransactionsUnsupported, Scope.Scope> =>
  Effect.gen(function*() {
    // A plain session needs only its disposition hook, checked when it is installed below.
    if (transactions) yield* ensureTransactionSupport
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

    const wire = <A, E>(
      start: Start<A, E>,
      operation: () => string,
      timeoutReason?: string
    ): Effect.Effect<A, E | ServiceError> =>
      awaitCallback<A, E, ServiceError, ServiceError>(start, {
        timeout: operationTimeout,
        onTimeout: () =>
          new OperationTimeout({
            operation: operation(),
            entity,
            reason: timeoutReason ?? `no answer within ${Duration.format(operationTimeout)}`
          }),
        onLost: connection.onLost
      })

    yield* connection.authorize(entity)
    for (const destination of options.destinations ?? []) yield* connection.authorize(destination)

    const session = yield* connection.openSession
    const coordinator = transactions
      ? yield* Coordinator.make(session, { timeout: operationTimeout }).pipe(
        Effect.mapError((error): ServiceError | TransactionsUnsupported =>
          error._tag === "TransactionSupportError"
            ? new TransactionsUnsupported({ reason: error.reason })
            // A namespace without transactions may refuse the coordinator itself.
            : error._tag === "CoordinatorUnavailable" && refusesTransactions(error.condition)
            ? new TransactionsUnsupported({ reason: error.reason })
            : new ServiceBusUnavailable({
              operation: "attach coordinator",
              entity,
              reason: error.message
            })
        ),
        (effect) => guard(effect, "attach coordinator")
      )
      : undefined
    // Without a coordinator, the session still gets the hook that writes one disposition frame
    // per delivery when rhea would merge different states into one range.
    if (coordinator === undefined) {
      const hooked = enableTransactionalTransfers(session)
      if (Either.isLeft(hooked)) return yield* new TransactionsUnsupported({ reason: hooked.left.reason })
    }

    // The receiver is the first entity link: it makes `entity` (its topic, for a subscription)
    // the via entity of the session.
    // Messages received and not yet handed out, and the receive calls waiting for them (first
    // come, first served).
    const buffered: Array<ReceivedMessage> = []
    const waiting = new Set<(message: ReceivedMessage) => void>()
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
          const [waiter] = waiting
          if (waiter === undefined) buffered.push(received)
          else waiter(received)
        })
        return guard(awaitAttach(link, "attach receiver", entity), "attach receiver")
      }),
      (link) =>
        Effect.sync(() => {
          link.on("receiver_error", () => undefined)
          if (!connection.isLost() && link.is_open()) link.close()
        })
    )

    // A link Service Bus detaches while the connection stays (an idle link, an entity updated)
    // is not used again: the receiver's loss fails the next receive as a lost connection, so
    // that the session is replaced; a sender is attached again on the next send.
    let receiverDetached = false
    receiver.on("receiver_close", () => {
      receiverDetached = true
    })
    receiver.on("receiver_error", () => {
      receiverDetached = true
    })

    const senders = new Map<string, Effect.Effect<Sender, ServiceError>>()
    // Senders once attached, for the hot path to find without running an effect.
    const readySenders = new Map<string, Sender>()
    const forgetSender = (key: string, link: Sender) => () => {
      if (readySenders.get(key) !== link) return
      readySenders.delete(key)
      senders.delete(key)
    }
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
        return Effect.tapBoth(cached, {
          onFailure: () => Effect.sync(() => senders.delete(key)),
          onSuccess: (link) =>
            Effect.sync(() => {
              if (readySenders.get(key) === link) return
              readySenders.set(key, link)
              const forget = forgetSender(key, link)
              link.once("sender_close", forget)
              link.once("sender_error", forget)
              // Closed before this ran: forgotten at once.
              if (!link.is_open()) forget()
            })
        })
      })
    const readySender = (destination: string): Sender | undefined => {
      const link = readySenders.get(destination.toLowerCase())
      return link !== undefined && link.is_open() ? link : undefined
    }
    for (const destination of options.destinations ?? []) yield* sender(destination)

    // The entity's `$management` node, for lock renewal and for settling by lock token messages
    // whose delivery is no longer open on the receive link (after a rollback).
    const managementPath = `${entity}/$management`
    const attachManagement = Effect.gen(function*() {
      yield* connection.authorize(managementPath)
      const replyTo = `management-${entity}-${crypto.randomUUID()}`
      const attachLink = <L extends Sender | Receiver>(make: () => L, operation: string) =>
        Effect.acquireRelease(
          Effect.suspend(() => {
            const link = make()
            link.setMaxListeners(0)
            return guard(awaitAttach(link, operation, managementPath), operation)
          }),
          (link) =>
            Effect.sync(() => {
              link.on(link.is_sender() ? "sender_error" : "receiver_error", () => undefined)
              if (!connection.isLost() && link.is_open()) link.close()
            })
        ).pipe(Effect.provideService(Scope.Scope, scope))
      const replies = yield* attachLink(() =>
        session.attach_receiver({
          name: replyTo,
          source: { address: managementPath },
          target: { address: replyTo },
          autoaccept: true
        }), "attach management")
      const requests = yield* attachLink(() =>
        session.attach_sender({
          name: `management-sender-${crypto.randomUUID()}`,
          target: { address: managementPath },
          autosettle: true
        }), "attach management")
      return Management.make({ sender: requests, receiver: replies, replyTo, associatedLinkName: receiver.name })
    })
    let managementCache: Effect.Effect<Management.ManagementChannel, ServiceError> | undefined
    const management: Effect.Effect<Management.ManagementChannel, ServiceError> = Effect.suspend(() => {
      if (managementCache === undefined) managementCache = Effect.runSync(Effect.cached(attachManagement))
      // A failed attach is not remembered: the next use tries again.
      return Effect.tapError(managementCache, () =>
        Effect.sync(() => {
          managementCache = undefined
        }))
    })

    let wanted = 0
    const receive = (maxMessages: number, receiveOptions: Api.ReceiveOptions = {}) =>
      Effect.suspend(() => {
        const max = Math.max(1, Math.floor(maxMessages))
        const maxWait = Duration.toMillis(Duration.decode(receiveOptions.maxWait ?? Duration.seconds(60)))
        const after = Duration.toMillis(Duration.decode(receiveOptions.maxWaitAfterFirst ?? Duration.millis(20)))
        // Messages of a lost connection can no longer be settled: fail as any later operation does.
        if (connection.isLost()) return connection.lost
        if (receiverDetached) {
          return Effect.fail(
            new ConnectionLost({ operation: "receive", entity, reason: "Service Bus detached the receive link" })
          )
        }
        const out = buffered.splice(0, max)
        if (out.length >= max || (out.length > 0 && after <= 0)) {
          return Effect.succeed(out as ReadonlyArray<ReceivedMessage>)
        }
        return Effect.async<ReadonlyArray<ReceivedMessage>, ConnectionLost>((resume) => {
          // Concurrent receives share the link: grant what all of them still want.
          let done = false
          let timer: ReturnType<typeof setTimeout> | undefined
          let stopLost: (() => void) | undefined = undefined
          const end = () => {
            done = true
            wanted -= max
            waiting.delete(take)
            stopLost?.()
            if (timer !== undefined) clearTimeout(timer)
          }
          const finish = () => {
            if (done) return
            end()
            resume(Effect.succeed(out))
          }
          const wait = (millis: number) => {
            if (timer !== undefined) clearTimeout(timer)
            // setTimeout fires at once for delays it cannot hold: those waits are "forever".
            timer = millis <= 2_147_483_647 ? setTimeout(finish, millis) : undefined
          }
          const take = (message: ReceivedMessage) => {
            out.push(message)
            if (out.length >= max || after <= 0) finish()
            else if (out.length === 1) wait(after)
          }
          wanted += max
          stopLost = connection.onLost((error) => {
            if (done) return
            if (out.length > 0) return finish()
            end()
            resume(Effect.fail(error))
          })
          if (done) return
          const missing = wanted - buffered.length - creditOf(receiver)
          if (missing > 0) receiver.add_credit(missing)
          waiting.add(take)
          wait(out.length > 0 ? after : maxWait)
          // Interrupted: messages taken so far go back, in order, for the next receive.
          return Effect.sync(() => {
            if (done) return
            end()
            buffered.unshift(...out)
          })
        })
        // Credit not used stays granted: messages that arrive later wait, locked, in the session's
        // buffer for the next receive (draining the credit races with concurrent receives).
      }).pipe(
        (effect) =>
          withSpanIfTracing(effect, "ServiceBusTransaction.receive", () => ({
            attributes: { entity, maxMessages },
            captureStackTrace: false
          }))
      )

    // Transactions declared ahead, so that `run` usually finds its transaction ready and saves
    // the declare's round trip: the session keeps as many declared (or being declared) as there
    // are transactions running, up to `maxSpares`. The declares that refill the pool are written
    // with a running transaction's next frames (its flush, or its discharge), so they cost no
    // write of their own. A spare holds nothing on Service Bus (its time limit starts at its first
    // operation); one not used within `spareMaxAgeMillis` is rolled back. Closing the coordinator
    // link (the end of the session) rolls back those left.
    const ready: Array<{ readonly txnId: Buffer; readonly at: number }> = []
    // Runs waiting for a declare of the pool that is still on its way, first come, first served.
    const claims: Array<(result: Either.Either<Buffer, Coordinator.CoordinatorError>) => void> = []
    let inFlight = 0
    let running = 0
    let refillWanted = false
    let closed = false
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        closed = true
      })
    )
    const declareNow: Start<Buffer, Coordinator.CoordinatorError> = (finish) => {
      if (coordinator === undefined) return noCoordinator(finish)
      return coordinator.request(encodeDeclare(), (answer) => finish(Either.flatMap(answer, Coordinator.declareResult)))
    }
    const rollBack = (txnId: Buffer) => {
      if (closed || connection.isLost() || coordinator === undefined) return
      coordinator.request(encodeDischarge(txnId, true), () => undefined)
    }
    const refill = () => {
      refillWanted = false
      if (closed || connection.isLost()) return
      const target = Math.min(maxSpares, Math.max(1, running))
      for (let have = ready.length + inFlight - claims.length; have < target; have++) {
        inFlight++
        declareNow((result) => {
          inFlight--
          const claim = claims.shift()
          if (claim !== undefined) {
            refillWanted = true
            claim(result)
          } else if (Either.isRight(result)) {
            if (closed) return
            ready.push({ txnId: result.right, at: Date.now() })
          }
        })
      }
    }
    /** A fresh transaction of the pool, taken at once; stale ones are rolled back on the way. */
    const takeReady = (): Buffer | undefined => {
      const now = Date.now()
      for (let spare = ready.shift(); spare !== undefined; spare = ready.shift()) {
        if (now - spare.at <= spareMaxAgeMillis) {
          running++
          refillWanted = true
          return spare.txnId
        }
        rollBack(spare.txnId)
      }
      return undefined
    }
    const declare: Start<Buffer, Coordinator.CoordinatorError> = (finish) => {
      const taken = takeReady()
      if (taken !== undefined) {
        finish(Either.right(taken))
        return () => undefined
      }
      running++
      let waiting = true
      const done = (result: Either.Either<Buffer, Coordinator.CoordinatorError>) => {
        waiting = false
        finish(result)
      }
      if (inFlight > claims.length) {
        claims.push(done)
        // Given up (timeout, interruption): the answer goes to the pool.
        return () => {
          if (!waiting) return
          waiting = false
          const index = claims.indexOf(done)
          if (index >= 0) claims.splice(index, 1)
        }
      }
      const stop = declareNow(done)
      refill()
      return stop
    }
    const prepareNext = () => {
      if (refillWanted) refill()
    }
    /** A transaction taken by `declare` or `takeReady` has ended (discharged, or never declared). */
    const release = () => {
      running = Math.max(0, running - 1)
    }

    const settle = (message: ReceivedMessage, settlement: Settlement) =>
      settleDelivery(internalsOf, message, settlement, undefined).pipe(
        Effect.mapError(outsideTransaction("settle", entity)),
        (effect) =>
          withSpanIfTracing(effect, "ServiceBusTransaction.settle", () => ({
            attributes: { entity, messageId: message.messageId ?? "", settlement: settlement._tag },
            captureStackTrace: false
          }))
      )

    const renewLock = (message: ReceivedMessage): Effect.Effect<Date, SettleError> =>
      Effect.suspend(() => {
        const context = {
          operation: "renewLock",
          entity,
          messageId: message.messageId,
          lockToken: message.lockToken
        }
        const lockToken = message.lockToken
        if (lockToken === undefined) {
          return Effect.fail(new MessageLockLost({ ...context, reason: "the message has no lock token" }))
        }
        return Effect.flatMap(management, (channel) =>
          wire<Date, SettleError>(
            (finish) =>
              channel.request(
                {
                  operation: Management.Operations.renewLock,
                  body: { "lock-tokens": Management.lockTokensArray([lockToken]) }
                },
                (answer) => {
                  const problem = managementResult(answer, undefined, context)
                  if (problem !== undefined || Either.isLeft(answer)) {
                    return finish(Either.left(
                      problem === undefined || problem._tag === "TransactionFailed" ||
                        problem._tag === "TransactionTimeout"
                        ? new ServiceBusFailure({ ...context, reason: problem?.message ?? "no answer" })
                        : problem
                    ))
                  }
                  const [until] = Management.expirationsOf(answer.right.body)
                  finish(
                    until === undefined || Number.isNaN(until.getTime())
                      ? Either.left(
                        new ServiceBusFailure({ ...context, reason: "the renew-lock answer has no expiration" })
                      )
                      : Either.right(until)
                  )
                }
              ),
            () => "renewLock"
          ))
      }).pipe(
        (effect) =>
          withSpanIfTracing(effect, "ServiceBusTransaction.renewLock", () => ({
            attributes: { entity, messageId: message.messageId ?? "", lockToken: message.lockToken ?? "" },
            captureStackTrace: false
          }))
      )

    // One transaction declared now, kept for the first `run`: a namespace without transactions
    // (the Basic tier, which rejects a declare with `amqp:not-allowed`) fails the session's
    // opening, rather than every commit later.
    if (coordinator !== undefined) {
      const txnId = yield* coordinator.declare.pipe(
        Effect.mapError((error): ServiceError | TransactionsUnsupported =>
          error._tag === "TransactionRejected" && refusesTransactions(error.condition)
            ? new TransactionsUnsupported({ reason: error.message })
            : new ServiceBusUnavailable({ operation: "declare", entity, reason: error.message })
        ),
        (effect) => guard(effect, "declare")
      )
      ready.push({ txnId, at: Date.now() })
    }

    const api: Api.TransactionalSession = { entity, viaEntity, receive, settle, renewLock }
    const internalsOf: SessionInternals = {
      connection,
      entity,
      coordinator,
      receiver,
      deliveries,
      sender,
      guard,
      wire,
      declare,
      prepareNext,
      takeReady,
      release,
      readySender,
      management
    }
    internals.set(api, internalsOf)
    return api
  }).pipe(Effect.withSpan("ServiceBusTransaction.makeSession"))

/**
 * Starts settling a received message: writes its disposition on the receive link while its
 * delivery is open there, or, given the management channel, settles it by lock token through the
 * entity's `$management` node (`update-disposition`), as after a rolled-back transaction. Without
 * either, it fails at once.
 */
const startSettle = (
  session: SessionInternals,
  message: ReceivedMessage,
  settlement: Settlement,
  txnId: Uint8Array | undefined,
  channel?: Management.ManagementChannel
): Start<void, SettleError | TransactionFailed | TransactionTimeout> =>
(finish) => {
  const operation = settlementName(settlement)
  const context = { operation, entity: session.entity, messageId: message.messageId, lockToken: message.lockToken }
  const lockToken = message.lockToken
  const delivery = lockToken === undefined ? undefined : session.deliveries.get(lockToken)
  if (delivery === undefined) {
    if (channel !== undefined && lockToken !== undefined) {
      return channel.request(
        {
          operation: Management.Operations.updateDisposition,
          body: updateDispositionBody(lockToken, settlement),
          txnId
        },
        (answer) => {
          const problem = managementResult(answer, txnId, context)
          finish(problem === undefined ? Either.void : Either.left(problem))
        }
      )
    }
    finish(Either.left(
      new MessageLockLost({
        ...context,
        entity: session.entity,
        reason: "the message was not received on this session, or is already settled"
      })
    ))
    return () => undefined
  }
  const outcome = outcomeOf(settlement)
  const stop = listenAnswer(session.receiver, delivery, ["settled"], operation, session.entity, (answer) => {
    if (Either.isLeft(answer)) return finish(answer)
    const result = checkAnswer(answer.right, txnId, session.entity)
    finish(
      result === undefined
        ? Either.void
        : Either.left(
          result._tag === "Rejected"
            ? settleError({ condition: result.condition, description: result.description }, context)
            : result.error
        )
    )
  })
  // Once a disposition is written, rhea will not write another for the delivery: a later
  // settlement (after a rollback) goes through the management node.
  session.deliveries.delete(lockToken!)
  delivery.update(false, txnId === undefined ? deliveryState(outcome) : transactionalState(txnId, outcome))
  return stop
}

/** The `update-disposition` request body of a settlement. */
const updateDispositionBody = (lockToken: string, settlement: Settlement): Record<string, unknown> => {
  const body: Record<string, unknown> = { "lock-tokens": Management.lockTokensArray([lockToken]) }
  const properties = settlement._tag === "Complete" ? undefined : settlement.properties
  switch (settlement._tag) {
    case "Complete":
      body["disposition-status"] = "completed"
      break
    case "Abandon":
      body["disposition-status"] = "abandoned"
      break
    case "Defer":
      // Service Bus spells it this way.
      body["disposition-status"] = "defered"
      break
    case "DeadLetter":
      body["disposition-status"] = "suspended"
      body["deadletter-reason"] = settlement.reason
      if (settlement.description !== undefined) body["deadletter-description"] = settlement.description
      break
  }
  if (properties !== undefined && Object.keys(properties).length > 0) body["properties-to-modify"] = { ...properties }
  return body
}

// Status codes of `$management` answers that come without an error condition.
const conditionOfStatus = (status: number): string | undefined => {
  switch (status) {
    case 401:
      return "amqp:unauthorized-access"
    case 404:
      return "com.microsoft:message-not-found"
    case 408:
      return "com.microsoft:timeout"
    case 410:
      return "com.microsoft:message-lock-lost"
    case 503:
      return "com.microsoft:server-busy"
    default:
      return undefined
  }
}

/** Undefined when the `$management` node answered with success; otherwise the failure. */
const managementResult = (
  answer: Either.Either<Management.ManagementResponse, Management.ManagementFailure>,
  txnId: Uint8Array | undefined,
  context: {
    readonly operation: string
    readonly entity: string
    readonly messageId?: string | undefined
    readonly lockToken?: string | undefined
  }
): SettleError | TransactionFailed | TransactionTimeout | undefined => {
  if (Either.isLeft(answer)) {
    const failure = answer.left
    return failure._tag === "Refused" && failure.condition !== undefined
      ? settleError({ condition: failure.condition, description: failure.reason }, context)
      : new ServiceBusUnavailable({ operation: context.operation, entity: context.entity, reason: failure.reason })
  }
  const response = answer.right
  if (Management.isSuccess(response)) return undefined
  const condition = response.condition ?? conditionOfStatus(response.statusCode)
  const description = response.description ?? `status ${response.statusCode}`
  const transactionId = txnId === undefined ? "" : Buffer.from(txnId).toString("hex")
  if (condition === TransactionErrorCondition.timeout) {
    return new TransactionTimeout({ transactionId, entity: context.entity, reason: description })
  }
  if (condition === TransactionErrorCondition.unknownId || condition === TransactionErrorCondition.rollback) {
    return new TransactionFailed({ transactionId, entity: context.entity, condition, reason: description })
  }
  return settleError(
    { condition: condition ?? "amqp:internal-error", description: `${description} (status ${response.statusCode})` },
    context
  )
}

/**
 * Sends a disposition for a received message and waits for Service Bus to settle it: on the
 * receive link while its delivery is open there, otherwise through the management node.
 */
const settleDelivery = (
  session: SessionInternals,
  message: ReceivedMessage,
  settlement: Settlement,
  txnId: Uint8Array | undefined
): Effect.Effect<void, SettleError | TransactionFailed | TransactionTimeout> =>
  Effect.suspend(() => {
    const lockToken = message.lockToken
    if (lockToken === undefined || session.deliveries.has(lockToken)) {
      return session.wire(startSettle(session, message, settlement, txnId), () => settlementName(settlement))
    }
    return Effect.flatMap(
      session.management,
      (channel) =>
        session.wire(startSettle(session, message, settlement, txnId, channel), () => settlementName(settlement))
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

/**
 * Starts one send (in the transaction `txnId`, when given): waits for credit, writes the
 * transfer, listens for the answer.
 */
const startSend = (
  session: SessionInternals,
  sender: Sender,
  destination: string,
  encoded: Encoded,
  txnId: Uint8Array | undefined
): Start<void, Api.TransactionError> =>
(finish) => {
  const context = { operation: "send", entity: destination, messageId: encoded.message.messageId }
  let stopAnswer: (() => void) | undefined
  const stopWaiting = whenSendable(sender, () => {
    const delivery = txnId === undefined
      ? Either.right(sender.send(toRheaMessage(encoded)))
      : sendTransactional(sender, toRheaMessage(encoded), txnId)
    if (Either.isLeft(delivery)) {
      return finish(Either.left(new ServiceBusUnavailable({ ...context, reason: delivery.left.message })))
    }
    stopAnswer = listenAnswer(sender, delivery.right, senderEvents, "send", destination, (answer) => {
      if (Either.isLeft(answer)) return finish(answer)
      const problem = checkAnswer(answer.right, txnId, session.entity)
      finish(
        problem === undefined
          ? Either.void
          : Either.left(
            problem._tag === "Rejected"
              ? sendError({ condition: problem.condition, description: problem.description }, context)
              : problem.error
          )
      )
    })
  })
  return () => {
    stopWaiting()
    stopAnswer?.()
  }
}

/** One operation of a write: its name (for a timeout's message) and how to start it. */
type Operation = { readonly name: string; readonly start: Start<void, Api.TransactionError> }

/**
 * Starts every operation at once (pipelined) and ends when all are accepted, or at the first
 * failure (the others stop being listened for).
 */
const startAll = <E>(
  operations: ReadonlyArray<{ readonly name: string; readonly start: Start<void, E> }>,
  pending: Set<number>
): Start<void, E> =>
(finish) => {
  const stops: Array<() => void> = []
  let failed = false
  for (let i = 0; i < operations.length && !failed; i++) {
    pending.add(i)
    stops.push(operations[i].start((result) => {
      if (Either.isLeft(result)) {
        failed = true
        return finish(result)
      }
      pending.delete(i)
      if (pending.size === 0 && stops.length === operations.length) finish(Either.void)
    }))
  }
  if (!failed && pending.size === 0) finish(Either.void)
  return () => {
    for (const stop of stops) stop()
  }
}

/**
 * Sends each message, and once Service Bus has accepted them all, settles `message`: outside any
 * transaction, as the processor's idempotent mode commits. The sends are pipelined; a send
 * refused leaves the message unsettled. One wire wait for all of it.
 */
export const sendThenSettle = (
  api: Api.TransactionalSession,
  message: ReceivedMessage,
  settlement: Settlement,
  sends: ReadonlyArray<{ readonly destination: string; readonly messages: ReadonlyArray<OutgoingMessage> }>
): Effect.Effect<void, SendError | SettleError> => {
  const session = internals.get(api)
  if (session === undefined) {
    return Effect.dieMessage("sendThenSettle needs a session made by ServiceBusTransaction.makeSession")
  }
  return Effect.flatMap(
    Effect.forEach(sends, (dispatch) =>
      Effect.zipWith(
        encodeAll(dispatch.destination, dispatch.messages),
        Effect.suspend(() => {
          const ready = session.readySender(dispatch.destination)
          return ready === undefined ? session.sender(dispatch.destination) : Effect.succeed(ready)
        }),
        (encoded, sender) => ({ destination: dispatch.destination, encoded, sender })
      )),
    (prepared) => {
      const operations: Array<Operation> = []
      for (const { destination, encoded, sender } of prepared) {
        for (const one of encoded) {
          operations.push({ name: "send", start: startSend(session, sender, destination, one, undefined) })
        }
      }
      const onLink = message.lockToken === undefined || session.deliveries.has(message.lockToken)
      const sendAll = startAll(operations, new Set())
      if (!onLink) {
        // Settled through the management node (its delivery is gone from the link).
        return Effect.zipRight(
          Effect.mapError(session.wire(sendAll, () => "send"), outsideTransaction("send", session.entity)),
          Effect.mapError(
            settleDelivery(session, message, settlement, undefined),
            outsideTransaction(settlementName(settlement), session.entity)
          )
        )
      }
      const settle = startSettle(session, message, settlement, undefined)
      return Effect.mapError(
        session.wire<void, Api.TransactionError>((finish) => {
          let stopSettle: (() => void) | undefined
          let ended = false
          const stopSends = sendAll((result) => {
            if (ended) return
            if (Either.isLeft(result)) {
              ended = true
              return finish(result)
            }
            stopSettle = settle((settled) => {
              ended = true
              finish(settled)
            })
          })
          return () => {
            ended = true
            stopSends()
            stopSettle?.()
          }
        }, () => "send and settle"),
        outsideTransaction("send and settle", session.entity)
      )
    }
  )
}

/** A coordinator operation on a session opened without one (`run` refuses such a session). */
const noCoordinator = <A>(finish: (result: Either.Either<A, Coordinator.CoordinatorError>) => void) => {
  finish(Either.left(new Coordinator.CoordinatorUnavailable({ reason: "the session has no transactions" })))
  return () => undefined
}

/**
 * Outside a transaction, a failure that names one (which the broker should not give) is a plain
 * failure of the operation.
 */
const outsideTransaction = (operation: string, entity: string) =>
<E extends { readonly _tag: string }>(
  error: E | TransactionFailed | TransactionTimeout | TransactionTooLarge
): E | ServiceBusFailure =>
  error._tag === "TransactionFailed" || error._tag === "TransactionTimeout" || error._tag === "TransactionTooLarge"
    ? new ServiceBusFailure({ operation, entity, reason: (error as { readonly message: string }).message })
    : error as E

/** The conditions Service Bus refuses transactions with on a namespace that has none. */
const refusesTransactions = (condition: string | undefined): boolean =>
  condition === "amqp:not-allowed" || condition === "amqp:not-implemented"

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

const dischargeTimeout = "the coordinator did not answer the discharge in time; the outcome is unknown"

const discharge =
  (session: SessionInternals, txnId: Uint8Array, fail: boolean): Start<void, Coordinator.CoordinatorError> =>
  (finish) => {
    session.prepareNext()
    if (session.coordinator === undefined) return noCoordinator(finish)
    return session.coordinator.request(
      encodeDischarge(txnId, fail),
      (answer) => finish(Either.flatMap(answer, (state) => Coordinator.dischargeResult(txnId, state)))
    )
  }

const isCoordinatorError = (
  error: Coordinator.CoordinatorError | ServiceError
): error is Coordinator.CoordinatorError =>
  error._tag === "TransactionRolledBack" || error._tag === "TransactionUnknownId" ||
  error._tag === "TransactionTimedOut" || error._tag === "TransactionRejected" ||
  error._tag === "CoordinatorTimeout" || error._tag === "CoordinatorUnavailable"

const coordinatorErrorOrService = (
  error: Coordinator.CoordinatorError | ServiceError,
  entity: string,
  operation: "declare" | "discharge"
): TransactionFailed | TransactionTimeout | ServiceError =>
  isCoordinatorError(error) ? coordinatorError(error, entity, operation) : error

export const run = <A, E, R>(
  api: Api.TransactionalSession,
  body: (transaction: Api.Transaction) => Effect.Effect<A, E, R>
): Effect.Effect<A, E | Api.TransactionError, R> => {
  const session = internals.get(api)
  if (session === undefined || session.coordinator === undefined) {
    return Effect.dieMessage("ServiceBusTransaction.run needs a session made by ServiceBusTransaction.makeSession")
  }
  const entity = session.entity
  return Effect.uninterruptibleMask((restore) =>
    Effect.gen(function*() {
      const ready = session.takeReady()
      const txnId = ready !== undefined ? ready : yield* restore(
        session.wire(session.declare, () => "declare").pipe(
          Effect.mapError((e) => coordinatorErrorOrService(e, entity, "declare"))
        )
      )
      const transactionId = txnId.toString("hex")
      yield* annotateSpan("transactionId", transactionId)
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
          if (token === undefined) {
            return Effect.fail(
              new MessageLockLost({
                operation: settlementName(settlement),
                entity,
                messageId: message.messageId,
                lockToken: token,
                reason: "the message has no lock token"
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

      const writeAll = (operations: ReadonlyArray<Operation>): Effect.Effect<void, Api.TransactionError> => {
        const unanswered = new Set<number>()
        const all = startAll(operations, unanswered)
        return session.wire<void, Api.TransactionError>((finish) => {
          session.prepareNext()
          return all(finish)
        }, () => {
          // A timeout names the first operation still without an answer.
          const [index] = unanswered
          return operations[index ?? 0]?.name ?? "flush"
        })
      }
      // The operations, when every link they need is at hand (the usual case); otherwise
      // undefined, and the links are attached first.
      const operationsAtHand = (batch: ReadonlyArray<Pending>): Array<Operation> | undefined => {
        const operations: Array<Operation> = []
        for (const item of batch) {
          if (item._tag === "Settle") {
            const token = item.message.lockToken
            if (token !== undefined && !session.deliveries.has(token)) {
              return undefined
            }
            operations.push({
              name: settlementName(item.settlement),
              start: startSettle(session, item.message, item.settlement, txnId)
            })
          } else {
            const sender = session.readySender(item.destination)
            if (sender === undefined) {
              return undefined
            }
            for (const encoded of item.messages) {
              operations.push({ name: "send", start: startSend(session, sender, item.destination, encoded, txnId) })
            }
          }
        }
        return operations
      }
      const flush: Effect.Effect<void, Api.TransactionError> = Effect.suspend(() => {
        const batch = pending
        pending = []
        if (batch.length === 0) {
          return Effect.void
        }
        const atHand = operationsAtHand(batch)
        if (atHand !== undefined) {
          return writeAll(atHand)
        }
        return Effect.gen(function*() {
          const operations: Array<Operation> = []
          for (const item of batch) {
            if (item._tag === "Settle") {
              // Not open on the receive link (settled in a transaction that was rolled back, or
              // received elsewhere): settled by lock token through the management node.
              const token = item.message.lockToken
              const channel = token !== undefined && !session.deliveries.has(token)
                ? yield* session.management
                : undefined
              operations.push({
                name: settlementName(item.settlement),
                start: startSettle(session, item.message, item.settlement, txnId, channel)
              })
            } else {
              const sender = yield* session.sender(item.destination)
              for (const encoded of item.messages) {
                operations.push({ name: "send", start: startSend(session, sender, item.destination, encoded, txnId) })
              }
            }
          }
          yield* writeAll(operations)
        })
      })

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
        yield* session.wire(discharge(session, txnId, false), () => "commit", dischargeTimeout).pipe(
          Effect.mapError((e) => coordinatorErrorOrService(e, entity, "discharge"))
        )
        return exit.value
      }
      if (!session.connection.isLost()) {
        yield* session.wire(discharge(session, txnId, true), () => "rollback").pipe(
          Effect.catchAllCause((cause) =>
            Effect.logDebug("Service Bus transaction rollback was not confirmed", Cause.squash(cause))
          )
        )
      }
      return yield* exit
    })
  ).pipe(
    Effect.ensuring(Effect.sync(session.release)),
    (effect) =>
      withSpanIfTracing(effect, "Transaction.run", () => ({ attributes: { entity }, captureStackTrace: false }))
  )
}

// The processor's transports: how messages are received, committed and settled. The atomic one
// runs on a transactional session (recreated when its connection is lost, since a session does
// not reconnect by itself) and renews locks through an SDK receiver's management link; the
// others run over the MessageReceiver and MessageSender ports, which renew locks themselves.
import type { ServiceBusReceivedMessage, ServiceBusReceiver } from "@azure/service-bus"
import type { Schedule } from "effect"
import { Clock, Duration, Effect, Exit, FiberMap, Scope } from "effect"
import type { OutgoingMessage, ReceivedMessage } from "../Message.js"
import type * as Api from "../MessageProcessor.js"
import type { LockRenewalOptions, Settlement, Source } from "../MessageReceiver.js"
import * as MessageReceiver from "../MessageReceiver.js"
import * as MessageSender from "../MessageSender.js"
import * as ServiceBusClient from "../ServiceBusClient.js"
import type { ReceiveError, SendError, ServiceError, SettleError, TransientError } from "../ServiceBusError.js"
import * as ServiceBusTransaction from "../ServiceBusTransaction.js"
import { closeWithin } from "./closeWithin.js"
import { retryTransient } from "./messageRetry.js"
import { settleError } from "./serviceBusErrors.js"

export interface Dispatch {
  readonly destination: string
  readonly messages: ReadonlyArray<OutgoingMessage>
}

export type CommitError = ServiceBusTransaction.TransactionError | SendError | SettleError

export interface Inbound {
  readonly message: ReceivedMessage
  /** Settles and sends: in one transaction (atomic), or the sends first and then the settlement. */
  readonly commit: (settlement: Settlement, sends: ReadonlyArray<Dispatch>) => Effect.Effect<void, CommitError>
  /** Settles with nothing to send, outside any transaction. */
  readonly settle: (settlement: Settlement) => Effect.Effect<void, SettleError>
  /** Gives the message up without settling it: its lock renewal stops and it is delivered again later. */
  readonly release: Effect.Effect<void>
}

export interface Batch {
  readonly items: ReadonlyArray<Inbound>
  /** Called once every item is finished with. */
  readonly done: Effect.Effect<void>
}

export interface Link {
  readonly receive: (
    maxMessages: number,
    maxWait: Duration.Duration
  ) => Effect.Effect<Batch, ReceiveError | Api.StartError>
}

export interface OpenOptions {
  readonly source: Source
  readonly destinations: ReadonlyArray<string>
  readonly lockRenewal: LockRenewalOptions | false | undefined
}

export interface TransportImpl<R> extends Api.Transport<R> {
  readonly open: (options: OpenOptions) => Effect.Effect<Link, Api.StartError, R | Scope.Scope>
}

export const implOf = <R>(transport: Api.Transport<R>): TransportImpl<R> => transport as TransportImpl<R>

const groupSends = (sends: ReadonlyArray<Dispatch>): Map<string, Array<OutgoingMessage>> => {
  const groups = new Map<string, Array<OutgoingMessage>>()
  for (const { destination, messages } of sends) {
    const group = groups.get(destination) ?? []
    group.push(...messages)
    groups.set(destination, group)
  }
  return groups
}

// ---------------------------------------------------------------------------------------------
// Over the ports

const openPorts = (
  receiver: MessageReceiver.MessageReceiverService,
  sender: MessageSender.MessageSenderService,
  options: OpenOptions
): Effect.Effect<Link, never, Scope.Scope> =>
  Effect.map(Effect.scope, (parent): Link => ({
    receive: (maxMessages, maxWait) =>
      Effect.gen(function*() {
        // Deliveries belong to the scope of their receive: closing it once the batch is done
        // abandons whatever was left unsettled (a shutdown that timed out, a release).
        const scope = yield* Scope.fork(parent, { _tag: "Sequential" })
        const deliveries = yield* receiver.receive(options.source, {
          maxMessages,
          maxWaitTime: maxWait,
          ...(options.lockRenewal === undefined ? {} : { lockRenewal: options.lockRenewal })
        }).pipe(
          Scope.extend(scope),
          Effect.onError(() => Scope.close(scope, Exit.void))
        )
        const items = deliveries.map((delivery): Inbound => ({
          message: delivery.message,
          commit: (settlement, sends) =>
            Effect.forEach(
              groupSends(sends),
              ([destination, messages]) => sender.send(destination, messages),
              { concurrency: "unbounded", discard: true }
            ).pipe(Effect.zipRight(delivery.settle(settlement))),
          settle: delivery.settle,
          release: Effect.void
        }))
        return { items, done: Scope.close(scope, Exit.void) }
      })
  }))

export const memory: TransportImpl<MessageReceiver.MessageReceiver | MessageSender.MessageSender> = {
  mode: "idempotent",
  name: "memory",
  open: (options) =>
    Effect.gen(function*() {
      const receiver = yield* MessageReceiver.MessageReceiver
      const sender = yield* MessageSender.MessageSender
      return yield* openPorts(receiver, sender, options)
    })
}

const clientOptions = (options: Api.ServiceBusOptions): ServiceBusClient.ServiceBusClientOptions => {
  const connection = options.connection
  const common = options.operationTimeout === undefined ? {} : { operationTimeout: options.operationTimeout }
  return "connectionString" in connection
    ? { ...common, connectionString: connection.connectionString }
    : {
      ...common,
      fullyQualifiedNamespace: connection.fullyQualifiedNamespace,
      credential: connection.credential,
      ...(connection.useDevelopmentEmulator === undefined
        ? {}
        : { useDevelopmentEmulator: connection.useDevelopmentEmulator })
    }
}

const makeClient = (options: Api.ServiceBusOptions) =>
  ServiceBusClient.make(clientOptions(options)).pipe(
    Effect.mapError((error): ServiceError => error)
  )

export const idempotent = (options: Api.ServiceBusOptions): TransportImpl<never> => ({
  mode: "idempotent",
  name: "idempotent",
  open: (open) =>
    Effect.gen(function*() {
      const client = yield* makeClient(options)
      const receiver = yield* MessageReceiver.makeServiceBus().pipe(
        Effect.provideService(ServiceBusClient.ServiceBusClient, client)
      )
      const sender = yield* MessageSender.makeServiceBus().pipe(
        Effect.provideService(ServiceBusClient.ServiceBusClient, client)
      )
      return yield* openPorts(receiver, sender, open)
    })
})

// ---------------------------------------------------------------------------------------------
// Atomic

const defaultRenewalFraction = 0.5
const defaultMaxRenewal = 5 * 60_000
const minRenewalIntervalMillis = 50

interface Held {
  readonly session: ServiceBusTransaction.TransactionalSession
  readonly scope: Scope.CloseableScope
}

const sessionCloseTimeout = Duration.seconds(5)

// Runs in finalizers too, where a plain timeout would wait for the close it gives up on.
const closeBounded = (scope: Scope.CloseableScope) =>
  closeWithin(Scope.close(scope, Exit.void), sessionCloseTimeout, "A transactional session")

const isConnectionLost = (error: unknown): boolean =>
  typeof error === "object" && error !== null && "_tag" in error && error._tag === "ConnectionLost"

export const atomic = (options: Api.ServiceBusOptions): TransportImpl<never> => ({
  mode: "atomic",
  name: "atomic",
  open: (open) =>
    Effect.gen(function*() {
      const parent = yield* Effect.scope
      const client = yield* makeClient(options)
      const entity = MessageReceiver.entityPath(open.source)
      const sessionOptions: ServiceBusTransaction.SessionOptions = {
        connection: options.connection,
        entity: open.source,
        destinations: open.destinations,
        ...(options.operationTimeout === undefined ? {} : { operationTimeout: options.operationTimeout })
      }
      const lock = yield* Effect.makeSemaphore(1)
      let held: Held | undefined

      // Each session lives in a scope of its own, closed within a time limit: a session whose
      // links do not answer their detach must not hold the processor's shutdown.
      const create: Effect.Effect<Held, Api.StartError> = Effect.gen(function*() {
        const scope = yield* Scope.make()
        const session = yield* ServiceBusTransaction.makeSession(sessionOptions).pipe(
          Scope.extend(scope),
          Effect.onError(() => Scope.close(scope, Exit.void))
        )
        return { session, scope }
      })
      const current = lock.withPermits(1)(Effect.suspend(() => {
        if (held !== undefined) return Effect.succeed(held)
        return Effect.tap(create, (h) =>
          Effect.sync(() => {
            held = h
          }))
      }))
      // A session whose connection was lost is closed and replaced on the next receive.
      const invalidate = (h: Held) =>
        Effect.suspend(() => {
          if (held !== h) return Effect.void
          held = undefined
          return closeBounded(h.scope)
        })
      const onLost = (h: Held) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
        Effect.tapError(effect, (error) => isConnectionLost(error) ? invalidate(h) : Effect.void)

      yield* Scope.addFinalizer(
        parent,
        Effect.suspend(() => held === undefined ? Effect.void : closeBounded(held.scope))
      )
      // The first session is opened now, so that a wrong connection or entity fails the start.
      yield* current

      // Lock renewal goes through the management link of an SDK receiver: Service Bus renews by
      // lock token, whichever link received the message.
      let sdkReceiver: ServiceBusReceiver | undefined
      const renewer = () => {
        if (sdkReceiver === undefined) {
          const receiverOptions = { receiveMode: "peekLock" as const, maxAutoLockRenewalDurationInMs: 0 }
          sdkReceiver = open.source._tag === "Queue"
            ? client.sdk.createReceiver(open.source.queue, receiverOptions)
            : client.sdk.createReceiver(open.source.topic, open.source.subscription, receiverOptions)
        }
        return sdkReceiver
      }
      const renewLock = (message: ReceivedMessage): Effect.Effect<Date, SettleError> =>
        retryTransient(
          Effect.tryPromise({
            try: () =>
              renewer().renewMessageLock(
                // The SDK reads only the lock token (and the delivery's link, when there is one).
                { lockToken: message.lockToken, delivery: {} } as unknown as ServiceBusReceivedMessage
              ),
            catch: (cause) =>
              settleError(cause, {
                operation: "renewLock",
                entity,
                messageId: message.messageId,
                lockToken: message.lockToken
              })
          }),
          client.retry as Schedule.Schedule<unknown, TransientError>
        )

      const renewals = yield* FiberMap.make<string>()
      const renewalLoop = (message: ReceivedMessage, renewal: LockRenewalOptions) =>
        Effect.gen(function*() {
          if (message.lockedUntil === undefined) return
          const fraction = Math.min(0.95, Math.max(0.05, renewal.fraction ?? defaultRenewalFraction))
          const maxDuration = renewal.maxDuration === undefined
            ? defaultMaxRenewal
            : Duration.toMillis(renewal.maxDuration)
          const start = yield* Clock.currentTimeMillis
          let lockedUntil = message.lockedUntil.getTime()
          while (true) {
            const now = yield* Clock.currentTimeMillis
            const wait = Math.max(minRenewalIntervalMillis, (lockedUntil - now) * fraction)
            if (now + wait - start > maxDuration) return
            yield* Effect.sleep(wait)
            lockedUntil = (yield* renewLock(message)).getTime()
          }
        }).pipe(
          Effect.catchAllCause((cause) => Effect.logDebug("Lock renewal stopped", cause)),
          Effect.annotateLogs({ entity, messageId: message.messageId ?? "" })
        )

      const stopRenewal = (message: ReceivedMessage) =>
        message.lockToken === undefined ? Effect.void : FiberMap.remove(renewals, message.lockToken)

      const inbound = (h: Held, message: ReceivedMessage): Inbound => ({
        message,
        commit: (settlement, sends) =>
          ServiceBusTransaction.run(h.session, (tx) =>
            Effect.gen(function*() {
              // Sends first: a send refused at enlistment (too large, too many) leaves the
              // message unsettled, so that it can still be abandoned or dead-lettered.
              for (const [destination, messages] of groupSends(sends)) yield* tx.send(destination, messages)
              yield* tx.settle(message, settlement)
            })).pipe(onLost(h), Effect.ensuring(stopRenewal(message))),
        settle: (settlement) =>
          h.session.settle(message, settlement).pipe(onLost(h), Effect.ensuring(stopRenewal(message))),
        release: stopRenewal(message)
      })

      const link: Link = {
        receive: (maxMessages, maxWait) =>
          Effect.gen(function*() {
            const h = yield* current
            const messages = yield* h.session.receive(maxMessages, { maxWait }).pipe(onLost(h))
            if (open.lockRenewal !== false) {
              for (const message of messages) {
                if (message.lockToken !== undefined) {
                  yield* FiberMap.run(
                    renewals,
                    message.lockToken,
                    Effect.interruptible(renewalLoop(message, open.lockRenewal ?? {}))
                  )
                }
              }
            }
            return { items: messages.map((message) => inbound(h, message)), done: Effect.void }
          })
      }
      return link
    })
})

// A minimal transaction coordinator on a rhea server (127.0.0.1, free port) and a rhea client
// that records every byte it writes, for the loopback tests.
import type { Scope } from "effect"
import { Effect, Either, Option, Queue } from "effect"
import * as net from "node:net"
import rhea from "rhea"
import type { Connection, Container, EventContext, Session } from "rhea"
import {
  answerCoordinatorAttach,
  installTransactionSupport,
  isCoordinatorLink,
  rawPayloadOf
} from "../../src/internal/amqp/transactionalTransfer.js"
import * as Codec from "../../src/internal/amqp/transactionCodec.js"

/** What the coordinator answers; tests change it between operations. */
export interface Behaviour {
  declare: "declare" | "reject" | "ignore"
  /** `accept`, `ignore`, or the error condition to reject a discharge with. */
  discharge: "accept" | "ignore" | string
}

export interface ReceivedTransfer {
  readonly address: string | undefined
  readonly txn: Option.Option<Codec.TransactionalState>
  readonly payload: Option.Option<Buffer>
}

export interface Settlement {
  readonly event: string
  readonly settled: boolean
  readonly state: Either.Either<Codec.DeliveryState, Codec.AmqpCodecError>
}

export interface TestServer {
  readonly port: number
  readonly behaviour: Behaviour
  readonly coordinatorAttached: Queue.Queue<{ readonly capabilities: ReadonlyArray<string> }>
  readonly declared: Queue.Queue<Buffer>
  readonly declaresIgnored: Queue.Queue<void>
  readonly discharges: Queue.Queue<Codec.Discharge>
  readonly transfers: Queue.Queue<ReceivedTransfer>
  readonly settlements: Queue.Queue<Settlement>
  readonly openTransactions: Set<string>
  /** Detaches every coordinator link with an error, as a failing broker would. */
  readonly dropCoordinators: () => void
}

const decodeOrDie = <A, E>(e: Either.Either<A, E>): A => {
  if (Either.isLeft(e)) throw new Error(`test server could not decode: ${String(e.left)}`)
  return e.right
}

/** Starts the test coordinator; the messages in `outbox` are sent to any receiver on "inbox". */
export const startServer = (
  options: { readonly outbox?: ReadonlyArray<string>; readonly maxFrameSize?: number } = {}
): Effect.Effect<TestServer, never, Scope.Scope> =>
  Effect.gen(function*() {
    const installed = installTransactionSupport()
    if (Either.isLeft(installed)) return yield* Effect.die(installed.left)
    const coordinatorAttached = yield* Queue.unbounded<{ readonly capabilities: ReadonlyArray<string> }>()
    const declared = yield* Queue.unbounded<Buffer>()
    const declaresIgnored = yield* Queue.unbounded<void>()
    const discharges = yield* Queue.unbounded<Codec.Discharge>()
    const transfers = yield* Queue.unbounded<ReceivedTransfer>()
    const settlements = yield* Queue.unbounded<Settlement>()
    const behaviour: Behaviour = { declare: "declare", discharge: "accept" }
    const openTransactions = new Set<string>()
    const coordinatorLinks = new Set<{ close(error?: unknown): void }>()
    // A coordinator must answer declares itself, so nothing is accepted automatically.
    const container: Container = rhea.create_container({
      id: "test-coordinator",
      receiver_options: { autoaccept: false }
    } as never)
    container.on("error", () => {})
    container.on("disconnected", () => {})

    container.on("receiver_open", (context: EventContext) => {
      const receiver = context.receiver
      if (receiver && isCoordinatorLink(receiver)) {
        coordinatorLinks.add(receiver)
        decodeOrDie(answerCoordinatorAttach(receiver))
        Queue.unsafeOffer(coordinatorAttached, decodeOrDie(Codec.decodeCoordinator(receiver.target)))
      }
    })

    container.on("message", (context: EventContext) => {
      const { delivery, receiver } = context
      if (!delivery || !receiver) return
      if (isCoordinatorLink(receiver)) {
        const payload = Option.getOrThrow(rawPayloadOf(context.message))
        const control = decodeOrDie(Codec.decodeControl(payload))
        if (control._tag === "Declare") {
          if (behaviour.declare === "ignore") return Queue.unsafeOffer(declaresIgnored, undefined)
          if (behaviour.declare === "reject") {
            const refusal = Codec.rejected({
              condition: "amqp:resource-limit-exceeded",
              description: "too many transactions"
            })
            return delivery.update(true, Codec.deliveryState(Either.getOrThrow(refusal)))
          }
          const txnId = Buffer.from(`txn-${openTransactions.size + 1}-${Math.random().toString(16).slice(2)}`)
          openTransactions.add(txnId.toString("hex"))
          delivery.update(true, Codec.declared(txnId))
          return Queue.unsafeOffer(declared, txnId)
        }
        Queue.unsafeOffer(discharges, control)
        if (behaviour.discharge === "ignore") return
        const known = openTransactions.delete(control.txnId.toString("hex"))
        const answer: Codec.Outcome = !known
          ? Either.getOrThrow(
            Codec.rejected({ condition: Codec.TransactionErrorCondition.unknownId, description: "no such transaction" })
          )
          : behaviour.discharge === "accept"
          ? Codec.accepted
          : Either.getOrThrow(Codec.rejected({ condition: behaviour.discharge, description: "as configured" }))
        return delivery.update(true, Codec.deliveryState(answer))
      }
      const txn = decodeOrDie(Codec.decodeTransferState(delivery.remote_state))
      const address = (receiver.target as { address?: string } | null)?.address
      Queue.unsafeOffer(transfers, { address, txn, payload: rawPayloadOf(context.message) })
      // Enlisted sends are answered inside the transaction.
      delivery.update(
        true,
        Option.isSome(txn)
          ? Codec.transactionalState(txn.value.txnId, Codec.accepted)
          : Codec.deliveryState(Codec.accepted)
      )
    })

    container.on("sendable", (context: EventContext) => {
      const sender = context.sender
      if (!sender || (sender.source as { address?: string } | null)?.address !== "inbox") return
      const pending = sender as unknown as { sentFromOutbox?: boolean }
      if (pending.sentFromOutbox) return
      pending.sentFromOutbox = true
      for (const body of options.outbox ?? []) sender.send({ body })
    })

    for (const event of ["transactional_state", "accepted", "rejected", "released", "modified"]) {
      container.on(event, (context: EventContext) => {
        const delivery = context.delivery
        if (!delivery || !context.sender) return
        Queue.unsafeOffer(settlements, {
          event,
          settled: delivery.remote_settled,
          state: Codec.decodeDeliveryState(delivery.remote_state)
        })
      })
    }

    const sockets = new Set<net.Socket>()
    const server = yield* Effect.acquireRelease(
      Effect.async<net.Server>((resume) => {
        const listener = container.listen(
          {
            host: "127.0.0.1",
            port: 0,
            ...(options.maxFrameSize === undefined ? {} : { max_frame_size: options.maxFrameSize })
          } as never
        ) as unknown as net.Server
        listener.on("connection", (socket: net.Socket) => {
          sockets.add(socket)
          socket.on("close", () => sockets.delete(socket))
        })
        listener.once("listening", () => resume(Effect.succeed(listener)))
      }),
      (listener) =>
        Effect.async<void>((resume) => {
          for (const socket of sockets) socket.destroy()
          listener.close(() => resume(Effect.void))
        })
    )
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    return {
      port,
      behaviour,
      coordinatorAttached,
      declared,
      declaresIgnored,
      discharges,
      transfers,
      settlements,
      openTransactions,
      dropCoordinators: () => {
        for (const link of coordinatorLinks) link.close({ condition: "amqp:internal-error", description: "test drop" })
      }
    }
  })

export interface TestClient {
  readonly connection: Connection
  readonly session: Session
  /** Every byte the client wrote to its socket, in order. */
  readonly written: Array<Buffer>
}

/** Connects a rhea client to the test server and opens one session. */
export const connectClient = (port: number): Effect.Effect<TestClient, never, Scope.Scope> =>
  Effect.gen(function*() {
    const written: Array<Buffer> = []
    const container = rhea.create_container({ id: "test-client" })
    container.on("error", () => {})
    container.on("disconnected", () => {})
    const sockets: Array<net.Socket> = []
    const connection = yield* Effect.acquireRelease(
      Effect.async<Connection>((resume) => {
        const connection = container.connect({
          host: "127.0.0.1",
          port,
          reconnect: false,
          connect: (p: number, host: string, _options: unknown, callback: () => void) => {
            const socket = net.connect({ port: p, host }, callback)
            sockets.push(socket)
            const write = socket.write.bind(socket) as (chunk: Buffer) => boolean
            socket.write = ((chunk: Buffer) => {
              written.push(Buffer.from(chunk))
              return write(chunk)
            }) as typeof socket.write
            return socket
          }
        } as never)
        connection.once("connection_open", () => resume(Effect.succeed(connection)))
      }),
      (connection) =>
        Effect.sync(() => {
          connection.close()
          for (const socket of sockets) socket.destroy()
        })
    )
    const session = yield* Effect.async<Session>((resume) => {
      const session = connection.create_session()
      session.once("session_open", () => resume(Effect.succeed(session)))
      session.begin()
    })
    return { connection, session, written }
  })

/** The next event `name` on `emitter` whose context passes `filter`. */
export const nextEvent = (
  emitter: {
    on(name: string, f: (c: EventContext) => void): unknown
    removeListener(name: string, f: (c: EventContext) => void): unknown
  },
  name: string,
  filter: (context: EventContext) => boolean = () => true
): Effect.Effect<EventContext> =>
  Effect.async<EventContext>((resume) => {
    const listener = (context: EventContext) => {
      if (!filter(context)) return
      emitter.removeListener(name, listener)
      resume(Effect.succeed(context))
    }
    emitter.on(name, listener)
    return Effect.sync(() => emitter.removeListener(name, listener))
  })

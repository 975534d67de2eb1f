// Exactly-once effects under faults, on the emulator: every input message is an event that a
// handler applies to a projection (its one write) and then answers with two outgoing messages.
// Faults are injected at each step of the way (the handler, the commit, the connection before and
// after the commit, a send, the lock), each at the moment a real signal says it is there: a hook
// on the emulator's broker, or the handler itself. Whatever happens, a consumer of the
// destination must receive each outgoing message exactly once, the projection must hold each
// event exactly once, and no input may ever be completed before its outgoing messages exist.
import { assert, describe, it } from "@effect/vitest"
import type { Scope } from "effect"
import { Context, Deferred, Effect, Ref, Schema, Stream } from "effect"
import type { Lock, Outcome, Target, Transaction } from "../../src/emulator/internal/broker.js"
import { BrokerError, Conditions } from "../../src/emulator/internal/broker.js"
import { settingsOf } from "../../src/emulator/internal/config.js"
import type { Envelope } from "../../src/emulator/internal/message.js"
import { EmulatorServer } from "../../src/emulator/internal/server.js"
import { connectionStringFor } from "../../src/emulator/ServiceBusEmulator.js"
import * as EventCodec from "../../src/EventCodec.js"
import { idFromMessage } from "../../src/Message.js"
import * as MessageProcessor from "../../src/MessageProcessor.js"
import * as MessageReceiver from "../../src/MessageReceiver.js"
import * as MessageSender from "../../src/MessageSender.js"
import * as Outbox from "../../src/Outbox.js"
import * as Projection from "../../src/Projection.js"
import { ProjectionStoreUnavailable } from "../../src/ProjectionError.js"
import * as ProjectionStore from "../../src/ProjectionStore.js"
import * as ServiceBusClient from "../../src/ServiceBusClient.js"
import { recordSpans } from "../conformance/ProcessorSuite.js"

// ---------------------------------------------------------------------------------------------
// The domain: events applied to one ledger document, each answered with two messages

class Placed extends Schema.TaggedClass<Placed>()("Placed", { orderId: Schema.String, amount: Schema.Number }) {}
const codec = EventCodec.make(Placed)

const ledger = Projection.make({
  name: "ledger",
  initialState: { count: 0, orders: [] as ReadonlyArray<string> },
  evolve: (state: { readonly count: number; readonly orders: ReadonlyArray<string> }, event: Placed) => ({
    count: state.count + 1,
    orders: [...state.orders, event.orderId]
  }),
  documentId: (_event: Placed) => "all",
  state: Schema.Struct({ count: Schema.Number, orders: Schema.Array(Schema.String) })
})

const n = 8
const inputId = (i: number) => `in-${i}`
const outputsOf = (id: string) => [idFromMessage(id, 0), idFromMessage(id, 1)]
const expectedOutputs = Array.from({ length: n }, (_, i) => outputsOf(inputId(i))).flat().sort()
const expectedOrders = Array.from({ length: n }, (_, i) => `o-${i}`).sort()

const inputs = Array.from({ length: n }, (_, i) => {
  const data = codec.encode(new Placed({ orderId: `o-${i}`, amount: i }), {
    eventId: `e-${i}`,
    metadata: { timestamp: new Date(0).toISOString(), correlationId: `c-${i}` }
  })
  return { ...Outbox.toMessage({ ...data, streamId: `order-o-${i}`, version: 1 }), messageId: inputId(i) }
})

// The message whose processing meets the fault.
const victim = inputId(3)

// ---------------------------------------------------------------------------------------------
// The emulator, with hooks on its broker

type Mode = "atomic" | "idempotent"

interface Broker {
  discharge: (txn: Transaction, fail: boolean) => void
  settle: (lock: Lock, outcome: Outcome) => void
  send: (target: Target, envs: ReadonlyArray<Envelope>) => Array<number>
  enlistSend: (txn: Transaction, via: string, target: Target, envs: ReadonlyArray<Envelope>) => void
}

const idOf = (env: Envelope): string => String(env.properties.messageId)
const targetPath = (target: Target): string => target._tag === "queue" ? target.store.path : target.topic.name

interface Harness {
  readonly server: EmulatorServer
  readonly broker: Broker
  readonly connection: { readonly connectionString: ReturnType<typeof connectionStringFor> }
  /** Ids of the messages in a queue now. */
  readonly idsIn: (queue: string) => Array<string>
  /** Inputs completed before all of their outgoing messages existed: must stay empty. */
  readonly violations: Array<string>
  /** What the state looked like when the fault was injected. */
  readonly atFault: Array<{ readonly input: boolean; readonly outputs: number }>
}

const snapshot = (harness: Harness, id: string) => {
  const out = new Set(harness.idsIn("out"))
  harness.atFault.push({
    input: harness.idsIn("in").includes(id),
    outputs: outputsOf(id).filter((output) => out.has(output)).length
  })
}

const makeHarness: Effect.Effect<Harness, never, Scope.Scope> = Effect.acquireRelease(
  Effect.promise(async () => {
    const server = new EmulatorServer({ keys: new Map(), acceptJwt: true }, {
      transactionTimeoutMs: 120_000,
      maxTransactionOperations: 100
    })
    server.broker.createQueue("in", settingsOf({ lockDuration: 2000, maxDeliveryCount: 50 }, "in"))
    server.broker.createQueue("out", settingsOf({ requiresDuplicateDetection: true }, "out"))
    const port = await server.listen("127.0.0.1", 0)
    const broker = server.broker as unknown as Broker
    const idsIn = (queue: string) => [...server.broker.findStore(queue)!.all.values()].map((m) => idOf(m.env))
    const violations: Array<string> = []
    const check = (id: string) => {
      const out = new Set(idsIn("out"))
      if (!outputsOf(id).every((output) => out.has(output))) violations.push(id)
    }
    // Every completion of an input, in or out of a transaction, is checked when it is applied.
    const settle = broker.settle.bind(broker)
    broker.settle = (lock, outcome) => {
      settle(lock, outcome)
      if (outcome._tag === "complete" && lock.message.store.path === "in") check(idOf(lock.message.env))
    }
    const discharge = broker.discharge.bind(broker)
    broker.discharge = (txn, fail) => {
      const completed = txn.settlements
        .filter(({ lock, outcome }) => outcome._tag === "complete" && lock.message.store.path === "in")
        .map(({ lock }) => idOf(lock.message.env))
      discharge(txn, fail)
      if (!fail) completed.forEach(check)
    }
    return {
      server,
      broker,
      connection: { connectionString: connectionStringFor("127.0.0.1", port) },
      idsIn,
      violations,
      atFault: []
    } satisfies Harness
  }),
  (harness) => Effect.promise(() => harness.server.close())
)

/**
 * Replaces a broker method for the first `times` calls that `matches` (one by default); later
 * calls go through as before.
 */
const once = <K extends keyof Broker>(
  broker: Broker,
  key: K,
  matches: (...args: Parameters<Broker[K]>) => boolean,
  replacement: (original: Broker[K], ...args: Parameters<Broker[K]>) => ReturnType<Broker[K]>,
  times = 1
) => {
  type F = (...args: Parameters<Broker[K]>) => ReturnType<Broker[K]>
  const original = (broker[key] as unknown as F).bind(broker) as unknown as Broker[K]
  let fired = 0
  const hooked: F = (...args) => {
    if (fired >= times || !matches(...args)) return (original as unknown as F)(...args)
    fired++
    return replacement(original, ...args)
  }
  broker[key] = hooked as unknown as Broker[K]
  return { fired: () => fired > 0 }
}

// In atomic mode, commits that wait for each other share a transaction, and a transaction of
// several messages that fails is tried again one message at a time: a fault meant to fail the
// victim's commit is injected twice, so that it fails whether or not the victim was in a group.
const attemptsToFail = (mode: Mode) => mode === "atomic" ? 2 : 1

const completesVictim = (settlements: ReadonlyArray<{ readonly lock: Lock; readonly outcome: Outcome }>) =>
  settlements.some(({ lock, outcome }) => outcome._tag === "complete" && idOf(lock.message.env) === victim)

const sendsVictimOutputs = (target: Target, envs: ReadonlyArray<Envelope>) =>
  targetPath(target) === "out" && envs.some((env) => outputsOf(victim).includes(idOf(env)))

const dropConnections = (harness: Harness): never => {
  harness.server.closeConnections(true)
  throw new BrokerError(Conditions.internal, "The connection was lost.")
}

// ---------------------------------------------------------------------------------------------
// Running one scenario

interface Scenario {
  /** Called once the harness is up, before the processor starts. */
  readonly arm?: (harness: Harness) => { readonly fired: () => boolean } | void
  /** Runs in the handler before its write, on every attempt. */
  readonly inHandler?: (
    context: MessageProcessor.MessageContext,
    harness: Harness
  ) => Effect.Effect<void, ProjectionStoreUnavailable>
  /** Runs in the handler after its write, on every attempt. */
  readonly afterWrite?: (context: MessageProcessor.MessageContext) => Effect.Effect<void, Refused>
}

class Refused extends Schema.TaggedError<Refused>()("Refused", { id: Schema.String }) {}

// A send in flight when its connection drops is answered by nothing: it waits out the operation
// timeout, which is shortened here so that such a wait fits the test.
const transport = (mode: Mode, harness: Harness) =>
  mode === "atomic"
    ? MessageProcessor.atomic({ connection: harness.connection, operationTimeout: "5 seconds" })
    : MessageProcessor.idempotent({ connection: harness.connection, operationTimeout: "5 seconds" })

const runScenario = (mode: Mode, scenario: Scenario) =>
  Effect.gen(function*() {
    const harness = yield* makeHarness
    const client = yield* ServiceBusClient.make({ connectionString: harness.connection.connectionString })
    const services = Context.make(ServiceBusClient.ServiceBusClient, client)
    const sender = yield* Effect.provide(MessageSender.makeServiceBus(), services)
    const receiver = yield* Effect.provide(MessageReceiver.makeServiceBus(), services)
    yield* sender.send("in", inputs)
    const armed = scenario.arm?.(harness)

    const project = MessageProcessor.projectionHandler(ledger, codec).Placed
    const writes = yield* Ref.make(0)
    const processor = yield* MessageProcessor.run({
      source: MessageReceiver.queue("in"),
      transport: transport(mode, harness),
      concurrency: 4,
      receiveWait: "1 second",
      destinations: ["out"],
      handlers: {
        Placed: {
          decode: project.decode,
          handle: (body, context) =>
            Effect.gen(function*() {
              if (scenario.inHandler !== undefined) yield* scenario.inHandler(context, harness)
              const result = yield* project.handle(body, context)
              if ((result as { readonly _tag: string })._tag === "Updated") yield* Ref.update(writes, (k) => k + 1)
              if (scenario.afterWrite !== undefined) yield* scenario.afterWrite(context)
              yield* context.send("out", [
                { body: { shipped: context.messageId }, subject: "Ship" },
                { body: { billed: context.messageId }, subject: "Bill" }
              ])
            })
        }
      }
    })

    // Done when every input is gone from the queue and nothing is in flight: checked at each
    // change of the processor's counts, the last of which follows the last settlement.
    const inputsGone = (stats: MessageProcessor.Stats) => stats.inFlight === 0 && harness.idsIn("in").length === 0
    const stats = yield* processor.changes.pipe(
      Stream.filter(inputsGone),
      Stream.runHead,
      Effect.flatten,
      Effect.timeoutFail({ duration: "25 seconds", onTimeout: () => new Error("inputs were not all processed") })
    )
    yield* processor.shutdown

    // A consumer of the destination: it receives (and completes) everything there is.
    const available = harness.idsIn("out").length
    const received: Array<string> = []
    while (received.length < available) {
      const deliveries = yield* receiver.receive(MessageReceiver.queue("out"), {
        maxMessages: available - received.length,
        maxWaitTime: "2 seconds"
      })
      assert.isAbove(deliveries.length, 0, "the consumer got nothing while messages were waiting")
      for (const delivery of deliveries) {
        received.push(delivery.message.messageId ?? "")
        yield* delivery.complete
      }
    }
    assert.deepStrictEqual(harness.idsIn("out"), [])
    assert.deepStrictEqual(received.sort(), expectedOutputs, "each outgoing message is received exactly once")

    const store = yield* ProjectionStore.ProjectionStore
    const document = yield* store.get("ledger", "all")
    const state = document._tag === "Some"
      ? document.value.state as { count: number; orders: Array<string> }
      : undefined
    assert.strictEqual(state?.count, n, "each event is applied to the projection exactly once")
    assert.deepStrictEqual([...(state?.orders ?? [])].sort(), expectedOrders)
    assert.strictEqual(yield* Ref.get(writes), n)

    assert.deepStrictEqual(harness.violations, [], "no input is completed before its outgoing messages exist")
    assert.deepStrictEqual(harness.idsIn("in/$DeadLetterQueue"), [])
    if (armed !== undefined) assert.isTrue(armed.fired(), "the fault was injected")
    return { stats, harness }
  }).pipe(Effect.provide(ProjectionStore.layerMemory))

const test = (title: string, body: () => Effect.Effect<void, unknown, Scope.Scope>) =>
  it.live(title, () => Effect.scoped(body()), 40_000)

// ---------------------------------------------------------------------------------------------
// The scenarios

const handlerFailures: Scenario = {
  // The victim's store is unavailable once before the write (retried in process), and its
  // handler fails for good once after the write (the message is abandoned and redelivered).
  inHandler: (context) =>
    context.messageId === victim && context.attempt === 1 && context.retry === 0
      ? Effect.fail(new ProjectionStoreUnavailable({ operation: "put", reason: "injected" }))
      : Effect.void,
  afterWrite: (context) =>
    context.messageId === victim && context.attempt === 1 ? Effect.fail(new Refused({ id: victim })) : Effect.void
}

const lockLost = (): Scenario => {
  let expired = false
  return {
    // The victim's handler expires every lock on the queue (its own included) while it runs.
    inHandler: (context, harness) =>
      Effect.sync(() => {
        if (context.messageId !== victim || expired) return
        expired = true
        assert.isAbove(harness.server.expireLocks("in"), 0)
      })
  }
}

for (const mode of ["atomic", "idempotent"] as const) {
  describe(`MessageProcessor exactly once under faults (${mode})`, () => {
    test("a handler failing transiently, then for good after its write", () =>
      Effect.gen(function*() {
        const { stats } = yield* runScenario(mode, handlerFailures)
        assert.isAtLeast(stats.retries, 1)
        assert.isAtLeast(stats.abandoned, 1)
      }))

    test("the lock lost while the handler runs", () =>
      Effect.gen(function*() {
        const { stats } = yield* runScenario(mode, lockLost())
        assert.isAtLeast(stats.commitFailures, 1)
      }))

    test("a send refused", () =>
      Effect.gen(function*() {
        const refusedIn = new Set<Transaction>()
        const refuse = (harness: Harness) => (): never => {
          snapshot(harness, victim)
          throw new BrokerError(Conditions.notAllowed, "Injected: the send is refused.")
        }
        const { harness, stats } = yield* runScenario(mode, {
          arm: (harness) =>
            mode === "atomic"
              ? once(
                harness.broker,
                "enlistSend",
                (txn, _via, target, envs) => {
                  // Each output is a transfer of its own: the transactions are counted.
                  if (!sendsVictimOutputs(target, envs) || refusedIn.has(txn)) return false
                  if (refusedIn.size >= attemptsToFail(mode)) return false
                  refusedIn.add(txn)
                  return true
                },
                refuse(harness),
                Number.POSITIVE_INFINITY
              )
              : once(harness.broker, "send", sendsVictimOutputs, refuse(harness))
        })
        assert.isAtLeast(stats.commitFailures, 1)
        assert.isNotEmpty(harness.atFault)
        for (const state of harness.atFault) assert.deepStrictEqual(state, { input: true, outputs: 0 })
      }))

    test("the connection lost after a send is applied, before its answer", () =>
      Effect.gen(function*() {
        yield* runScenario(mode, {
          arm: (harness) =>
            mode === "atomic"
              ? once(harness.broker, "enlistSend", (_txn, _via, target, envs) => sendsVictimOutputs(target, envs), (
                original,
                ...args
              ) => {
                original(...args)
                return dropConnections(harness)
              })
              : once(harness.broker, "send", sendsVictimOutputs, (original, ...args) => {
                original(...args)
                return dropConnections(harness)
              })
        })
      }))
  })
}

describe("MessageProcessor exactly once under faults (atomic commit)", () => {
  test("a commit the coordinator refuses", () =>
    Effect.gen(function*() {
      const { harness, stats } = yield* runScenario("atomic", {
        arm: (harness) =>
          once(harness.broker, "discharge", (txn, fail) => !fail && completesVictim(txn.settlements), (
            original,
            txn
          ) => {
            original(txn, true)
            snapshot(harness, victim)
            throw new BrokerError(Conditions.txnRollback, "Injected: the transaction was rolled back.")
          }, attemptsToFail("atomic"))
      })
      assert.isAtLeast(stats.commitFailures, 1)
      // Refused: the input was still there, and none of its outgoing messages.
      assert.isNotEmpty(harness.atFault)
      for (const state of harness.atFault) assert.deepStrictEqual(state, { input: true, outputs: 0 })
    }))

  test("the connection lost before the discharge", () =>
    Effect.gen(function*() {
      const { harness } = yield* runScenario("atomic", {
        arm: (harness) =>
          once(harness.broker, "discharge", (txn, fail) => !fail && completesVictim(txn.settlements), () => {
            harness.server.closeConnections(true)
            snapshot(harness, victim)
            throw new BrokerError(Conditions.internal, "The connection was lost.")
          })
      })
      // The connection's transaction was rolled back: nothing of it happened.
      assert.deepStrictEqual(harness.atFault, [{ input: true, outputs: 0 }])
    }))

  test("the connection lost after the discharge, before its answer", () =>
    Effect.gen(function*() {
      const { harness } = yield* runScenario("atomic", {
        arm: (harness) =>
          once(harness.broker, "discharge", (txn, fail) => !fail && completesVictim(txn.settlements), (
            original,
            txn,
            fail
          ) => {
            original(txn, fail)
            snapshot(harness, victim)
            return dropConnections(harness)
          })
      })
      // Committed, though the processor could not know: the input gone, both outputs there.
      assert.deepStrictEqual(harness.atFault, [{ input: false, outputs: 2 }])
    }))
})

describe("MessageProcessor group commit (atomic)", () => {
  test("commits that wait share a transaction; one that fails is tried again message by message", () =>
    Effect.gen(function*() {
      // The first handlers wait for each other, so that their commits arrive together.
      const together = 4
      let arrived = 0
      const gate = yield* Deferred.make<void>()
      const sizes: Array<number> = []
      const { spans, tracer: recording } = yield* recordSpans
      const { harness, stats } = yield* Effect.withTracer(
        runScenario("atomic", {
          arm: (harness) => {
            const discharge = harness.broker.discharge
            harness.broker.discharge = (txn, fail) => {
              if (!fail) sizes.push(txn.settlements.length)
              return discharge(txn, fail)
            }
            // The first transaction of several messages is rolled back by the coordinator.
            return once(harness.broker, "discharge", (txn, fail) => !fail && txn.settlements.length > 1, (
              original,
              txn
            ) => {
              const first = idOf(txn.settlements[0].lock.message.env)
              original(txn, true)
              snapshot(harness, first)
              throw new BrokerError(Conditions.txnRollback, "Injected: the transaction was rolled back.")
            })
          },
          inHandler: (context) =>
            context.attempt === 1 && context.retry === 0 && arrived < together
              ? Effect.suspend(() => {
                arrived++
                return arrived === together ? Deferred.succeed(gate, undefined) : Deferred.await(gate)
              })
              : Effect.void
        }),
        recording
      )
      // Transactions carried several messages (the one rolled back does not count), and the one
      // rolled back left its messages where they were.
      assert.isAbove(Math.max(...sizes), 1)
      assert.deepStrictEqual(harness.atFault, [{ input: true, outputs: 0 }])
      // The group rolled back was committed again message by message, in process: no message
      // failed its commit, and none was delivered again.
      assert.strictEqual(stats.commitFailures, 0)
      assert.strictEqual(stats.abandoned, 0)
      assert.strictEqual(stats.completed, n)
      // With a tracer, each group transaction has a root span of its own, naming its messages.
      const groups = spans.filter((span) => span.name === "MessageProcessor.groupCommit")
      const shared = groups.filter((span) => Number(span.attributes.get("messages")) > 1)
      assert.isNotEmpty(shared)
      for (const span of groups) assert.isTrue(span.parent._tag === "None")
      // Each transaction's span names its transaction.
      const transactions = spans.filter((span) => span.name === "Transaction.run")
      assert.isNotEmpty(transactions)
      for (const span of transactions) assert.match(String(span.attributes.get("transactionId")), /^[0-9a-f]+$/)
    }))
})

describe("MessageProcessor exactly once under faults (idempotent commit)", () => {
  const completesVictimOutside = (lock: Lock, outcome: Outcome) =>
    outcome._tag === "complete" && idOf(lock.message.env) === victim

  test("the connection lost after the sends, before the completion", () =>
    Effect.gen(function*() {
      const { harness } = yield* runScenario("idempotent", {
        arm: (harness) =>
          once(harness.broker, "settle", completesVictimOutside, () => {
            harness.server.closeConnections(true)
            snapshot(harness, victim)
            throw new BrokerError(Conditions.internal, "The connection was lost.")
          })
      })
      // Sends come first: they were all there, and the input was not completed.
      assert.deepStrictEqual(harness.atFault, [{ input: true, outputs: 2 }])
    }))

  test("the connection lost after the completion, before its answer", () =>
    Effect.gen(function*() {
      const { harness } = yield* runScenario("idempotent", {
        arm: (harness) =>
          once(harness.broker, "settle", completesVictimOutside, (original, lock, outcome) => {
            original(lock, outcome)
            snapshot(harness, victim)
            return dropConnections(harness)
          })
      })
      assert.deepStrictEqual(harness.atFault, [{ input: false, outputs: 2 }])
    }))
})

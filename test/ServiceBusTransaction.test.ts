// Service Bus transactions against the in-repo emulator; results are read back with the official
// `@azure/service-bus` client.
import type { AccessToken, TokenCredential } from "@azure/identity"
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Redacted } from "effect"
import type { ServiceBusEmulator } from "../src/emulator/index.js"
import * as Message from "../src/Message.js"
import * as MessageReceiver from "../src/MessageReceiver.js"
import * as ServiceBusTransaction from "../src/ServiceBusTransaction.js"
import { bodies, client, emulator, receiveAll, run } from "./emulator/support.js"

const entities: ServiceBusEmulator.Options = {
  queues: [{ name: "in" }, { name: "out" }],
  topics: [{ name: "events", subscriptions: [{ name: "all" }] }]
}

const out = (body: unknown, id: string): Message.OutgoingMessage => ({ body, messageId: id })

const session = (emu: ServiceBusEmulator.Emulator, destinations: ReadonlyArray<string> = ["out", "events"]) =>
  ServiceBusTransaction.makeSession({
    connection: { connectionString: emu.connectionString },
    entity: MessageReceiver.queue("in"),
    destinations
  })

/**
 * Sends messages with an SDK client that is closed right away: the tests that drop every
 * connection must not leave an SDK client behind whose connection was dropped.
 */
const seed = (emu: ServiceBusEmulator.Emulator, queue: string, messages: ReadonlyArray<unknown>) =>
  Effect.scoped(
    Effect.flatMap(client(emu), (sb) =>
      run(() => sb.createSender(queue).sendMessages(messages.map((body) => ({ body })))))
  )

const empty = { active: 0, locked: 0, deferred: 0, scheduled: 0, deadLettered: 0 }

describe("ServiceBusTransaction", () => {
  it.scopedLive("commits the completion and every send at once; nothing is visible before", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("in").sendMessages({ body: "input" }))
      const tx = yield* session(emu)
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      assert.strictEqual(received.body, "input")
      const result = yield* ServiceBusTransaction.run(tx, (t) =>
        Effect.gen(function*() {
          yield* t.complete(received)
          yield* t.send("out", [out("a", "a"), out("b", "b")])
          yield* t.send("events", out("e", "e"))
          yield* t.send("in", out("again", "again"))
          yield* t.flush
          // Enlisted and accepted by the broker, not yet visible.
          assert.deepStrictEqual(yield* emu.admin.counts("out"), empty)
          assert.deepStrictEqual(yield* emu.admin.counts("events/Subscriptions/all"), empty)
          assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, locked: 1 })
          return t.operations()
        }))
      assert.strictEqual(result, 5)
      assert.deepStrictEqual(yield* emu.admin.counts("out"), { ...empty, active: 2 })
      assert.deepStrictEqual(yield* emu.admin.counts("events/Subscriptions/all"), { ...empty, active: 1 })
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, active: 1 })
      const sent = yield* receiveAll(
        (n) =>
          sb.createReceiver("out", { receiveMode: "receiveAndDelete" }).receiveMessages(n, { maxWaitTimeInMs: 1000 }),
        2
      )
      assert.deepStrictEqual(bodies(sent).sort(), ["a", "b"])
    }))

  it.scopedLive("rolls back when the body fails: no send is visible, the message stays locked", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("in").sendMessages({ body: "input" }))
      const tx = yield* session(emu)
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      const error = yield* ServiceBusTransaction.run(tx, (t) =>
        Effect.gen(function*() {
          yield* t.complete(received)
          yield* t.send("out", out("a", "a"))
          yield* t.flush
          return yield* Effect.fail("handler failed" as const)
        })).pipe(Effect.flip)
      assert.strictEqual(error, "handler failed")
      assert.deepStrictEqual(yield* emu.admin.counts("out"), empty)
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, locked: 1 })
      // The message comes back when its lock expires.
      assert.strictEqual(yield* emu.faults.expireLocks("in"), 1)
      const [again] = yield* tx.receive(1, { maxWait: "5 seconds" })
      assert.strictEqual(again.body, "input")
      assert.strictEqual(again.deliveryCount, 2)
    }))

  it.scopedLive("rolls back when interrupted", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("in").sendMessages({ body: "input" }))
      const tx = yield* session(emu)
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      const flushed = yield* Deferred.make<void>()
      const fiber = yield* ServiceBusTransaction.run(tx, (t) =>
        Effect.gen(function*() {
          yield* t.complete(received)
          yield* t.send("out", out("a", "a"))
          yield* t.flush
          yield* Deferred.succeed(flushed, undefined)
          return yield* Effect.never
        })).pipe(Effect.fork)
      yield* Deferred.await(flushed)
      assert.deepStrictEqual(yield* emu.admin.counts("out"), empty)
      const exit = yield* Fiber.interrupt(fiber)
      assert.isTrue(Exit.isInterrupted(exit))
      assert.deepStrictEqual(yield* emu.admin.counts("out"), empty)
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, locked: 1 })
      // The rollback is done: once delivered again, a new transaction completes the message.
      assert.strictEqual(yield* emu.faults.expireLocks("in"), 1)
      const [again] = yield* tx.receive(1, { maxWait: "5 seconds" })
      yield* ServiceBusTransaction.run(tx, (t) => t.complete(again))
      assert.deepStrictEqual(yield* emu.admin.counts("in"), empty)
    }))

  it.scopedLive("a dropped connection before the discharge is a transient failure; nothing is published", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      yield* seed(emu, "in", ["input"])
      const tx = yield* session(emu)
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      const error = yield* ServiceBusTransaction.run(tx, (t) =>
        Effect.gen(function*() {
          yield* t.complete(received)
          yield* t.send("out", [out("a", "a"), out("b", "b")])
          yield* t.send("events", out("e", "e"))
          yield* t.flush
          yield* emu.faults.closeConnections({ abrupt: true })
        })).pipe(Effect.flip)
      assert.strictEqual(error._tag, "ConnectionLost")
      assert.isTrue(ServiceBusTransaction.isTransient(error))
      assert.deepStrictEqual(yield* emu.admin.counts("out"), empty)
      assert.deepStrictEqual(yield* emu.admin.counts("events/Subscriptions/all"), empty)
      // Nothing is lost: the message is still there, and comes back once its lock expires.
      assert.strictEqual(yield* emu.faults.expireLocks("in"), 1)
      const sb = yield* client(emu)
      const [again] = yield* run(() => sb.createReceiver("in").receiveMessages(1, { maxWaitTimeInMs: 5000 }))
      assert.strictEqual(again.body, "input")
      // The session is gone with its connection: later operations fail fast, as transient errors.
      const later = yield* tx.receive(1, { maxWait: "1 second" }).pipe(Effect.flip)
      assert.strictEqual(later._tag, "ConnectionLost")
    }))

  it.scopedLive("a crash mid-transaction (connection killed while sending) loses and publishes nothing", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      yield* seed(emu, "in", ["input"])
      const tx = yield* session(emu)
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      // Every broker operation waits until the connection is killed.
      yield* emu.faults.delay("10 seconds")
      const fiber = yield* ServiceBusTransaction.run(tx, (t) =>
        Effect.gen(function*() {
          yield* t.complete(received)
          yield* t.send("out", out("a", "a"))
        })).pipe(Effect.flip, Effect.fork)
      yield* Effect.yieldNow()
      yield* emu.faults.closeConnections({ abrupt: true })
      yield* emu.faults.reset
      const error = yield* Fiber.join(fiber)
      assert.isTrue(ServiceBusTransaction.isTransient(error))
      assert.deepStrictEqual(yield* emu.admin.counts("out"), empty)
      assert.strictEqual(yield* emu.faults.expireLocks("in"), 1)
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, active: 1 })
    }))

  it.scopedLive("more than 100 operations is TransactionTooLarge before anything is sent", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("in").sendMessages({ body: "input" }))
      const tx = yield* session(emu)
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      const many = Array.from({ length: 100 }, (_, i) => out(i, `m-${i}`))
      const error = yield* ServiceBusTransaction.run(tx, (t) =>
        Effect.gen(function*() {
          yield* t.complete(received)
          yield* t.send("out", many)
        })).pipe(Effect.flip)
      assert.strictEqual(error._tag, "TransactionTooLarge")
      if (error._tag === "TransactionTooLarge") assert.strictEqual(error.operations, 101)
      assert.deepStrictEqual(yield* emu.admin.counts("out"), empty)
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, locked: 1 })
      // Exactly 100 fit.
      yield* ServiceBusTransaction.run(
        tx,
        (t) => Effect.zipRight(t.complete(received), t.send("out", many.slice(0, 99)))
      )
      assert.deepStrictEqual(yield* emu.admin.counts("out"), { ...empty, active: 99 })
    }))

  it.scopedLive("settling twice in one transaction is AlreadySettled", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("in").sendMessages({ body: "input" }))
      const tx = yield* session(emu)
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      const error = yield* ServiceBusTransaction.run(tx, (t) =>
        Effect.zipRight(t.complete(received), t.deadLetter(received, { reason: "bad" }))).pipe(Effect.flip)
      assert.strictEqual(error._tag, "AlreadySettled")
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, locked: 1 })
    }))

  it.scopedLive("dead-letters and defers in a transaction", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("in").sendMessages([{ body: "dead" }, { body: "later" }]))
      const tx = yield* session(emu)
      const received = yield* tx.receive(2, { maxWait: "5 seconds" })
      assert.strictEqual(received.length, 2)
      yield* ServiceBusTransaction.run(tx, (t) =>
        Effect.zipRight(
          t.deadLetter(received[0], { reason: "Invalid", description: "not an order" }),
          t.defer(received[1])
        ))
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, deferred: 1, deadLettered: 1 })
      const [dead] = yield* run(() =>
        sb.createReceiver("in", { subQueueType: "deadLetter" }).receiveMessages(1, { maxWaitTimeInMs: 5000 })
      )
      assert.strictEqual(dead.body, "dead")
      assert.strictEqual(dead.deadLetterReason, "Invalid")
      assert.strictEqual(dead.deadLetterErrorDescription, "not an order")
    }))

  it.scopedLive("processes a subscription: its topic is the via entity, sends go to other entities", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("events").sendMessages({ body: "event" }))
      const tx = yield* ServiceBusTransaction.makeSession({
        connection: { connectionString: emu.connectionString },
        entity: MessageReceiver.subscription("events", "all"),
        destinations: ["out"]
      })
      assert.strictEqual(tx.viaEntity, "events")
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      assert.strictEqual(received.entity, "events/Subscriptions/all")
      yield* ServiceBusTransaction.run(
        tx,
        (t) => Effect.zipRight(t.complete(received), t.send("out", out("projected", "p-1")))
      )
      assert.deepStrictEqual(yield* emu.admin.counts("events/Subscriptions/all"), empty)
      assert.deepStrictEqual(yield* emu.admin.counts("out"), { ...empty, active: 1 })
    }))

  it.scopedLive("sends with a message id that the SDK reads back, with its properties", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      const sb = yield* client(emu)
      const tx = yield* session(emu)
      yield* ServiceBusTransaction.run(tx, (t) =>
        t.send("out", {
          body: { orderId: 7 },
          messageId: Message.idFromMessage("m-1", 0),
          subject: "OrderPlaced",
          correlationId: "c-1",
          causationId: "m-1",
          applicationProperties: { region: "eu" }
        }))
      const [got] = yield* run(() =>
        sb.createReceiver("out", { receiveMode: "receiveAndDelete" }).receiveMessages(1, { maxWaitTimeInMs: 5000 })
      )
      assert.strictEqual(got.messageId, Message.idFromMessage("m-1", 0))
      assert.strictEqual(got.subject, "OrderPlaced")
      assert.strictEqual(got.correlationId, "c-1")
      assert.strictEqual(got.applicationProperties?.region, "eu")
      assert.strictEqual(got.applicationProperties?.causationId, "m-1")
    }))

  it.scopedLive("authenticates with a TokenCredential (JWT over CBS)", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ ...entities, sharedAccessKey: "secret-key" })
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("in").sendMessages({ body: "input" }))
      const scopes: Array<string | ReadonlyArray<string>> = []
      const credential: TokenCredential = {
        getToken: (scope) => {
          scopes.push(scope)
          return Promise.resolve<AccessToken>({ token: fakeJwt(), expiresOnTimestamp: Date.now() + 3_600_000 })
        }
      }
      const tx = yield* ServiceBusTransaction.makeSession({
        connection: { fullyQualifiedNamespace: `127.0.0.1:${emu.port}`, credential, useDevelopmentEmulator: true },
        entity: MessageReceiver.queue("in"),
        destinations: ["out"]
      })
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      yield* ServiceBusTransaction.run(tx, (t) => Effect.zipRight(t.complete(received), t.send("out", out("a", "a"))))
      assert.deepStrictEqual(yield* emu.admin.counts("out"), { ...empty, active: 1 })
      assert.include(scopes, "https://servicebus.azure.net/.default")
    }))

  it.scopedLive("a wrong SAS key is refused with Unauthorized", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ ...entities, sharedAccessKey: "secret-key" })
      const wrong = Redacted.make(Redacted.value(emu.connectionString).replace("secret-key", "wrong-key"))
      const error = yield* ServiceBusTransaction.makeSession({
        connection: { connectionString: wrong },
        entity: MessageReceiver.queue("in")
      }).pipe(Effect.flip)
      assert.strictEqual(error._tag, "Unauthorized")
    }))
})

describe("ServiceBusTransaction, concurrent transactions on one session", () => {
  it.scopedLive("commit or roll back independently, with no cross-talk between them", () =>
    Effect.gen(function*() {
      const n = 8
      const emu = yield* emulator(entities)
      yield* seed(emu, "in", Array.from({ length: n }, (_, i) => `m${i}`))
      const tx = yield* session(emu)
      const received: Array<Message.ReceivedMessage> = []
      while (received.length < n) received.push(...(yield* tx.receive(n - received.length, { maxWait: "5 seconds" })))
      // Every transaction has enlisted and flushed its work before any of them ends.
      const flushed = yield* Deferred.make<void>()
      let waiting = n
      const results = yield* Effect.all(
        received.map((message, i) =>
          ServiceBusTransaction.run(tx, (t) =>
            Effect.gen(function*() {
              yield* t.complete(message)
              yield* t.send("out", out(`out-${String(message.body)}`, `out-${i}`))
              yield* t.flush
              if (--waiting === 0) yield* Deferred.succeed(flushed, undefined)
              yield* Deferred.await(flushed)
              if (i % 2 === 1) return yield* Effect.fail(`body ${i} failed`)
              return { id: t.id, body: message.body }
            })).pipe(Effect.either)
        ),
        { concurrency: "unbounded" }
      )
      const committed = results.flatMap((r) => (r._tag === "Right" ? [r.right] : []))
      assert.deepStrictEqual(
        results.flatMap((r) => (r._tag === "Left" ? [r.left] : [])),
        ["body 1 failed", "body 3 failed", "body 5 failed", "body 7 failed"]
      )
      assert.strictEqual(new Set(committed.map((c) => c.id)).size, n / 2)
      // Exactly the committed transactions' sends and completions took effect.
      assert.deepStrictEqual(yield* emu.admin.counts("out"), { ...empty, active: n / 2 })
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, locked: n / 2 })
      const sb = yield* client(emu)
      const sent = yield* receiveAll(
        (k) =>
          sb.createReceiver("out", { receiveMode: "receiveAndDelete" }).receiveMessages(k, { maxWaitTimeInMs: 1000 }),
        n / 2
      )
      assert.deepStrictEqual(bodies(sent).sort(), committed.map((c) => `out-${String(c.body)}`).sort())
      // The rolled-back messages come back once their locks expire, and can be processed again.
      assert.strictEqual(yield* emu.faults.expireLocks("in"), n / 2)
      const again: Array<Message.ReceivedMessage> = []
      while (again.length < n / 2) again.push(...(yield* tx.receive(n / 2 - again.length, { maxWait: "5 seconds" })))
      assert.deepStrictEqual(again.map((m) => m.body).sort(), ["m1", "m3", "m5", "m7"])
      yield* Effect.all(again.map((m) => ServiceBusTransaction.run(tx, (t) => t.complete(m))), {
        concurrency: "unbounded"
      })
      assert.deepStrictEqual(yield* emu.admin.counts("in"), empty)
    }))

  it.scopedLive("many transactions in a row each get their own transaction id", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      yield* seed(emu, "in", ["a", "b", "c"])
      const tx = yield* session(emu)
      const ids: Array<string> = []
      for (let i = 0; i < 3; i++) {
        const [message] = yield* tx.receive(1, { maxWait: "5 seconds" })
        ids.push(yield* ServiceBusTransaction.run(tx, (t) => Effect.as(t.complete(message), t.id)))
      }
      assert.strictEqual(new Set(ids).size, 3)
      assert.deepStrictEqual(yield* emu.admin.counts("in"), empty)
    }))

  it.scopedLive("concurrent receives share the link: each message goes to exactly one of them", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      yield* seed(emu, "in", Array.from({ length: 6 }, (_, i) => `m${i}`))
      const tx = yield* session(emu)
      const batches = yield* Effect.all(
        Array.from({ length: 3 }, () => tx.receive(2, { maxWait: "5 seconds", maxWaitAfterFirst: "1 second" })),
        { concurrency: "unbounded" }
      )
      const all = batches.flat()
      assert.strictEqual(all.length, 6)
      assert.strictEqual(new Set(all.map((m) => m.lockToken)).size, 6)
      // An interrupted receive loses nothing: what it had taken goes to the next receive.
      const waiting = yield* Effect.fork(tx.receive(5, { maxWait: "5 seconds", maxWaitAfterFirst: "5 seconds" }))
      yield* seed(emu, "in", ["late"])
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(waiting)
      const [late] = yield* tx.receive(1, { maxWait: "5 seconds" })
      assert.strictEqual(late.body, "late")
    }))
})

const fakeJwt = (): string => {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url")
  return `${part({ alg: "none", typ: "JWT" })}.${part({ aud: "https://servicebus.azure.net" })}.signature`
}

describe("ServiceBusTransaction, lock renewal", () => {
  it.scopedLive("renews the lock through the management node and returns the new expiry", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "in", lockDuration: "30 seconds" }, { name: "out" }] })
      yield* seed(emu, "in", ["input"])
      const tx = yield* session(emu, ["out"])
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      const first = received.lockedUntil!.getTime()
      const renewed = yield* tx.renewLock(received)
      const now = Date.now()
      assert.isTrue(renewed.getTime() > first, "the expiry moves forward")
      assert.isTrue(renewed.getTime() > now + 25_000 && renewed.getTime() <= now + 30_000)
      // The renewed lock is the message's lock: it still completes, in a transaction.
      yield* ServiceBusTransaction.run(tx, (t) => t.complete(received))
      assert.deepStrictEqual(yield* emu.admin.counts("in"), empty)
      // Once settled, there is no lock left to renew.
      const gone = yield* tx.renewLock(received).pipe(Effect.flip)
      assert.strictEqual(gone._tag, "MessageLockLost")
    }))

  it.scopedLive("an expired lock is MessageLockLost; the SDK's renewal keeps working alongside", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      yield* seed(emu, "in", ["a", "b"])
      const tx = yield* session(emu)
      const [a, b] = yield* tx.receive(2, { maxWait: "5 seconds", maxWaitAfterFirst: "1 second" })
      assert.isTrue(yield* emu.faults.expireLock(a.lockToken!))
      const lost = yield* tx.renewLock(a).pipe(Effect.flip)
      assert.strictEqual(lost._tag, "MessageLockLost")
      // The other message's lock is untouched, and the SDK's management link renews it too.
      const ours = yield* tx.renewLock(b)
      const sb = yield* client(emu)
      const theirs = yield* run(() =>
        sb.createReceiver("in").renewMessageLock({ lockToken: b.lockToken, delivery: {} } as never)
      )
      assert.isTrue(theirs.getTime() >= ours.getTime())
    }))

  it.scopedLive("refuses to renew a lock of another entity's message", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      yield* seed(emu, "out", ["elsewhere"])
      const onOut = yield* ServiceBusTransaction.makeSession({
        connection: { connectionString: emu.connectionString },
        entity: MessageReceiver.queue("out")
      })
      const [other] = yield* onOut.receive(1, { maxWait: "5 seconds" })
      const tx = yield* session(emu)
      const refused = yield* tx.renewLock(other).pipe(Effect.flip)
      assert.strictEqual(refused._tag, "MessageLockLost")
      assert.isTrue((yield* onOut.renewLock(other)).getTime() > Date.now())
    }))
})

describe("ServiceBusTransaction, settling again after a rollback", () => {
  const rolledBack = (tx: ServiceBusTransaction.TransactionalSession, message: Message.ReceivedMessage) =>
    ServiceBusTransaction.run(tx, (t) =>
      Effect.gen(function*() {
        yield* t.complete(message)
        yield* t.send("out", out("lost", "lost"))
        yield* t.flush
        return yield* Effect.fail("handler failed" as const)
      })).pipe(Effect.flip)

  it.scopedLive("completes the message in a new transaction, with its sends, atomically", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      yield* seed(emu, "in", ["input"])
      const tx = yield* session(emu)
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      assert.strictEqual(yield* rolledBack(tx, received), "handler failed")
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, locked: 1 })
      yield* ServiceBusTransaction.run(tx, (t) =>
        Effect.gen(function*() {
          yield* t.complete(received)
          yield* t.send("out", out("kept", "kept"))
          yield* t.flush
          // Enlisted, not applied: the completion waits for the commit like the send.
          assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, locked: 1 })
          assert.deepStrictEqual(yield* emu.admin.counts("out"), empty)
        }))
      assert.deepStrictEqual(yield* emu.admin.counts("in"), empty)
      assert.deepStrictEqual(yield* emu.admin.counts("out"), { ...empty, active: 1 })
      // Settled for good: another settlement finds no lock.
      const again = yield* ServiceBusTransaction.run(tx, (t) => t.complete(received)).pipe(Effect.flip)
      assert.strictEqual(again._tag, "MessageLockLost")
      const outside = yield* tx.settle(received, { _tag: "Abandon" }).pipe(Effect.flip)
      assert.strictEqual(outside._tag, "MessageLockLost")
    }))

  it.scopedLive("rolls back a second time, then dead-letters with the reason", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      yield* seed(emu, "in", ["input"])
      const tx = yield* session(emu)
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      yield* rolledBack(tx, received)
      // The second attempt settles through the management node, and is rolled back as well.
      assert.strictEqual(yield* rolledBack(tx, received), "handler failed")
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, locked: 1 })
      assert.deepStrictEqual(yield* emu.admin.counts("out"), empty)
      yield* ServiceBusTransaction.run(tx, (t) =>
        t.deadLetter(received, { reason: "Poison", description: "failed twice", properties: { attempts: 2 } }))
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, deadLettered: 1 })
      const sb = yield* client(emu)
      const [dead] = yield* run(() =>
        sb.createReceiver("in", { subQueueType: "deadLetter" }).receiveMessages(1, { maxWaitTimeInMs: 5000 })
      )
      assert.strictEqual(dead.body, "input")
      assert.strictEqual(dead.deadLetterReason, "Poison")
      assert.strictEqual(dead.deadLetterErrorDescription, "failed twice")
      assert.strictEqual(dead.applicationProperties?.attempts, 2)
    }))

  it.scopedLive("abandons or defers outside a transaction after a rollback", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      yield* seed(emu, "in", ["first", "second"])
      const tx = yield* session(emu)
      const [first, second] = yield* tx.receive(2, { maxWait: "5 seconds", maxWaitAfterFirst: "1 second" })
      yield* rolledBack(tx, first)
      yield* rolledBack(tx, second)
      yield* tx.settle(first, { _tag: "Abandon", properties: { retried: true } })
      yield* tx.settle(second, { _tag: "Defer" })
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, active: 1, deferred: 1 })
      // The abandoned message is delivered again at once, one delivery later, with its property.
      const [again] = yield* tx.receive(1, { maxWait: "5 seconds" })
      assert.strictEqual(again.body, "first")
      assert.strictEqual(again.deliveryCount, 2)
      assert.strictEqual(again.applicationProperties?.retried, true)
    }))

  it.scopedLive("a lock that expired after the rollback is MessageLockLost, and the commit does not happen", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(entities)
      yield* seed(emu, "in", ["input"])
      const tx = yield* session(emu)
      const [received] = yield* tx.receive(1, { maxWait: "5 seconds" })
      yield* rolledBack(tx, received)
      assert.isTrue(yield* emu.faults.expireLock(received.lockToken!))
      const error = yield* ServiceBusTransaction.run(
        tx,
        (t) => Effect.zipRight(t.complete(received), t.send("out", out("never", "never")))
      ).pipe(Effect.flip)
      assert.strictEqual(error._tag, "MessageLockLost")
      assert.deepStrictEqual(yield* emu.admin.counts("out"), empty)
      assert.deepStrictEqual(yield* emu.admin.counts("in"), { ...empty, active: 1 })
    }))
})

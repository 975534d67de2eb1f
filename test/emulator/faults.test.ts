import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { connect } from "node:net"
import rhea from "rhea"
import { attempt, client, emulator, run } from "./support.js"

describe("ServiceBusEmulator fault injection and bad input", () => {
  it.scopedLive("refuses the next operations with server-busy", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "orders" }] })
      const sb = yield* client(emu, { maxRetries: 0 })
      const sender = sb.createSender("orders")
      yield* run(() => sender.sendMessages({ body: "warm-up" }))
      yield* emu.faults.refuseNext(1)
      const error = yield* Effect.flip(attempt(() => sender.sendMessages({ body: "refused" })))
      assert.strictEqual(error.code, "ServiceBusy")
      yield* run(() => sender.sendMessages({ body: "accepted" }))
      const receiver = sb.createReceiver("orders", { receiveMode: "receiveAndDelete" })
      const messages = yield* run(() => receiver.receiveMessages(5, { maxWaitTimeInMs: 500 }))
      assert.deepStrictEqual(messages.map((m) => m.body), ["warm-up", "accepted"])
    }))

  it.scopedLive("a client with retries rides over refusals", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "orders" }] })
      const sb = yield* client(emu, { maxRetries: 3 })
      yield* emu.faults.refuseNext(2)
      yield* run(() => sb.createSender("orders").sendMessages({ body: "eventually" }))
      assert.strictEqual((yield* emu.admin.counts("orders")).active, 1)
    }))

  it.scopedLive("delays operations", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "orders" }] })
      const sb = yield* client(emu)
      const sender = sb.createSender("orders")
      yield* run(() => sender.sendMessages({ body: "warm-up" }))
      yield* emu.faults.delay("300 millis", { count: 1 })
      const started = Date.now()
      yield* run(() => sender.sendMessages({ body: "slow" }))
      assert.isAtLeast(Date.now() - started, 280)
      const again = Date.now()
      yield* run(() => sender.sendMessages({ body: "fast" }))
      assert.isBelow(Date.now() - again, 280)
    }))

  it.scopedLive("closes connections; the SDK reconnects", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "orders" }] })
      const sb = yield* client(emu, { maxRetries: 5 })
      const sender = sb.createSender("orders")
      yield* run(() => sender.sendMessages({ body: "before" }))
      assert.isAtLeast(yield* emu.faults.closeConnections(), 1)
      yield* run(() => sender.sendMessages({ body: "after" }))
      assert.strictEqual((yield* emu.admin.counts("orders")).active, 2)
      // A dropped socket is seen by the send in flight (the SDK does not retry that one); the
      // client is usable again afterwards.
      assert.isAtLeast(yield* emu.faults.closeConnections({ abrupt: true }), 1)
      yield* Effect.either(attempt(() => sender.sendMessages({ body: "during" })))
      yield* run(() => sender.sendMessages({ body: "after abrupt" }))
      assert.isAtLeast((yield* emu.admin.counts("orders")).active, 3)
    }))

  it.scopedLive("expires a lock now: settling fails with lock lost and the message comes back", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "orders" }] })
      const sb = yield* client(emu, { maxRetries: 0 })
      yield* run(() => sb.createSender("orders").sendMessages({ body: "locked" }))
      const receiver = sb.createReceiver("orders", { maxAutoLockRenewalDurationInMs: 0 })
      const [message] = yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 2000 }))
      assert.isTrue(yield* emu.faults.expireLock(message.lockToken!))
      assert.isFalse(yield* emu.faults.expireLock(message.lockToken!))
      const error = yield* Effect.flip(attempt(() => receiver.completeMessage(message)))
      assert.strictEqual(error.code, "MessageLockLost")
      const renewError = yield* Effect.flip(attempt(() => receiver.renewMessageLock(message)))
      assert.strictEqual(renewError.code, "MessageLockLost")
      const [again] = yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 2000 }))
      assert.strictEqual(again.body, "locked")
      assert.strictEqual(again.deliveryCount, 1)
      yield* run(() => receiver.completeMessage(again))
    }))

  it.scopedLive("answers malformed frames by closing that socket and keeps serving others", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "orders" }] })
      const sb = yield* client(emu)
      const sender = sb.createSender("orders")
      yield* run(() => sender.sendMessages({ body: "before" }))
      const closed = (bytes: Buffer) =>
        Effect.promise(() =>
          new Promise<void>((resolve) => {
            const socket = connect(emu.port, "127.0.0.1", () => socket.write(bytes))
            socket.on("error", () => resolve())
            socket.on("close", () => resolve())
            socket.resume()
          })
        )
      // A bad protocol header, then a valid header followed by a frame of garbage.
      yield* closed(Buffer.from("GET / HTTP/1.1\r\n\r\n"))
      yield* closed(
        Buffer.concat([
          Buffer.from([0x41, 0x4d, 0x51, 0x50, 0, 1, 0, 0]),
          Buffer.from([0, 0, 0, 12, 2, 0, 0, 0, 0xff, 0xee, 0xdd, 0xcc])
        ])
      )
      yield* run(() => sender.sendMessages({ body: "after" }))
      assert.strictEqual((yield* emu.admin.counts("orders")).active, 2)
    }))

  it.scopedLive("rejects an oversized transfer on the server side, and an undecodable one", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "small", maxMessageSizeInKilobytes: 1 }] })
      const outcome = (payload: Buffer) =>
        Effect.promise(() =>
          new Promise<string>((resolve) => {
            const container = rhea.create_container()
            const connection = container.connect({ host: "127.0.0.1", port: emu.port, reconnect: false })
            const sender = connection.open_sender("small")
            sender.once("sendable", () => sender.send(payload, undefined, 0))
            const done = (state: string) => {
              connection.close()
              resolve(state)
            }
            sender.on("accepted", () => done("accepted"))
            sender.on("rejected", (ctx) => done(String(ctx.delivery?.remote_state?.error?.condition)))
          })
        )
      const message = (body: Buffer) => rhea.message.encode({ body: rhea.message.data_section(body) })
      assert.strictEqual(yield* outcome(message(Buffer.alloc(2048))), "amqp:link:message-size-exceeded")
      assert.strictEqual(yield* outcome(Buffer.from([0x00, 0x53, 0x75, 0xff])), "amqp:decode-error")
      assert.strictEqual(yield* outcome(message(Buffer.alloc(10))), "accepted")
    }))

  it.scopedLive("reports a settlement with an unknown lock token as lock lost", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "orders" }] })
      const sb = yield* client(emu, { maxRetries: 0 })
      yield* run(() => sb.createSender("orders").sendMessages({ body: "x" }))
      const receiver = sb.createReceiver("orders")
      const [message] = yield* run(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 2000 }))
      yield* run(() => receiver.completeMessage(message))
      // A deferred-style settlement goes through $management with the token alone.
      const forged = {
        ...message,
        lockToken: "00000000-0000-0000-0000-000000000001",
        delivery: { remote_settled: false }
      }
      const error = yield* Effect.flip(
        attempt(() => receiver.completeMessage(forged as unknown as typeof message))
      )
      assert.strictEqual(error.code, "MessageLockLost")
    }))
})

// The via-entity rule: on a transactional session, the first entity link is the via entity;
// sends to other entities join its transactions, settlements of another entity's messages do not.
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as MessageReceiver from "../../src/MessageReceiver.js"
import * as ServiceBusTransaction from "../../src/ServiceBusTransaction.js"
import { client, emulator, run } from "./support.js"

describe("ServiceBusEmulator via entity", () => {
  it.scopedLive("refuses a transactional settlement of a message from an entity other than the via entity", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "a" }, { name: "b" }] })
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("a").sendMessages({ body: "from a" }))
      yield* run(() => sb.createSender("b").sendMessages({ body: "from b" }))
      const connection = { connectionString: emu.connectionString }
      // Session 1 works through "a"; session 2 receives from "b".
      const viaA = yield* ServiceBusTransaction.makeSession({ connection, entity: MessageReceiver.queue("a") })
      const onB = yield* ServiceBusTransaction.makeSession({ connection, entity: MessageReceiver.queue("b") })
      const [fromB] = yield* onB.receive(1, { maxWait: "5 seconds" })
      // A message of "b" is not open on session 1's receive link, and its lock token is unknown
      // to the management node of "a": refused.
      const refused = yield* ServiceBusTransaction.run(viaA, (tx) => tx.complete(fromB)).pipe(Effect.flip)
      assert.strictEqual(refused._tag, "MessageLockLost")
      // Sending to "b" through the via entity "a" works.
      const [fromA] = yield* viaA.receive(1, { maxWait: "5 seconds" })
      yield* ServiceBusTransaction.run(
        viaA,
        (tx) => Effect.zipRight(tx.complete(fromA), tx.send("b", { body: "via a", messageId: "v-1" }))
      )
      assert.strictEqual((yield* emu.admin.counts("a")).active, 0)
      assert.strictEqual((yield* emu.admin.counts("b")).active, 1)
      assert.strictEqual((yield* emu.admin.counts("b")).locked, 1)
    }))
})

// Claims-based security as the SDK and TokenCredential clients use it, driven with raw rhea.
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import rhea from "rhea"
import { emulator } from "./support.js"

const jwt = (payload: object) =>
  [{ alg: "RS256", typ: "JWT" }, payload].map((part) => Buffer.from(JSON.stringify(part)).toString("base64url")).join(
    "."
  ) +
  ".c2lnbmF0dXJl"

/** Puts a token on `$cbs`, then attaches a receiver to `entity`; reports both outcomes. */
const putTokenThenAttach = (port: number, type: string, token: string, entity: string) =>
  Effect.promise(() =>
    new Promise<{ readonly status: number; readonly attach: string }>((resolve) => {
      const container = rhea.create_container()
      const connection = container.connect({ host: "127.0.0.1", port, reconnect: false })
      const replyTo = "cbs-reply"
      const receiver = connection.open_receiver({ source: { address: "$cbs" }, target: { address: replyTo } })
      const sender = connection.open_sender("$cbs")
      let status = 0
      receiver.on("message", (ctx) => {
        status = Number(ctx.message?.application_properties?.["status-code"])
        const link = connection.open_receiver(entity)
        link.on("receiver_open", () => {
          // A refused attach comes back without a source, followed by a detach with the reason.
          if (typeof link.source?.address === "string") finish("attached")
        })
        link.on("receiver_error", () =>
          finish(String(link.error && "condition" in link.error ? link.error.condition : "error")))
      })
      const finish = (attach: string) => {
        connection.close()
        resolve({ status, attach })
      }
      sender.once("sendable", () =>
        sender.send({
          message_id: "put-1",
          reply_to: replyTo,
          application_properties: { operation: "put-token", type, name: `sb://127.0.0.1:${port}/${entity}` },
          body: token
        }))
    })
  )

describe("ServiceBusEmulator claims-based security", () => {
  it.scopedLive("accepts a well-formed JWT and authorizes the audience", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "orders" }], sharedAccessKey: "k" })
      const result = yield* putTokenThenAttach(emu.port, "jwt", jwt({ aud: "https://servicebus.azure.net" }), "orders")
      assert.deepStrictEqual(result, { status: 202, attach: "attached" })
    }))

  it.scopedLive("refuses a malformed JWT, and links without a token", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "orders" }], sharedAccessKey: "k" })
      const result = yield* putTokenThenAttach(emu.port, "jwt", "not-a-jwt", "orders")
      assert.deepStrictEqual(result, { status: 401, attach: "amqp:unauthorized-access" })
    }))

  it.scopedLive("refuses JWTs when acceptJwt is off", () =>
    Effect.gen(function*() {
      const emu = yield* emulator({ queues: [{ name: "orders" }], sharedAccessKey: "k", acceptJwt: false })
      const result = yield* putTokenThenAttach(emu.port, "jwt", jwt({}), "orders")
      assert.strictEqual(result.status, 401)
    }))
})

import { ServiceBusClient } from "@azure/service-bus"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { spawn } from "node:child_process"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const BIN = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "bin", "effect-eventually-emulator.js")

describe("effect-eventually-emulator CLI", () => {
  it.scopedLive("starts from a config file, serves the SDK, and stops on SIGTERM", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "emulator-cli-"))
      const config = join(dir, "entities.json")
      writeFileSync(
        config,
        JSON.stringify({
          queues: [{ name: "orders", lockDuration: "PT30S", maxDeliveryCount: 3 }],
          topics: [{ name: "events", subscriptions: [{ name: "eu", filter: { sql: "user.region = 'eu'" } }] }]
        })
      )
      const child = spawn(process.execPath, [BIN, "--port", "0", "--config", config, "--key", "cli-key"], {
        stdio: ["ignore", "pipe", "pipe"]
      })
      const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
      yield* Effect.addFinalizer(() => Effect.sync(() => child.kill("SIGKILL")))
      const connectionString = yield* Effect.promise(() =>
        new Promise<string>((resolve, reject) => {
          let out = ""
          child.stdout.on("data", (chunk: Buffer) => {
            out += chunk.toString()
            const match = /Connection string: (\S+)/.exec(out)
            if (match !== null) resolve(match[1])
          })
          child.on("exit", (code) => reject(new Error(`the CLI exited with ${code}`)))
        })
      )
      assert.match(
        connectionString,
        /^Endpoint=sb:\/\/127\.0\.0\.1:\d+;.*SharedAccessKey=cli-key;UseDevelopmentEmulator=true$/
      )
      const sb = new ServiceBusClient(connectionString)
      yield* Effect.promise(() =>
        sb.createSender("events").sendMessages({ body: "hi", applicationProperties: { region: "eu" } })
      )
      const [message] = yield* Effect.promise(() =>
        sb.createReceiver("events", "eu", { receiveMode: "receiveAndDelete" }).receiveMessages(1, {
          maxWaitTimeInMs: 5000
        })
      )
      assert.strictEqual(message.body, "hi")
      yield* Effect.promise(() => sb.close())
      child.kill("SIGTERM")
      assert.strictEqual(yield* Effect.promise(() => exited), 0)
    }), 30_000)

  it.scopedLive("rejects an invalid config file with a readable message", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "emulator-cli-"))
      const config = join(dir, "entities.json")
      writeFileSync(config, JSON.stringify({ queues: [{ lockDuration: "PT30S" }] }))
      const child = spawn(process.execPath, [BIN, "--port", "0", "--config", config], {
        stdio: ["ignore", "pipe", "pipe"]
      })
      let stderr = ""
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
      const code = yield* Effect.promise(() => new Promise<number | null>((resolve) => child.on("exit", resolve)))
      assert.strictEqual(code, 2)
      assert.include(stderr, "does not match the expected shape")
    }), 30_000)
})

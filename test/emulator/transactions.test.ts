// AMQP transactions, driven by Apache Qpid Proton (Python), a client that shares no code with the
// emulator; the results are read back with the official SDK.
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { spawn, spawnSync } from "node:child_process"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import type { ServiceBusEmulator } from "../../src/emulator/index.js"
import { bodies, client, emulator, run } from "./support.js"

const PYTHON = "/usr/bin/python3"
const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), "python", "transactions.py")
const KEY = "transaction-test-key"
const hasProton = spawnSync(PYTHON, ["-c", "import proton"], { stdio: "ignore" }).status === 0
const MISSING = `${PYTHON} cannot import proton: install the Debian package python3-qpid-proton ` +
  `(apt-get install python3-qpid-proton) to run the transaction tests.`
if (!hasProton && !process.env.CI) console.warn(`Skipping the emulator transaction tests: ${MISSING}`)

interface ScriptResult {
  readonly scenario: string
  readonly result?: string
  readonly received?: unknown
  readonly condition?: string | null
  readonly rejectedSends?: number
}

/** Runs one scenario; `onPending` runs while the script holds its transaction open. */
const proton = (
  emu: ServiceBusEmulator.Emulator,
  scenario: string,
  options: { readonly onPending?: () => Promise<void>; readonly env?: Record<string, string> } = {}
): Effect.Effect<ScriptResult> =>
  Effect.promise(() =>
    new Promise<ScriptResult>((resolve, reject) => {
      const child = spawn(
        PYTHON,
        [SCRIPT, "127.0.0.1", String(emu.port), "RootManageSharedAccessKey", KEY, scenario, "in", "out"],
        {
          env: { ...process.env, ...options.env, EMULATOR_HOLD: options.onPending === undefined ? "0" : "1" },
          stdio: ["pipe", "pipe", "pipe"]
        }
      )
      let stdout = ""
      let stderr = ""
      let result: ScriptResult | undefined
      const timer = setTimeout(() => child.kill(), 20_000)
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
      child.stdout.on("data", (chunk: Buffer) => {
        stdout += chunk.toString()
        let newline: number
        while ((newline = stdout.indexOf("\n")) >= 0) {
          const line = stdout.slice(0, newline)
          stdout = stdout.slice(newline + 1)
          const parsed = JSON.parse(line) as ScriptResult & { readonly pending?: boolean }
          if (parsed.pending === true) {
            options.onPending!().then(() => child.stdin.write("go\n"), reject)
          } else {
            result = parsed
          }
        }
      })
      child.on("close", (code) => {
        clearTimeout(timer)
        if (result !== undefined && code === 0) resolve(result)
        else reject(new Error(`transactions.py ${scenario} exited with ${code}: ${stderr}`))
      })
    })
  )

const options = (extra: Partial<ServiceBusEmulator.Options> = {}): ServiceBusEmulator.Options => ({
  sharedAccessKey: KEY,
  queues: [{ name: "in" }, { name: "out" }],
  ...extra
})

const counts = (emu: ServiceBusEmulator.Emulator, path: string) => Effect.runPromise(emu.admin.counts(path))

describe.skipIf(!hasProton && !process.env.CI)("ServiceBusEmulator transactions (Qpid Proton client)", () => {
  it.effect("has Qpid Proton for Python", () => Effect.sync(() => assert.isTrue(hasProton, MISSING)))

  it.scopedLive("commits a receive-complete and two sends atomically; nothing shows before", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(options())
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("in").sendMessages({ body: "input" }))
      const result = yield* proton(emu, "commit", {
        onPending: async () => {
          assert.deepStrictEqual(await counts(emu, "out"), {
            active: 0,
            locked: 0,
            deferred: 0,
            scheduled: 0,
            deadLettered: 0
          })
          assert.strictEqual((await counts(emu, "in")).locked, 1)
        }
      })
      assert.strictEqual(result.result, "committed")
      assert.strictEqual(result.received, "input")
      const out = sb.createReceiver("out", { receiveMode: "receiveAndDelete" })
      const sent = yield* run(() => out.receiveMessages(10, { maxWaitTimeInMs: 1000 }))
      assert.deepStrictEqual(bodies(sent).map(String), ["tx-0", "tx-1"])
      assert.deepStrictEqual(yield* emu.admin.counts("in"), {
        active: 0,
        locked: 0,
        deferred: 0,
        scheduled: 0,
        deadLettered: 0
      })
    }))

  it.scopedLive("rolls back: the sends vanish and the message stays to be redelivered", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(options())
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("in").sendMessages({ body: "input" }))
      const result = yield* proton(emu, "rollback", {
        onPending: async () => assert.strictEqual((await counts(emu, "out")).active, 0)
      })
      assert.strictEqual(result.result, "aborted")
      assert.strictEqual((yield* emu.admin.counts("out")).active, 0)
      assert.strictEqual(yield* emu.faults.expireLocks("in"), 1)
      const [again] = yield* run(() => sb.createReceiver("in").receiveMessages(1, { maxWaitTimeInMs: 2000 }))
      assert.strictEqual(again.body, "input")
      assert.strictEqual(again.deliveryCount, 1)
    }))

  it.scopedLive("rolls back when the connection drops before the discharge", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(options())
      const sb = yield* client(emu)
      yield* run(() => sb.createSender("in").sendMessages({ body: "input" }))
      const result = yield* proton(emu, "disconnect")
      assert.strictEqual(result.result, "closed")
      assert.strictEqual((yield* emu.admin.counts("out")).active, 0)
      assert.strictEqual((yield* emu.admin.counts("in")).locked, 1)
      assert.strictEqual(yield* emu.faults.expireLocks("in"), 1)
      assert.strictEqual((yield* emu.admin.counts("in")).active, 1)
    }))

  it.scopedLive("times a transaction out after its first operation", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(options({ transactionTimeout: "300 millis" }))
      const result = yield* proton(emu, "timeout", { env: { EMULATOR_TIMEOUT_WAIT: "0.6" } })
      assert.strictEqual(result.result, "commit_failed")
      assert.strictEqual(result.condition, "amqp:transaction:timeout")
      assert.strictEqual((yield* emu.admin.counts("out")).active, 0)
    }))

  it.scopedLive("refuses a 101st operation and rolls the transaction back", () =>
    Effect.gen(function*() {
      const emu = yield* emulator(options())
      const result = yield* proton(emu, "overflow")
      assert.strictEqual(result.result, "commit_failed")
      assert.strictEqual(result.condition, "amqp:transaction:rollback")
      assert.strictEqual(result.rejectedSends, 1)
      assert.strictEqual((yield* emu.admin.counts("out")).active, 0)
    }))
})

// Interoperability with an independent AMQP 1.0 implementation: Qpid Proton's Python client
// (system package python3-qpid-proton) declares, sends inside the transaction and discharges
// against the rhea test coordinator built on this codec. Skipped where Proton is not installed.
import { assert, describe, it } from "@effect/vitest"
import { Effect, Option, Queue } from "effect"
import { spawn, spawnSync } from "node:child_process"
import { startServer } from "./rheaTestKit.js"

const PYTHON = "/usr/bin/python3"
const protonAvailable = spawnSync(PYTHON, ["-c", "import proton"], { stdio: "ignore" }).status === 0

const CLIENT = `
import sys
from proton import Message
from proton.handlers import MessagingHandler, TransactionHandler
from proton.reactor import Container

class Client(MessagingHandler, TransactionHandler):
    def __init__(self, url, fail):
        super(Client, self).__init__()
        self.url = url
        self.fail = fail
    def on_start(self, event):
        self.conn = event.container.connect(self.url)
        self.sender = event.container.create_sender(self.conn, "proton-queue")
        event.container.declare_transaction(self.conn, handler=self)
    def on_transaction_declared(self, event):
        self.txn = event.transaction
        print("declared", bytes(self.txn.id).hex(), flush=True)
        self.txn.send(self.sender, Message(body=u"from proton"))
        if self.fail:
            self.txn.abort()
        else:
            self.txn.commit()
    def on_transaction_committed(self, event):
        print("committed", flush=True)
        self.conn.close()
    def on_transaction_aborted(self, event):
        print("aborted", flush=True)
        self.conn.close()
    def on_transaction_declare_failed(self, event):
        print("declare-failed", flush=True)
        self.conn.close()

Container(Client(sys.argv[1], sys.argv[2] == "abort")).run()
`

const runProton = (port: number, mode: "commit" | "abort") =>
  Effect.async<{ readonly code: number | null; readonly stdout: string; readonly stderr: string }>((resume) => {
    const child = spawn(PYTHON, ["-c", CLIENT, `127.0.0.1:${port}`, mode], { stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.on("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
    return Effect.sync(() => child.kill())
  })

describe.skipIf(!protonAvailable && !process.env.CI)("Qpid Proton client against the rhea coordinator", () => {
  for (const mode of ["commit", "abort"] as const) {
    it.scoped(`declare, transactional send and ${mode}`, () =>
      Effect.gen(function*() {
        const server = yield* startServer()
        const result = yield* runProton(server.port, mode)
        assert.strictEqual(result.code, 0, result.stderr)
        const txnId = yield* Queue.take(server.declared)
        assert.include(result.stdout, `declared ${txnId.toString("hex")}`)
        assert.include(result.stdout, mode === "commit" ? "committed" : "aborted")
        // Proton's coordinator attach carries its capability, and its transfer the txn-id.
        const attached = yield* Queue.take(server.coordinatorAttached)
        assert.include(attached.capabilities, "amqp:local-transactions")
        const transfer = yield* Queue.take(server.transfers)
        assert.strictEqual(transfer.address, "proton-queue")
        assert.deepStrictEqual(Option.map(transfer.txn, (t) => t.txnId), Option.some(txnId))
        assert.deepStrictEqual(yield* Queue.take(server.discharges), {
          _tag: "Discharge",
          txnId,
          fail: mode === "abort"
        })
      }))
  }
})

// The short chaos run of CI: `run.ts` with a fixed seed, a few seconds of faults in each mode,
// as a child process; it must exit with 0 and print every invariant as holding. Longer runs and
// other seeds: docs/chaos.md.
import { assert, describe, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { spawn } from "node:child_process"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const script = join(dirname(fileURLToPath(import.meta.url)), "run.ts")

const Result = Schema.Struct({
  seed: Schema.String,
  mode: Schema.String,
  ok: Schema.Boolean,
  invariants: Schema.Array(Schema.Struct({
    name: Schema.String,
    value: Schema.String,
    expected: Schema.String,
    ok: Schema.Boolean
  })),
  faults: Schema.Record({ key: Schema.String, value: Schema.Number })
})

const chaos = (mode: "atomic" | "idempotent") =>
  Effect.async<{ readonly code: number | null; readonly stdout: string; readonly stderr: string }>((resume) => {
    const child = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        script,
        ...["--duration", "10s", "--seed", "2026", "--mode", mode, "--drain-timeout", "90s"]
      ],
      { stdio: ["ignore", "pipe", "pipe"] }
    )
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.on("exit", (code) => resume(Effect.succeed({ code, stdout, stderr })))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

const mustBeZero = [
  "messages whose effect happened more than once",
  "projection documents that differ from a fold",
  "messages completed without their sends",
  "dead-lettered messages"
]

describe("chaos run (short, fixed seed)", () => {
  for (const mode of ["atomic", "idempotent"] as const) {
    it.live(`${mode} mode: every invariant holds after faults and a drain`, () =>
      Effect.gen(function*() {
        const run = yield* chaos(mode)
        assert.strictEqual(run.code, 0, `${run.stdout}\n${run.stderr}`)
        const line = run.stdout.split("\n").find((line) => line.startsWith("CHAOS_RESULT "))
        assert.isDefined(line, run.stdout)
        const result = Schema.decodeUnknownSync(Schema.parseJson(Result))(line!.slice("CHAOS_RESULT ".length))
        assert.strictEqual(result.mode, mode)
        assert.isTrue(result.ok)
        for (const invariant of result.invariants) assert.isTrue(invariant.ok, `${invariant.name}: ${invariant.value}`)
        // The printed table says the same.
        for (const name of mustBeZero) assert.match(run.stdout, new RegExp(`${name}\\s+0\\s+= 0\\s+ok`))
        const value = (name: string) => Number(result.invariants.find((invariant) => invariant.name === name)?.value)
        assert.isAbove(value("commands accepted"), 0)
        assert.strictEqual(value("events dispatched (each at least once)"), value("events stored"))
        assert.strictEqual(value("events applied to summaries"), value("events stored"))
        // Faults of several kinds were injected, not a quiet run.
        const kinds = Object.entries(result.faults).filter(([, count]) => count > 0)
        assert.isAtLeast(kinds.length, 3, JSON.stringify(result.faults))
      }), { timeout: 150_000 })
  }
})

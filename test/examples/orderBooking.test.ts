// The order-booking example end to end: the app in process (HTTP API, outbox, both processors)
// on Azurite and the Service Bus emulator, then the example run the way its README says, as a
// child process: once with `--once`, once serving until SIGTERM.
import { assert, describe, inject, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Schedule, Schema } from "effect"
import { spawn } from "node:child_process"
import { makeApp } from "../../examples/order-booking/app.js"

const azurite = inject("azurite")

// The app's configuration: the shared Azurite with tables of its own; no Service Bus settings,
// so the app starts the emulator in process.
const runSuffix = Math.random().toString(36).slice(2, 8)
const configOf = (suffix: string) =>
  ConfigProvider.fromMap(
    new Map([
      ["AZURE_STORAGE_CONNECTION_STRING", azurite.connectionString],
      ["EVENT_STORE_TABLE", `obevents${suffix}`],
      ["PROJECTION_TABLE", `obprojections${suffix}`]
    ])
  )

const Response = Schema.Struct({ status: Schema.Number, body: Schema.Unknown })

const request = (method: "GET" | "POST", url: string, body?: unknown) =>
  Effect.tryPromise(async () => {
    const response = await fetch(url, {
      method,
      headers: { "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) })
    })
    const text = await response.text()
    return Response.make({ status: response.status, body: text === "" ? null : JSON.parse(text) as unknown })
  })

const Command = Schema.Struct({ bookingId: Schema.String, version: Schema.Int, status: Schema.String })
const Summary = Schema.Struct({
  bookingId: Schema.String,
  status: Schema.String,
  roomId: Schema.String,
  guests: Schema.Array(Schema.String),
  cancelReason: Schema.NullOr(Schema.String),
  version: Schema.Int
})
const Notifications = Schema.Struct({
  bookingId: Schema.String,
  notifications: Schema.Array(Schema.Struct({ kind: Schema.String, bookingId: Schema.String }))
})

class NotYet extends Schema.TaggedError<NotYet>()("NotYet", { what: Schema.String }) {}

// Polls until `check` accepts the answer: the projection and the notification records are the
// signal, read through the API as a client would.
const eventually = <A>(what: string, attempt: Effect.Effect<A, unknown>, check: (value: A) => boolean) =>
  attempt.pipe(
    Effect.filterOrFail(check, () => new NotYet({ what })),
    Effect.retry({ schedule: Schedule.spaced("25 millis"), while: (error) => error instanceof NotYet }),
    Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error(`timed out waiting for ${what}`) })
  )

const booking = (bookingId: string) => ({
  bookingId,
  roomId: "204",
  capacity: 2,
  checkIn: "2030-05-01T00:00:00.000Z",
  checkOut: "2030-05-04T00:00:00.000Z",
  guests: ["Ada Lovelace"]
})

describe("order-booking example", () => {
  for (const mode of ["atomic", "idempotent"] as const) {
    it.scopedLive(
      `commands through the HTTP API reach the summaries and the notification records (${mode} mode)`,
      () =>
        Effect.gen(function*() {
          const suffix = `${runSuffix}${mode.slice(0, 1)}`
          const app = yield* makeApp({ port: 0, mode }).pipe(Effect.withConfigProvider(configOf(suffix)))
          const post = (path: string, body: unknown = {}) => request("POST", `${app.url}${path}`, body)
          const get = (path: string) => request("GET", `${app.url}${path}`)
          const [confirmed, cancelled, both] = ["a", "b", "c"].map((id) => `${suffix}-${id}`) as [
            string,
            string,
            string
          ]

          for (const id of [confirmed, cancelled, both]) {
            const placed = yield* post("/bookings", booking(id))
            assert.strictEqual(placed.status, 201)
            // BookingPlaced and one GuestAdded.
            assert.strictEqual(Schema.decodeUnknownSync(Command)(placed.body).version, 2)
          }
          assert.strictEqual((yield* post(`/bookings/${confirmed}/confirm`)).status, 200)
          assert.strictEqual((yield* post(`/bookings/${cancelled}/cancel`, { reason: "flight cancelled" })).status, 200)
          assert.strictEqual((yield* post(`/bookings/${both}/confirm`)).status, 200)
          const last = yield* post(`/bookings/${both}/cancel`, {})
          assert.deepStrictEqual(Schema.decodeUnknownSync(Command)(last.body), {
            bookingId: both,
            version: 4,
            status: "Cancelled"
          })

          // Refusals: typed domain errors become 404, 409 and 422; nothing is recorded.
          assert.strictEqual((yield* post(`/bookings/${cancelled}/confirm`)).status, 409)
          assert.strictEqual((yield* post(`/bookings/${suffix}-none/confirm`)).status, 404)
          assert.strictEqual(
            (yield* post("/bookings", { ...booking(`${suffix}-d`), guests: ["A", "B", "C"] })).status,
            422
          )
          assert.strictEqual((yield* post("/bookings", { roomId: "1" })).status, 400)

          const summaryOf = (id: string) => Effect.map(get(`/bookings/${id}`), (response) => response.body)
          const expected = [
            { id: confirmed, status: "Confirmed", version: 3, kinds: ["BookingConfirmed"] },
            { id: cancelled, status: "Cancelled", version: 3, kinds: ["BookingCancelled"] },
            { id: both, status: "Cancelled", version: 4, kinds: ["BookingConfirmed", "BookingCancelled"] }
          ]
          for (const { id, kinds, status, version } of expected) {
            const summary = yield* eventually(
              `the summary of ${id} at version ${version}`,
              Effect.map(summaryOf(id), Schema.decodeUnknownOption(Summary)),
              (value) => value._tag === "Some" && value.value.version === version
            )
            assert.strictEqual(summary._tag === "Some" && summary.value.status, status)
            assert.deepStrictEqual(summary._tag === "Some" && summary.value.guests, ["Ada Lovelace"])
            const recorded = yield* eventually(
              `the notifications of ${id}`,
              Effect.map(
                get(`/bookings/${id}/notifications`),
                (response) => Schema.decodeUnknownSync(Notifications)(response.body)
              ),
              (value) => value.notifications.length === kinds.length
            )
            assert.deepStrictEqual(recorded.notifications.map((notification) => notification.kind), kinds)
          }
          const cancelledSummary = Schema.decodeUnknownSync(Summary)(yield* summaryOf(cancelled))
          assert.strictEqual(cancelledSummary.cancelReason, "flight cancelled")
          assert.strictEqual((yield* get(`/bookings/${suffix}-none`)).status, 404)

          // Every message committed, none dead-lettered; a notification per change, no duplicate.
          const stats = yield* eventually(
            "the notification processor to commit",
            app.stats,
            (value) => value.notificationProcessor.completed >= 4 && value.bookingProcessor.completed >= value.events
          )
          assert.strictEqual(stats.events, 10)
          assert.strictEqual(stats.notificationsRecorded, 4)
          assert.strictEqual(stats.bookingProcessor.deadLettered + stats.notificationProcessor.deadLettered, 0)
          assert.strictEqual(stats.latency.count, 7)
        }),
      { timeout: 60_000 }
    )
  }

  // The README's way: no Azure settings, so Azurite and the emulator start in the child.
  const exampleEnv = () => {
    const env = { ...process.env }
    for (const name of Object.keys(env)) {
      if (name.startsWith("AZURE_") || name.startsWith("SERVICEBUS_")) delete env[name]
    }
    return env
  }

  const runExample = (args: ReadonlyArray<string>, onLine: (line: string, stop: () => void) => void) =>
    Effect.async<{ readonly code: number | null; readonly stdout: string; readonly stderr: string }>((resume) => {
      const child = spawn(process.execPath, ["--import", "tsx", "examples/order-booking/main.ts", ...args], {
        env: exampleEnv(),
        stdio: ["ignore", "pipe", "pipe"]
      })
      let stdout = ""
      let stderr = ""
      child.stdout.on("data", (chunk: Buffer) => {
        const text = chunk.toString()
        stdout += text
        for (const line of text.split("\n")) onLine(line, () => child.kill("SIGTERM"))
      })
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
      child.on("exit", (code) => resume(Effect.succeed({ code, stdout, stderr })))
      return Effect.sync(() => child.kill("SIGKILL"))
    })

  it.live("npm start -- --once: drives a load, prints the summary and exits", () =>
    Effect.gen(function*() {
      const run = yield* runExample(["--once", "--bookings", "10"], () => {}).pipe(Effect.timeout("50 seconds"))
      assert.strictEqual(run.code, 0, run.stderr)
      assert.include(run.stdout, "Load: 10 bookings, 22 commands (0 refused), 35 events")
      assert.include(run.stdout, "10 summary documents (10 of 10 match their booking)")
      assert.include(run.stdout, "11 notifications recorded (11 expected)")
      assert.match(run.stdout, /Latency, command to projection: median \d+ ms, p99 \d+ ms/)
    }), { timeout: 60_000 })

  it.live("serves on the port it prints, and stops gracefully on SIGTERM", () =>
    Effect.gen(function*() {
      let health: Promise<number> | undefined
      let stoppedAt = 0
      const run = yield* runExample(["--bookings", "0"], (line, stop) => {
        const port = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(line)?.[1]
        if (port === undefined) return
        health = fetch(`http://127.0.0.1:${port}/health`).then((response) => response.status).finally(() => {
          stoppedAt = Date.now()
          stop()
        })
      }).pipe(Effect.timeout("50 seconds"))
      assert.strictEqual(yield* Effect.promise(() => health ?? Promise.resolve(0)), 200)
      assert.strictEqual(run.code, 0, run.stderr)
      assert.isBelow(Date.now() - stoppedAt, Duration.toMillis("15 seconds"))
    }), { timeout: 60_000 })
})

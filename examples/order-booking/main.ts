/**
 * Runs the order-booking app, drives a scripted load through its HTTP API, prints a summary,
 * and keeps serving until interrupted (Ctrl-C or SIGTERM stop everything gracefully).
 *
 *     npm start                      # embedded Azurite and Service Bus emulator, 100 bookings
 *     npm start -- --once            # the same, then exit
 *     npm start -- --bookings 0      # serve only
 *     npm start -- --port 8080
 *
 * With `AZURE_STORAGE_CONNECTION_STRING` (or `AZURE_STORAGE_ACCOUNT_URL`) and
 * `SERVICEBUS_CONNECTION_STRING` (or `SERVICEBUS_NAMESPACE`) set, it runs against Azure instead:
 * see README.md for the entities to create.
 */
import { FetchHttpClient } from "@effect/platform"
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Schema } from "effect"
import { parseArgs } from "node:util"
import { makeApp } from "./app.js"
import * as Load from "./load.js"

class UsageError extends Schema.TaggedError<UsageError>()("UsageError", { reason: Schema.String }) {
  override get message() {
    return `${this.reason}\nUsage: main.ts [--once] [--bookings N] [--port N]`
  }
}

class SummariesMismatch extends Schema.TaggedError<SummariesMismatch>()("SummariesMismatch", {
  matching: Schema.Int,
  bookings: Schema.Int
}) {
  override get message() {
    return `Only ${this.matching} of ${this.bookings} summaries match their booking after the processors caught up.`
  }
}

const nonNegativeInt = (name: string, value: string | undefined, fallback: number) =>
  value === undefined
    ? Effect.succeed(fallback)
    : /^\d+$/.test(value)
    ? Effect.succeed(Number(value))
    : Effect.fail(new UsageError({ reason: `--${name} must be a whole number, not "${value}"` }))

const parseArguments = Effect.try({
  try: () =>
    parseArgs({
      args: process.argv.slice(2),
      options: {
        once: { type: "boolean", default: false },
        bookings: { type: "string" },
        port: { type: "string" }
      }
    }).values,
  catch: (error) => new UsageError({ reason: error instanceof Error ? error.message : String(error) })
}).pipe(
  Effect.flatMap((values) =>
    Effect.all({
      once: Effect.succeed(values.once),
      bookings: nonNegativeInt("bookings", values.bookings, 100),
      port: nonNegativeInt("port", values.port, 0)
    })
  )
)

const program = Effect.gen(function*() {
  const args = yield* parseArguments
  const app = yield* makeApp({ port: args.port })
  for (const line of app.description) yield* Console.log(line)
  // The test and scripts read the port from this line.
  yield* Console.log(`HTTP API listening on ${app.url}`)

  if (args.bookings > 0) {
    yield* Console.log(`Driving ${args.bookings} bookings through the HTTP API...`)
    const result = yield* Load.run(app.url, { bookings: args.bookings })
    yield* Console.log(Load.report(result))
    if (result.matching < result.bookings) {
      return yield* new SummariesMismatch({ matching: result.matching, bookings: result.bookings })
    }
  }
  if (args.once) return
  yield* Console.log("Serving until interrupted (Ctrl-C)")
  return yield* Effect.never
}).pipe(Effect.scoped, Effect.provide(FetchHttpClient.layer))

NodeRuntime.runMain(program)

// One part of the order-booking app, run as its own process by the chaos run (`run.ts`), which
// kills it with SIGKILL at random and starts it again:
// - `api`: the HTTP API and the outbox pump (a commit wakes the pump in the same process; the
//   sweep finds what a killed process left behind);
// - `booking`: the booking processor (summaries, and notification commands);
// - `notification`: the notification processor.
//
// Connection strings come in the environment and are never printed. The processors leave a trace
// of every effect (an event applied to a summary, a notification recorded) in a table of its own,
// one row per effect with a key unique to the attempt, so the checker can count effects that
// happened more than once. The parent slows handlers down through the IPC channel
// (`{ type: "slow", count, millis }`); the child reports its processor's counts the same way.
import { TableClient } from "@azure/data-tables"
import { NodeRuntime } from "@effect/platform-node"
import { Duration, Effect, Logger, LogLevel, Schedule } from "effect"
import type { HandlerEffect, Hooks } from "../../examples/order-booking/app.js"
import * as App from "../../examples/order-booking/app.js"
import * as Infrastructure from "../../examples/order-booking/infrastructure.js"
import type * as MessageProcessor from "../../src/MessageProcessor.js"

const env = (name: string): string => {
  const value = process.env[name]
  if (value === undefined || value === "") throw new Error(`${name} is not set`)
  return value
}

const role = env("CHAOS_ROLE")
const mode = env("CHAOS_MODE") === "idempotent" ? "idempotent" : "atomic"

export type ParentMessage = { readonly type: "slow"; readonly count: number; readonly millis: number }
export type ChildMessage =
  | { readonly type: "stats"; readonly stats: MessageProcessor.Stats }
  | { readonly type: "slowed"; readonly millis: number }

const send = (message: ChildMessage) => {
  if (process.connected) process.send?.(message)
}

// A child never outlives the run: when the parent goes (even killed), the IPC channel closes.
process.on("disconnect", () => process.exit(1))

// Slow handlers, as many as the parent asked for.
let slow = { count: 0, millis: 0 }
process.on("message", (message: ParentMessage) => {
  if (message.type === "slow") slow = { count: message.count, millis: message.millis }
})

const traces = TableClient.fromConnectionString(env("CHAOS_TRACE_CONNECTION_STRING"), env("CHAOS_TRACE_TABLE"), {
  allowInsecureConnection: true
})

// The trace talks to Azurite directly, not through the fault proxy: it is the run's record, not
// a part of the system under test. It never fails the handler.
const trace = (effect: HandlerEffect) =>
  Effect.tryPromise(() =>
    traces.createEntity({
      partitionKey: effect._tag,
      rowKey: `${effect.messageId}~${crypto.randomUUID()}`,
      messageId: effect.messageId,
      subject: effect._tag === "EventApplied"
        ? `${effect.streamId}@${effect.version}`
        : `${effect.bookingId}.${effect.kind}`,
      pid: process.pid
    })
  ).pipe(
    Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.intersect(Schedule.recurs(20)))),
    Effect.catchAll((error) => Effect.logError("could not write the trace of an effect", error)),
    Effect.asVoid
  )

const hooks: Hooks = {
  beforeHandle: () =>
    Effect.suspend(() => {
      if (slow.count <= 0) return Effect.void
      slow = { ...slow, count: slow.count - 1 }
      const millis = slow.millis
      send({ type: "slowed", millis })
      return Effect.sleep(Duration.millis(millis))
    }),
  onEffect: trace
}

const reportStats = (processor: MessageProcessor.Processor) =>
  processor.stats.pipe(
    Effect.tap((stats) => Effect.sync(() => send({ type: "stats", stats }))),
    Effect.repeat(Schedule.spaced("500 millis")),
    Effect.forkScoped
  )

// Short timeouts and a short pending-index window, so a killed process's work is found again
// within seconds rather than minutes.
const storeOptions: App.StoreOptions = {
  eventStore: { timeout: "2 seconds", maxAppendDuration: "3 seconds", pendingBucketSize: "2 seconds" },
  projectionStore: { timeout: "2 seconds" }
}

const program = Effect.gen(function*() {
  const infrastructure = yield* Infrastructure.make()
  const { context } = yield* App.makeStores(infrastructure, storeOptions)
  switch (role) {
    case "api": {
      yield* App.makeOutbox(infrastructure, { sweep: Schedule.spaced("1 second"), gracePeriod: "5 seconds" }).pipe(
        Effect.provide(context)
      )
      yield* App.makeApi({ port: Number(env("CHAOS_PORT")) }).pipe(Effect.provide(context))
      break
    }
    case "booking": {
      const processor = yield* App.makeBookingProcessor(infrastructure, { mode, hooks }).pipe(Effect.provide(context))
      yield* reportStats(processor)
      break
    }
    case "notification": {
      const processor = yield* App.makeNotificationProcessor(infrastructure, { mode, hooks }).pipe(
        Effect.provide(context)
      )
      yield* reportStats(processor)
      break
    }
    default:
      return yield* Effect.dieMessage(`unknown role ${role}`)
  }
  process.stdout.write("ready\n")
  return yield* Effect.never
}).pipe(
  Effect.scoped,
  Effect.annotateLogs("role", role),
  // CHAOS_LOG_LEVEL=Info (or Debug) shows each failed attempt too.
  Logger.withMinimumLogLevel(
    LogLevel.allLevels.find((level) => level.label === process.env.CHAOS_LOG_LEVEL?.toUpperCase()) ??
      LogLevel.Warning
  )
)

NodeRuntime.runMain(program)

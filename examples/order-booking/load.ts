/**
 * A scripted load through the HTTP API: bookings placed, then confirmed, cancelled, both, or
 * confirmed twice (the second changes nothing); then a wait until the booking processor has
 * projected every event and the notification processor has recorded every notification, and a
 * check of each booking's summary against what its last command returned.
 */
import { HttpClient, HttpClientRequest, HttpClientResponse } from "@effect/platform"
import { Clock, Duration, Effect, Schedule, Schema } from "effect"
import { AppStats, CommandResponse } from "./app.js"
import { Summary } from "./domain.js"

export interface LoadOptions {
  readonly bookings: number
  /** Bookings driven at once. */
  readonly concurrency?: number
  /** How long to wait for the processors to catch up; 60 seconds by default. */
  readonly catchUpTimeout?: Duration.DurationInput
}

export interface LoadResult {
  readonly bookings: number
  readonly requests: number
  /** Notifications the load should lead to. */
  readonly expectedNotifications: number
  /** From the first request to the last summary caught up. */
  readonly elapsed: Duration.Duration
  readonly commandsElapsed: Duration.Duration
  /** Summaries matching the booking's last command (status and version). */
  readonly matching: number
  readonly stats: AppStats
}

type Step = "confirm" | "cancel"

// The mix: 60% confirmed, 20% cancelled, 10% confirmed then cancelled, 10% confirmed twice.
const stepsOf = (index: number): ReadonlyArray<Step> => {
  const slot = index % 10
  return slot < 6 ? ["confirm"] : slot < 8 ? ["cancel"] : slot === 8 ? ["confirm", "cancel"] : ["confirm", "confirm"]
}

const notificationsOf = (steps: ReadonlyArray<Step>): number => new Set(steps).size

export class CatchUpTimeout extends Schema.TaggedError<CatchUpTimeout>()("CatchUpTimeout", {
  events: Schema.Int,
  projected: Schema.Int,
  expectedNotifications: Schema.Int,
  notificationsRecorded: Schema.Int
}) {
  override get message() {
    return `The processors did not catch up in time: ${this.projected} of ${this.events} events projected, ` +
      `${this.notificationsRecorded} of ${this.expectedNotifications} notifications recorded.`
  }
}

class NotYet extends Schema.TaggedError<NotYet>()("NotYet", {}) {}

const SummaryWithVersion = Schema.Struct({ ...Summary.fields, version: Schema.Int })

export const run = (baseUrl: string, options: LoadOptions) =>
  Effect.gen(function*() {
    const client = (yield* HttpClient.HttpClient).pipe(
      HttpClient.mapRequest(HttpClientRequest.prependUrl(baseUrl)),
      HttpClient.filterStatusOk
    )
    const post = (path: string, body: unknown) =>
      HttpClientRequest.post(path).pipe(
        HttpClientRequest.bodyUnsafeJson(body),
        client.execute,
        Effect.flatMap(HttpClientResponse.schemaBodyJson(CommandResponse)),
        Effect.scoped
      )
    const getJson = <A, I>(path: string, schema: Schema.Schema<A, I>) =>
      client.get(path).pipe(Effect.flatMap(HttpClientResponse.schemaBodyJson(schema)), Effect.scoped)

    const started = yield* Clock.currentTimeMillis
    const day = 24 * 60 * 60 * 1000
    const runId = started.toString(36)
    const bookings = yield* Effect.forEach(
      Array.from({ length: options.bookings }, (_, index) => index),
      (index) =>
        Effect.gen(function*() {
          const bookingId = `${runId}-${index}`
          const checkIn = new Date(started + (30 + (index % 60)) * day)
          let last = yield* post("/bookings", {
            bookingId,
            roomId: `${100 + (index % 40)}`,
            capacity: 4,
            checkIn: checkIn.toISOString(),
            checkOut: new Date(checkIn.getTime() + (1 + (index % 5)) * day).toISOString(),
            guests: index % 3 === 0 ? ["Ada Lovelace", "Charles Babbage"] : ["Grace Hopper"]
          })
          const steps = stepsOf(index)
          for (const step of steps) {
            last = yield* post(`/bookings/${bookingId}/${step}`, step === "cancel" ? { reason: "plans changed" } : {})
          }
          return { bookingId, last, requests: 1 + steps.length, notifications: notificationsOf(steps) }
        }),
      { concurrency: options.concurrency ?? 16 }
    )
    const commandsDone = yield* Clock.currentTimeMillis
    const expectedNotifications = bookings.reduce((sum, booking) => sum + booking.notifications, 0)

    // The processors' own counts are the signal: poll them rather than sleep.
    // Projected and recorded, and their messages committed too (the handlers write first).
    const caughtUp = (stats: AppStats) =>
      stats.projected >= stats.events && stats.bookingProcessor.completed >= stats.events &&
      stats.notificationsRecorded >= expectedNotifications &&
      stats.notificationProcessor.completed >= expectedNotifications
    const stats = yield* getJson("/stats", AppStats).pipe(
      Effect.filterOrFail(caughtUp, () => new NotYet()),
      Effect.retry({ schedule: Schedule.spaced("20 millis"), while: (error) => error._tag === "NotYet" }),
      Effect.timeoutFail({
        duration: options.catchUpTimeout ?? Duration.seconds(60),
        onTimeout: () =>
          new CatchUpTimeout({ events: 0, projected: 0, expectedNotifications, notificationsRecorded: 0 })
      }),
      Effect.catchTag("CatchUpTimeout", (timeout) =>
        Effect.flatMap(getJson("/stats", AppStats), (stats) =>
          Effect.fail(
            new CatchUpTimeout({ ...timeout, ...stats, expectedNotifications: timeout.expectedNotifications })
          )))
    )
    const caughtUpAt = yield* Clock.currentTimeMillis

    const summaries = yield* Effect.forEach(
      bookings,
      (booking) => getJson(`/bookings/${booking.bookingId}`, SummaryWithVersion),
      { concurrency: 16 }
    )
    const matching = summaries.filter((summary, index) =>
      summary.status === bookings[index]!.last.status && summary.version === bookings[index]!.last.version
    ).length

    return {
      bookings: bookings.length,
      requests: bookings.reduce((sum, booking) =>
        sum + booking.requests, 0),
      expectedNotifications,
      elapsed: Duration.millis(caughtUpAt - started),
      commandsElapsed: Duration.millis(commandsDone - started),
      matching,
      stats
    } satisfies LoadResult
  }).pipe(Effect.withSpan("OrderBooking.load", { attributes: { bookings: options.bookings } }))

const seconds = (duration: Duration.Duration) => (Duration.toMillis(duration) / 1000).toFixed(1)

/** The short summary printed after a load. */
export const report = (result: LoadResult): string => {
  const { stats } = result
  const perSecond = (stats.commands / Math.max(0.001, Duration.toMillis(result.commandsElapsed) / 1000)).toFixed(0)
  return [
    `Load: ${result.bookings} bookings, ${stats.commands} commands (${stats.rejected} refused), ${stats.events} events ` +
    `in ${seconds(result.commandsElapsed)} s (${perSecond} commands/s)`,
    `Messages: ${stats.bookingProcessor.completed} booking events processed, ` +
    `${stats.notificationProcessor.completed} notification commands processed ` +
    `(${stats.bookingProcessor.retries + stats.notificationProcessor.retries} retries, ` +
    `${stats.bookingProcessor.deadLettered + stats.notificationProcessor.deadLettered} dead-lettered)`,
    `Projection: ${stats.documents} summary documents (${result.matching} of ${result.bookings} match their booking), ` +
    `${stats.notificationsRecorded} notifications recorded (${result.expectedNotifications} expected)`,
    `Latency, command to projection: median ${stats.latency.median} ms, p99 ${stats.latency.p99} ms ` +
    `(max ${stats.latency.max} ms, ${stats.latency.count} commands)`,
    `Caught up ${seconds(result.elapsed)} s after the first request`
  ].join("\n")
}

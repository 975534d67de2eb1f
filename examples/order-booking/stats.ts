/**
 * What this process did, for the summary the load run prints and for `GET /stats`: commands and
 * the events they recorded, events projected, notifications recorded, and the end-to-end latency
 * of each command, from the request that carried it to the projection write of its last event.
 */
import { Clock, Effect, Schema } from "effect"

export const Percentiles = Schema.Struct({
  count: Schema.Int,
  median: Schema.Number,
  p99: Schema.Number,
  max: Schema.Number
})
export type Percentiles = typeof Percentiles.Type

export const Snapshot = Schema.Struct({
  /** Commands handled (accepted or refused by the decider). */
  commands: Schema.Int,
  /** Commands the decider refused. */
  rejected: Schema.Int,
  /** Events the accepted commands recorded. */
  events: Schema.Int,
  /** Events applied to a summary by this process (duplicates not counted). */
  projected: Schema.Int,
  /** Summary documents this process wrote to. */
  documents: Schema.Int,
  /** Notifications recorded by the notification processor (duplicates not counted). */
  notificationsRecorded: Schema.Int,
  /** Milliseconds from a command's request to the projection of its last event. */
  latency: Percentiles
})
export type Snapshot = typeof Snapshot.Type

const percentile = (sorted: ReadonlyArray<number>, p: number): number =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!

export const percentiles = (values: ReadonlyArray<number>): Percentiles => {
  const sorted = [...values].sort((a, b) => a - b)
  return {
    count: sorted.length,
    median: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    max: sorted.length === 0 ? 0 : sorted[sorted.length - 1]!
  }
}

export interface Stats {
  /** A command was handled; `last` is where its last event landed, when it recorded any. */
  readonly commandHandled: (
    result:
      | { readonly _tag: "Rejected" }
      | { readonly _tag: "Accepted"; readonly events: number; readonly last?: Position; readonly startedAt: number }
  ) => Effect.Effect<void>
  readonly projected: (position: Position, documentId: string) => Effect.Effect<void>
  readonly notificationRecorded: Effect.Effect<void>
  readonly snapshot: Effect.Effect<Snapshot>
}

export interface Position {
  readonly streamId: string
  readonly version: number
}

// Plain mutable state: every update is synchronous, so no two fibers interleave inside one.
export const make = (): Stats => {
  let commands = 0
  let rejected = 0
  let events = 0
  let projected = 0
  let notificationsRecorded = 0
  const documents = new Set<string>()
  const latencies: Array<number> = []
  // A command's last event may be projected before the request that recorded it has finished,
  // so whichever side comes second computes the latency.
  const startedAt = new Map<string, number>()
  const projectedAt = new Map<string, number>()
  const key = (position: Position) => `${position.streamId}@${position.version}`

  return {
    commandHandled: (result) =>
      Effect.sync(() => {
        commands++
        if (result._tag === "Rejected") {
          rejected++
          return
        }
        events += result.events
        if (result.last === undefined) return
        const k = key(result.last)
        const done = projectedAt.get(k)
        if (done === undefined) startedAt.set(k, result.startedAt)
        else {
          projectedAt.delete(k)
          latencies.push(done - result.startedAt)
        }
      }),
    projected: (position, documentId) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        Effect.sync(() => {
          projected++
          documents.add(documentId)
          const k = key(position)
          const started = startedAt.get(k)
          if (started === undefined) {
            // Only the last event of a command is ever looked up; keep the others out.
            if (projectedAt.size < 100_000) projectedAt.set(k, now)
          } else {
            startedAt.delete(k)
            latencies.push(now - started)
          }
        })),
    notificationRecorded: Effect.sync(() => void notificationsRecorded++),
    snapshot: Effect.sync(() => ({
      commands,
      rejected,
      events,
      projected,
      documents: documents.size,
      notificationsRecorded,
      latency: percentiles(latencies)
    }))
  }
}

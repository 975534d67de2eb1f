import { Effect, Metric } from "effect"
import type { AppendResult } from "../EventStore.js"

export const appends = Metric.counter("effect_eventually_event_store_appends", {
  description: "Appends committed (one entity group transaction each)",
  incremental: true
})

export const eventsAppended = Metric.counter("effect_eventually_event_store_events_appended", {
  description: "Events committed by appends",
  incremental: true
})

export const conflicts = Metric.counter("effect_eventually_event_store_conflicts", {
  description: "Appends refused because the stream was not at the expected version",
  incremental: true
})

// Tagged once per store kind: tagging allocates a new metric key every time.
const tagged = (store: string) => ({
  appends: Metric.tagged(appends, "store", store),
  eventsAppended: Metric.tagged(eventsAppended, "store", store),
  conflicts: Metric.tagged(conflicts, "store", store)
})

/**
 * Counts an append's outcome: committed appends and their events, and refusals with
 * `ConcurrencyConflict`. An append of no events writes nothing and is not counted.
 */
export const measure = (store: string) => {
  const counters = tagged(store)
  return <E extends { readonly _tag: string }, R>(
    append: Effect.Effect<AppendResult, E, R>,
    eventCount: number
  ): Effect.Effect<AppendResult, E, R> =>
    eventCount === 0 ? append : append.pipe(
      Effect.tapBoth({
        onSuccess: () =>
          Effect.zipRight(Metric.increment(counters.appends), Metric.incrementBy(counters.eventsAppended, eventCount)),
        onFailure: (error) => error._tag === "ConcurrencyConflict" ? Metric.increment(counters.conflicts) : Effect.void
      })
    )
}

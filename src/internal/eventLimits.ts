// Size checks shared by every event store, so the memory store refuses what Azure would refuse.
// Sizes are estimated the way Table Storage counts them: UTF-16 strings (2 bytes a character)
// plus a fixed overhead per property and per entity.
import { Effect } from "effect"
import type { EventData, Snapshot } from "../EventStore.js"
import { limits } from "../EventStore.js"
import { AppendTooLarge, EventTooLarge } from "../EventStoreError.js"

/** Largest string property: 64 KiB, i.e. 32K UTF-16 code units. */
export const maxStringChars = 32 * 1024

const entityOverhead = 4 + 2 * (1024 + 1024) // partition key and row key budget

const stringBytes = (value: string): number => 8 + 2 * value.length

/** The estimated stored size of one event row. */
export const eventBytes = (event: EventData): number =>
  entityOverhead +
  stringBytes(event.eventId) +
  stringBytes(event.type) +
  8 +
  stringBytes(JSON.stringify(event.data) ?? "null") +
  stringBytes(JSON.stringify(event.metadata))

/** The estimated stored size of the head row carrying a snapshot. */
export const snapshotBytes = (snapshot: Snapshot): number =>
  entityOverhead + 16 + stringBytes(JSON.stringify(snapshot.state) ?? "null")

/** Checks an append against the limits of one entity group transaction, before anything is written. */
export const checkAppend = (
  streamId: string,
  events: ReadonlyArray<EventData>,
  snapshot: Snapshot | undefined
): Effect.Effect<void, AppendTooLarge | EventTooLarge> =>
  Effect.suspend((): Effect.Effect<void, AppendTooLarge | EventTooLarge> => {
    if (events.length > limits.maxEventsPerAppend) {
      return Effect.fail(
        new AppendTooLarge({
          streamId,
          eventCount: events.length,
          maxEvents: limits.maxEventsPerAppend,
          maxBytes: limits.maxAppendBytes
        })
      )
    }
    let total = entityOverhead + 64
    for (let index = 0; index < events.length; index++) {
      const event = events[index]
      const bytes = eventBytes(event)
      if (bytes > limits.maxEntityBytes) {
        return Effect.fail(
          new EventTooLarge({ streamId, type: event.type, index, bytes, maxBytes: limits.maxEntityBytes })
        )
      }
      total += bytes
    }
    if (snapshot !== undefined) {
      const bytes = snapshotBytes(snapshot)
      if (bytes > limits.maxEntityBytes) {
        return Effect.fail(
          new EventTooLarge({ streamId, type: "$snapshot", index: -1, bytes, maxBytes: limits.maxEntityBytes })
        )
      }
      total += bytes
    }
    if (total > limits.maxAppendBytes) {
      return Effect.fail(
        new AppendTooLarge({
          streamId,
          eventCount: events.length,
          bytes: total,
          maxEvents: limits.maxEventsPerAppend,
          maxBytes: limits.maxAppendBytes
        })
      )
    }
    return Effect.void
  })

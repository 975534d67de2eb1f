// Size checks shared by every event store, so the memory store refuses exactly what the Azure
// adapter refuses. The rows are encoded the way the adapter stores them (tableLayout.ts) and
// measured the way Table Storage counts: per entity in UTF-16 bytes (1 MiB limit), per batch in
// request bytes (4 MiB limit).
import { Effect, Either } from "effect"
import type { EventData, Snapshot } from "../EventStore.js"
import { limits } from "../EventStore.js"
import { AppendTooLarge, EventTooLarge } from "../EventStoreError.js"
import * as Layout from "./tableLayout.js"

/** The rows of one append, checked against the limits of one entity group transaction. */
export interface EncodedAppend {
  readonly head: Layout.TableRow
  readonly events: ReadonlyArray<Layout.TableRow>
}

/** Properties that cannot be split across columns. */
const unsplittable = (event: EventData): number => Math.max(event.eventId.length, event.type.length)

const tooMany = (streamId: string, eventCount: number, bytes?: number) =>
  new AppendTooLarge({
    streamId,
    eventCount,
    ...(bytes === undefined ? {} : { bytes }),
    maxEvents: limits.maxEventsPerAppend,
    maxBytes: limits.maxAppendBytes
  })

/**
 * Encodes an append into the rows of one entity group transaction, refusing it before anything
 * is written when it cannot fit: more than 99 events, an entity over 1 MiB, an event id or type
 * over one string property (32K characters), or over 4 MiB of request in all.
 */
export const encodeAppend = (
  streamId: string,
  expectedVersion: number,
  events: ReadonlyArray<EventData>,
  snapshot: Snapshot | undefined
): Either.Either<EncodedAppend, AppendTooLarge | EventTooLarge> => {
  if (events.length > limits.maxEventsPerAppend) return Either.left(tooMany(streamId, events.length))
  const rows: Array<Layout.TableRow> = []
  let bound = Layout.batchOverheadBytes
  for (let index = 0; index < events.length; index++) {
    const event = events[index]
    const chars = unsplittable(event)
    if (chars > Layout.maxStringChars) {
      return Either.left(
        new EventTooLarge({ streamId, type: event.type, index, bytes: 2 * chars, maxBytes: 2 * Layout.maxStringChars })
      )
    }
    const row = Layout.encodeEvent(streamId, expectedVersion + index + 1, event)
    const bytes = Layout.entityBytes(row)
    if (bytes > limits.maxEntityBytes) {
      return Either.left(
        new EventTooLarge({ streamId, type: event.type, index, bytes, maxBytes: limits.maxEntityBytes })
      )
    }
    rows.push(row)
    bound += Layout.operationBytesBound(row)
  }
  const head = Layout.encodeHead(streamId, expectedVersion + events.length, snapshot)
  const headBytes = Layout.entityBytes(head)
  if (headBytes > limits.maxEntityBytes) {
    return Either.left(
      new EventTooLarge({ streamId, type: "$snapshot", index: -1, bytes: headBytes, maxBytes: limits.maxEntityBytes })
    )
  }
  bound += Layout.operationBytesBound(head)
  // The exact request size costs a serialization of every row: only computed when the cheap
  // upper bound does not settle it.
  if (bound > limits.maxAppendBytes) {
    let total = Layout.batchOverheadBytes + Layout.operationBytes(head)
    for (const row of rows) total += Layout.operationBytes(row)
    if (total > limits.maxAppendBytes) return Either.left(tooMany(streamId, events.length, total))
  }
  return Either.right({ head, events: rows })
}

/** {@link encodeAppend} as an Effect. */
export const checkAppend = (
  streamId: string,
  expectedVersion: number,
  events: ReadonlyArray<EventData>,
  snapshot: Snapshot | undefined
): Effect.Effect<EncodedAppend, AppendTooLarge | EventTooLarge> =>
  Effect.suspend(() => encodeAppend(streamId, expectedVersion, events, snapshot))

import { Effect, Option, Ref } from "effect"
import type { AppendResult, EventData, EventStoreService, RecordedEvent, Snapshot } from "../EventStore.js"
import { ConcurrencyConflict } from "../EventStoreError.js"
import * as StreamId from "../StreamId.js"
import { checkAppend } from "./eventLimits.js"

interface StoredStream {
  readonly events: ReadonlyArray<RecordedEvent>
  readonly snapshot: Option.Option<Snapshot>
}

// Values go through JSON on the way in and out, as they do in Table Storage, so a test cannot
// depend on object identity or on values JSON would not keep.
const roundTrip = <A>(value: A): A => JSON.parse(JSON.stringify(value)) as A

// The events at the versions this append would take carry its event ids, in order.
const isAlreadyStored = (
  stored: ReadonlyArray<RecordedEvent>,
  expectedVersion: number,
  events: ReadonlyArray<EventData>
): boolean =>
  events.length > 0 && Number.isInteger(expectedVersion) && expectedVersion >= 0 &&
  stored.length >= expectedVersion + events.length &&
  events.every((event, index) => stored[expectedVersion + index].eventId === event.eventId)

export const make: Effect.Effect<EventStoreService> = Effect.gen(function*() {
  const streams = yield* Ref.make(new Map<string, StoredStream>())

  const readStream = (streamId: string) => Ref.get(streams).pipe(Effect.map((map) => map.get(streamId)))

  const service: EventStoreService = {
    read: (streamId, options) =>
      Effect.gen(function*() {
        yield* StreamId.check(streamId)
        const stream = yield* readStream(streamId)
        const from = options?.fromVersion ?? 1
        const to = options?.toVersion ?? Number.MAX_SAFE_INTEGER
        return (stream?.events ?? []).filter((event) => event.version >= from && event.version <= to).map(roundTrip)
      }).pipe(Effect.withSpan("EventStore.read", { attributes: { streamId } })),

    load: (streamId, options) =>
      Effect.gen(function*() {
        yield* StreamId.check(streamId)
        const stream = yield* readStream(streamId)
        const events = stream?.events ?? []
        const snapshot = options?.snapshotSchemaVersion === undefined
          ? Option.none()
          : Option.filter(
            stream?.snapshot ?? Option.none(),
            (snapshot) => snapshot.schemaVersion === options.snapshotSchemaVersion
          )
        const after = Option.match(snapshot, { onNone: () => 0, onSome: (snapshot) => snapshot.version })
        return {
          streamId,
          version: events.length,
          snapshot: Option.map(snapshot, roundTrip),
          events: events.filter((event) => event.version > after).map(roundTrip)
        }
      }).pipe(Effect.withSpan("EventStore.load", { attributes: { streamId } })),

    append: (streamId, expectedVersion, events, options) =>
      Effect.gen(function*() {
        yield* StreamId.check(streamId)
        yield* checkAppend(streamId, expectedVersion, events, options?.snapshot)
        return yield* Ref.modify(streams, (map): readonly [
          Effect.Effect<AppendResult, ConcurrencyConflict>,
          Map<string, StoredStream>
        ] => {
          const stream = map.get(streamId)
          const storedEvents = stream?.events ?? []
          const actualVersion = storedEvents.length
          if (isAlreadyStored(storedEvents, expectedVersion, events)) {
            // A retry of an append that was stored: succeed without writing again, as the Azure
            // adapter does, so retries are idempotent with every store.
            const stored = storedEvents.slice(expectedVersion, expectedVersion + events.length)
            return [
              Effect.succeed({ streamId, version: expectedVersion + events.length, events: stored.map(roundTrip) }),
              map
            ] as const
          }
          if (actualVersion !== expectedVersion) {
            return [
              Effect.fail(new ConcurrencyConflict({ streamId, expectedVersion, actualVersion })),
              map
            ] as const
          }
          const recorded = events.map((event, index): RecordedEvent =>
            roundTrip({ ...event, streamId, version: expectedVersion + index + 1 })
          )
          if (recorded.length === 0) {
            return [Effect.succeed({ streamId, version: actualVersion, events: recorded }), map] as const
          }
          const next = new Map(map)
          next.set(streamId, {
            events: [...(stream?.events ?? []), ...recorded],
            snapshot: options?.snapshot === undefined
              ? stream?.snapshot ?? Option.none()
              : Option.some(roundTrip(options.snapshot))
          })
          return [
            Effect.succeed({ streamId, version: expectedVersion + recorded.length, events: recorded }),
            next
          ] as const
        }).pipe(Effect.flatten)
      }).pipe(Effect.withSpan("EventStore.append", { attributes: { streamId, expectedVersion } }))
  }
  return service
})

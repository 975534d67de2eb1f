import { Clock, Effect, Either, Option, Schedule } from "effect"
import type { Aggregate, HandleError, HandleOptions, HandleResult, LoadResult, MakeOptions } from "../Aggregate.js"
import * as Decider from "../Decider.js"
import * as EventCodec from "../EventCodec.js"
import type { AppendOptions, EventData, EventMetadata, ReadError, RecordedEvent, Snapshot } from "../EventStore.js"
import { EventStore } from "../EventStore.js"
import type { ConcurrencyConflict } from "../EventStoreError.js"

type Tagged = { readonly _tag: string }

export const make = <Command extends Tagged, Event extends Tagged, State, Err, StateEncoded = State>(
  options: MakeOptions<Command, Event, State, Err, StateEncoded>
): Aggregate<Command, Event, State, Err> => {
  const snapshot = options.snapshot
  if (snapshot !== undefined && (!Number.isSafeInteger(snapshot.every) || snapshot.every < 1)) {
    throw new RangeError(`Aggregate.make: snapshot.every must be a positive integer, got ${snapshot.every}`)
  }
  return {
    decider: options.decider,
    events: options.events,
    snapshot: snapshot === undefined ? undefined : {
      codec: EventCodec.makeSnapshot(snapshot.schema, { schemaVersion: snapshot.schemaVersion }),
      every: snapshot.every
    },
    commandId: options.commandId
  }
}

export const defaultConflictRetry: Schedule.Schedule<unknown, unknown> = Schedule.exponential("10 millis").pipe(
  // `union` keeps the shorter delay: the backoff grows to 200 ms and stays there.
  Schedule.union(Schedule.spaced("200 millis")),
  // Writers that collided once would collide again at the same instants without jitter.
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(8))
)

interface Loaded<State> extends LoadResult<State> {
  /** The version of the snapshot the state started from, 0 when none was used. */
  readonly snapshotVersion: number
}

const loadState = <Command extends Tagged, Event extends Tagged, State, Err>(
  aggregate: Aggregate<Command, Event, State, Err>,
  streamId: string
): Effect.Effect<Loaded<State>, ReadError, EventStore> =>
  Effect.gen(function*() {
    const store = yield* EventStore
    const policy = aggregate.snapshot
    const loaded = yield* store.load(
      streamId,
      policy === undefined ? undefined : { snapshotSchemaVersion: policy.codec.schemaVersion }
    )
    let state = aggregate.decider.initialState
    let snapshotVersion = 0
    let events = loaded.events
    if (policy !== undefined && Option.isSome(loaded.snapshot)) {
      const snapshot = loaded.snapshot.value
      const decoded = policy.codec.decodeEither(snapshot, streamId)
      if (Either.isRight(decoded)) {
        state = decoded.right
        snapshotVersion = snapshot.version
      } else {
        // A snapshot only saves time: one that cannot be read must not make the stream unusable.
        yield* Effect.logWarning("Ignoring a snapshot that cannot be decoded; replaying the stream").pipe(
          Effect.annotateLogs({ streamId, snapshotVersion: snapshot.version, reason: decoded.left.reason })
        )
        const older = yield* store.read(streamId, { toVersion: snapshot.version })
        events = [...older, ...events]
      }
    }
    const evolve = aggregate.decider.evolve
    const decode = aggregate.events.decodeEither
    for (let i = 0; i < events.length; i++) {
      const event = decode(events[i])
      if (Either.isLeft(event)) return yield* Effect.fail(event.left)
      state = evolve(state, event.right)
    }
    return { streamId, version: loaded.version, state, snapshotVersion }
  })

export const load = <Command extends Tagged, Event extends Tagged, State, Err>(
  aggregate: Aggregate<Command, Event, State, Err>,
  streamId: string
): Effect.Effect<LoadResult<State>, ReadError, EventStore> =>
  loadState(aggregate, streamId).pipe(
    Effect.map(({ state, streamId, version }) => ({ streamId, version, state })),
    Effect.withSpan("Aggregate.load", { attributes: { streamId } })
  )

const isConflict = (error: HandleError): error is ConcurrencyConflict => error._tag === "ConcurrencyConflict"

export const handle = <Command extends Tagged, Event extends Tagged, State, Err>(
  aggregate: Aggregate<Command, Event, State, Err>,
  streamId: string,
  command: Command,
  options: HandleOptions = {}
): Effect.Effect<HandleResult<Event, State>, Err | HandleError, EventStore> => {
  const commandId = options.commandId ?? aggregate.commandId?.(command)
  const causationId = options.causationId ?? commandId
  const metadataAt = (timestamp: number): EventMetadata => ({
    timestamp: new Date(timestamp).toISOString(),
    ...(options.correlationId === undefined ? {} : { correlationId: options.correlationId }),
    ...(causationId === undefined ? {} : { causationId }),
    ...(options.properties === undefined ? {} : { properties: options.properties })
  })
  const eventId = (index: number): string =>
    commandId === undefined ? globalThis.crypto.randomUUID() : `${commandId}:${index}`

  // One try: load, decide, append. Only a conflict stays in the error channel, so that the retry
  // schedule sees nothing else; everything else (domain errors included) is returned as a Left.
  const attempt: Effect.Effect<
    Either.Either<HandleResult<Event, State>, Err | Exclude<HandleError, ConcurrencyConflict>>,
    ConcurrencyConflict,
    EventStore
  > = Effect.gen(function*() {
    const store = yield* EventStore
    const loaded = yield* loadState(aggregate, streamId)
    const decision = aggregate.decider.decide(command, loaded.state)
    if (Either.isLeft(decision)) return Either.left(decision.left)
    const events = decision.right
    if (events.length === 0) {
      return Either.right({ streamId, version: loaded.version, events, recorded: [], state: loaded.state })
    }
    const state = Decider.fold(aggregate.decider, events, loaded.state)
    const metadata = metadataAt(yield* Clock.currentTimeMillis)
    const data: Array<EventData> = events.map((event, index) =>
      aggregate.events.encode(event, { eventId: eventId(index), metadata })
    )
    const version = loaded.version + events.length
    const policy = aggregate.snapshot
    const snapshot: Snapshot | undefined = policy !== undefined && version - loaded.snapshotVersion >= policy.every
      ? policy.codec.encode(state, version)
      : undefined
    const appended = yield* store.append(streamId, loaded.version, data, snapshot === undefined ? {} : { snapshot })
      .pipe(
        Effect.catchIf(
          // The events fit but the snapshot does not: store the events, the snapshot is optional.
          (error) => snapshot !== undefined && error._tag === "EventTooLarge" && error.index === -1,
          (error) =>
            Effect.logWarning("Snapshot too large to store; appending without it").pipe(
              Effect.annotateLogs({ streamId, bytes: error._tag === "EventTooLarge" ? error.bytes : -1 }),
              Effect.zipRight(store.append(streamId, loaded.version, data, {} satisfies AppendOptions))
            )
        )
      )
    const recorded: ReadonlyArray<RecordedEvent> = appended.events
    return Either.right({ streamId, version: appended.version, events, recorded, state })
  }).pipe(
    Effect.catchAll((error) => isConflict(error) ? Effect.fail(error) : Effect.succeed(Either.left(error)))
  )

  return attempt.pipe(
    Effect.retry(options.retry ?? defaultConflictRetry),
    Effect.flatten,
    Effect.tap((result) => Effect.annotateCurrentSpan({ version: result.version, events: result.events.length })),
    Effect.withSpan("Aggregate.handle", { attributes: { streamId, command: command._tag } })
  )
}

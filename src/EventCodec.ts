/**
 * Typed codecs between domain values and what the event store keeps: domain events (a union of
 * `Schema.TaggedClass`es) and `EventData` / `RecordedEvent`, and a stream's folded state and its
 * `Snapshot`.
 *
 * An event is stored with its `_tag` as `type`, its encoded fields (without the tag) as `data`,
 * and a `schemaVersion` per type. Decoding never throws: an unknown type, a schema version the
 * codec cannot read, or a payload that does not match the schema is a `DecodeError` that names
 * the stream, the version and the type.
 *
 * @since 0.1.0
 */
import type { Effect, Either, Schema } from "effect"
import type { EventData, EventMetadata, RecordedEvent, Snapshot } from "./EventStore.js"
import type { DecodeError } from "./EventStoreError.js"
import * as internal from "./internal/eventCodec.js"

/**
 * Turns a stored payload of one schema version into the payload of the next one.
 *
 * @since 0.1.0
 * @category models
 */
export type Upcaster = (data: Readonly<Record<string, unknown>>) => Readonly<Record<string, unknown>>

/**
 * Options of {@link make}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options<Tag extends string> {
  /** The current schema version of each event type; 1 for types not listed. */
  readonly schemaVersions?: { readonly [T in Tag]?: number }
  /**
   * Upcasters by event type and by the schema version they read: the upcaster at key `v` turns a
   * payload of version `v` into one of version `v + 1`. A stored event older than its type's
   * current version goes through each step in turn.
   */
  readonly upcasters?: { readonly [T in Tag]?: { readonly [fromVersion: number]: Upcaster } }
}

/**
 * What an encoded event needs besides the event itself.
 *
 * @since 0.1.0
 * @category models
 */
export interface EncodeOptions {
  readonly eventId: string
  readonly metadata: EventMetadata
}

/**
 * A codec for the events of one decider.
 *
 * @since 0.1.0
 * @category models
 */
export interface EventCodec<in out Event extends { readonly _tag: string }> {
  /** Every event type the codec knows, in schema order. */
  readonly types: ReadonlyArray<Event["_tag"]>
  /** The schema version an event of this type is written with. */
  readonly schemaVersionOf: (type: Event["_tag"]) => number
  /**
   * Encodes an event for `EventStore.append`. Throws only when the event does not match its own
   * schema, which is a programming error (the decider built an invalid event).
   */
  readonly encode: (event: Event, options: EncodeOptions) => EventData
  /** Decodes a stored event, upcasting older schema versions. */
  readonly decode: (recorded: RecordedEvent) => Effect.Effect<Event, DecodeError>
  /** {@link decode} as an `Either`, for tight loops. */
  readonly decodeEither: (recorded: RecordedEvent) => Either.Either<Event, DecodeError>
}

/**
 * Makes an event codec from the schema of a union of tagged events. Throws at once if a member
 * has no literal `_tag` or two members share one.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { EventCodec } from "effect-eventually"
 *
 * class Opened extends Schema.TaggedClass<Opened>()("Opened", { owner: Schema.String }) {}
 * class Closed extends Schema.TaggedClass<Closed>()("Closed", { reason: Schema.String }) {}
 *
 * const codec = EventCodec.make(Schema.Union(Opened, Closed), {
 *   schemaVersions: { Closed: 2 },
 *   // version 1 of Closed had no reason
 *   upcasters: { Closed: { 1: (data) => ({ ...data, reason: "unknown" }) } }
 * })
 *
 * const data = codec.encode(new Opened({ owner: "ada" }), {
 *   eventId: "e-1",
 *   metadata: { timestamp: new Date(0).toISOString() }
 * })
 * // { eventId: "e-1", type: "Opened", schemaVersion: 1, data: { owner: "ada" }, metadata: ... }
 *
 * const event = codec.decode({ ...data, streamId: "account-1", version: 1 })
 * Effect.runSync(event) // Opened { owner: "ada" }
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: <Event extends { readonly _tag: string }, Encoded>(
  schema: Schema.Schema<Event, Encoded>,
  options?: Options<Event["_tag"]>
) => EventCodec<Event> = internal.make

/**
 * A codec between a stream's folded state and its stored `Snapshot`.
 *
 * @since 0.1.0
 * @category models
 */
export interface SnapshotCodec<in out State> {
  /** Snapshots with another schema version are not read. Change it whenever the state's schema changes. */
  readonly schemaVersion: number
  /** Encodes the state folded up to `version`. Throws only when the state does not match its own schema. */
  readonly encode: (state: State, version: number) => Snapshot
  /** Decodes a stored snapshot of `streamId`. */
  readonly decode: (snapshot: Snapshot, streamId: string) => Effect.Effect<State, DecodeError>
  /** {@link decode} as an `Either`. */
  readonly decodeEither: (snapshot: Snapshot, streamId: string) => Either.Either<State, DecodeError>
}

/**
 * Makes a snapshot codec from the schema of the state and the version of that schema.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { EventCodec } from "effect-eventually"
 *
 * const Balance = Schema.Struct({ balance: Schema.Finite })
 * const snapshots = EventCodec.makeSnapshot(Balance, { schemaVersion: 1 })
 * snapshots.encode({ balance: 10 }, 42) // { version: 42, schemaVersion: 1, state: { balance: 10 } }
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeSnapshot: <State, Encoded>(
  schema: Schema.Schema<State, Encoded>,
  options: { readonly schemaVersion: number }
) => SnapshotCodec<State> = internal.makeSnapshot

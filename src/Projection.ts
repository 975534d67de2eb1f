/**
 * A projection is the pure heart of a read model: it folds events into documents. Each event is
 * routed to at most one document by `documentId`, and `evolve` folds it into that document's
 * state. Both may look at where the event was recorded: `documentId` receives its
 * {@link EventEnvelope} (stream, version, id, type, metadata), `evolve` its {@link Position}.
 * Like a decider, it reads no clock and calls no service, so replaying the same events always
 * builds the same documents.
 *
 * A document remembers, for each stream it has seen events of, the last version it applied (its
 * positions). {@link apply} uses them to make delivery idempotent: an event at or below its
 * stream's position was already applied and changes nothing.
 *
 * @since 0.1.0
 */
import { Either, ParseResult, Schema } from "effect"
import type { EventMetadata } from "./EventStore.js"

/**
 * A projection definition.
 *
 * @since 0.1.0
 * @category models
 */
export interface Projection<in out Event, in out State> {
  /**
   * Names the projection in the store: documents of different projections never mix. 1 to 63
   * letters, digits, `_`, `.` or `-`, starting with a letter or digit.
   */
  readonly name: string
  /** The state of a document no event has reached yet. */
  readonly initialState: State
  /**
   * Applies one event at its position (its stream and version). Must be total, like a decider's
   * `evolve`.
   */
  readonly evolve: (state: State, event: Event, position: Position) => State
  /**
   * The document an event belongs to, or `undefined` when the projection ignores it. The
   * envelope says where the event was recorded (stream and version) and carries its id, type and
   * metadata.
   */
  readonly documentId: (event: Event, envelope: EventEnvelope) => string | undefined
  /** Encodes a state to the JSON value the store keeps. Throws only when the state does not match its schema. */
  readonly encodeState: (state: State) => unknown
  /** Decodes a stored state; `Left` with a readable reason when it does not match the schema. */
  readonly decodeState: (encoded: unknown) => Either.Either<State, string>
}

/**
 * Options of {@link make}.
 *
 * @since 0.1.0
 * @category models
 */
export interface MakeOptions<Event, State, StateEncoded> {
  readonly name: string
  readonly initialState: State
  /** See {@link Projection.evolve}: the position argument may be left out. */
  readonly evolve: (state: State, event: Event, position: Position) => State
  /** See {@link Projection.documentId}: the envelope argument may be left out. */
  readonly documentId: (event: Event, envelope: EventEnvelope) => string | undefined
  /** The schema of the state: documents are stored in its encoded form. */
  readonly state: Schema.Schema<State, StateEncoded>
}

const namePattern = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/

/**
 * True for a valid projection name (see {@link Projection.name}).
 *
 * @since 0.1.0
 * @category constructors
 */
export const isValidName = (name: string): boolean => namePattern.test(name)

/**
 * Defines a projection. Throws at once when the name is invalid: it is part of the stored keys.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { Projection } from "effect-eventually"
 *
 * class Deposited extends Schema.TaggedClass<Deposited>()("Deposited", {
 *   account: Schema.String,
 *   amount: Schema.Int
 * }) {}
 *
 * const balances = Projection.make({
 *   name: "balances",
 *   initialState: 0,
 *   evolve: (balance: number, event: Deposited) => balance + event.amount,
 *   documentId: (event: Deposited) => event.account,
 *   state: Schema.Int
 * })
 * ```
 *
 * @example
 * ```ts
 * // Events that do not repeat the id of their stream: one document per stream, from the envelope.
 * import { Schema } from "effect"
 * import { Projection } from "effect-eventually"
 *
 * class ItemAdded extends Schema.TaggedClass<ItemAdded>()("ItemAdded", { sku: Schema.String }) {}
 *
 * const Cart = Schema.Struct({ cartId: Schema.String, items: Schema.Number, version: Schema.Number })
 *
 * const carts = Projection.make({
 *   name: "carts",
 *   initialState: { cartId: "", items: 0, version: 0 },
 *   evolve: (cart: typeof Cart.Type, _event: ItemAdded, { streamId, version }) => ({
 *     cartId: streamId,
 *     items: cart.items + 1,
 *     version
 *   }),
 *   documentId: (_event: ItemAdded, { streamId }) => streamId,
 *   state: Cart
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <Event, State, StateEncoded>(
  options: MakeOptions<Event, State, StateEncoded>
): Projection<Event, State> => {
  if (!isValidName(options.name)) {
    throw new RangeError(
      `Projection.make: invalid name ${
        JSON.stringify(options.name)
      }: use 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit`
    )
  }
  const encode = Schema.encodeSync(options.state)
  const decode = Schema.decodeUnknownEither(options.state)
  return {
    name: options.name,
    initialState: options.initialState,
    evolve: options.evolve,
    documentId: options.documentId,
    encodeState: encode,
    decodeState: (encoded) =>
      Either.mapLeft(decode(encoded), (error) => ParseResult.TreeFormatter.formatErrorSync(error))
  }
}

/**
 * For each source stream, the version of its last event applied to a document.
 *
 * @since 0.1.0
 * @category models
 */
export type Positions = Readonly<Record<string, number>>

/**
 * Where an event is: its stream and its version in that stream.
 *
 * @since 0.1.0
 * @category models
 */
export interface Position {
  readonly streamId: string
  readonly version: number
}

/**
 * What the projector knows of an event besides its payload, given to
 * {@link Projection.documentId}: its position (stream and version), its id, its type, the
 * version of its schema and its metadata (timestamp, correlation and causation ids, properties).
 * A `RecordedEvent` is one.
 *
 * @since 0.1.0
 * @category models
 */
export interface EventEnvelope extends Position {
  readonly eventId: string
  readonly type: string
  readonly schemaVersion: number
  readonly metadata: EventMetadata
}

/**
 * A document: the folded state and the positions it has applied.
 *
 * @since 0.1.0
 * @category models
 */
export interface Document<State> {
  readonly state: State
  readonly positions: Positions
}

/**
 * The document no event has reached yet.
 *
 * @since 0.1.0
 * @category constructors
 */
export const empty = <Event, State>(projection: Projection<Event, State>): Document<State> => ({
  state: projection.initialState,
  positions: {}
})

/**
 * The version of the last event of `streamId` applied to the document, 0 when none was.
 *
 * @since 0.1.0
 * @category constructors
 */
export const lastApplied = (positions: Positions, streamId: string): number =>
  // `hasOwn`: a stream called "constructor" or "__proto__" must not read the prototype.
  Object.hasOwn(positions, streamId) ? positions[streamId] : 0

/**
 * What to do with an event that arrives before an earlier event of its stream was applied
 * (its version is more than one past the document's position for the stream):
 *
 * - `"fail"`: refuse it ({@link apply} returns `Gap`, the projector fails with the transient
 *   `ProjectionGap`), so the event is retried later, after the earlier ones. Every order of
 *   delivery, with duplicates, then converges to the fold of the stream in order. It requires
 *   that every event of a stream that reaches a document belongs to it: a stream whose events
 *   are spread over several documents, or partly ignored, leaves gaps that never fill.
 * - `"apply"`: apply it anyway and move the position to its version. Nothing ever waits, but an
 *   earlier event that arrives later is then taken for a duplicate and dropped.
 *
 * @since 0.1.0
 * @category models
 */
export type GapPolicy = "fail" | "apply"

/**
 * The default gap policy: `"fail"`, since a refused event is visible and retried, while a
 * dropped one is silently lost.
 *
 * @since 0.1.0
 * @category models
 */
export const defaultGapPolicy: GapPolicy = "fail"

/**
 * The outcome of {@link apply}.
 *
 * @since 0.1.0
 * @category models
 */
export type Applied<State> =
  | {
    /** The event was applied: store this document. */
    readonly _tag: "Updated"
    readonly document: Document<State>
  }
  | {
    /** The event was already applied (its version is at or below the stream's position): nothing to store. */
    readonly _tag: "Unchanged"
    readonly lastApplied: number
  }
  | {
    /** Under the `"fail"` policy, an earlier event of the stream is missing: retry later. */
    readonly _tag: "Gap"
    readonly lastApplied: number
  }

/**
 * Applies one event at its position to a document (the empty document when `undefined`):
 * the pure step of a projection update. `evolve` receives `position` as its third argument.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { Projection } from "effect-eventually"
 *
 * const counts = Projection.make({
 *   name: "counts",
 *   initialState: 0,
 *   evolve: (count: number, _event: string) => count + 1,
 *   documentId: (_event: string) => "all",
 *   state: Schema.Int
 * })
 *
 * const first = Projection.apply(counts, undefined, "a", { streamId: "s-1", version: 1 })
 * // { _tag: "Updated", document: { state: 1, positions: { "s-1": 1 } } }
 * if (first._tag === "Updated") {
 *   Projection.apply(counts, first.document, "a", { streamId: "s-1", version: 1 })
 *   // { _tag: "Unchanged", lastApplied: 1 }: a redelivered event changes nothing
 * }
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const apply = <Event, State>(
  projection: Projection<Event, State>,
  document: Document<State> | undefined,
  event: NoInfer<Event>,
  position: Position,
  options?: { readonly gaps?: GapPolicy }
): Applied<State> => {
  const current = document ?? empty(projection)
  const last = lastApplied(current.positions, position.streamId)
  if (position.version <= last) return { _tag: "Unchanged", lastApplied: last }
  if (position.version > last + 1 && (options?.gaps ?? defaultGapPolicy) === "fail") {
    return { _tag: "Gap", lastApplied: last }
  }
  return {
    _tag: "Updated",
    document: {
      state: projection.evolve(current.state, event, position),
      positions: { ...current.positions, [position.streamId]: position.version }
    }
  }
}

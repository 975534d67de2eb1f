/**
 * The typed failures of the event store. Transient failures (`EventStoreUnavailable`) and
 * permanent ones are different tags, so a retry policy can tell them apart with
 * {@link isTransient}.
 *
 * @since 0.1.0
 */
import { Predicate, Schema } from "effect"

/**
 * Another writer appended to the stream since it was read: the expected version is stale.
 * Reload, decide again, and retry.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConcurrencyConflict extends Schema.TaggedError<ConcurrencyConflict>(
  "effect-eventually/ConcurrencyConflict"
)("ConcurrencyConflict", {
  streamId: Schema.String,
  expectedVersion: Schema.Number,
  /** The version found in the store, when the store could tell it cheaply. */
  actualVersion: Schema.optional(Schema.Number)
}) {
  override get message(): string {
    const actual = this.actualVersion === undefined ? "a different version" : `version ${this.actualVersion}`
    return `Stream "${this.streamId}" was expected at version ${this.expectedVersion} but is at ${actual}: reload it and decide again.`
  }
}

/**
 * The events of one append do not fit one atomic write (100 operations or 4 MiB per entity group
 * transaction, head row included). Nothing was written.
 *
 * @since 0.1.0
 * @category errors
 */
export class AppendTooLarge extends Schema.TaggedError<AppendTooLarge>("effect-eventually/AppendTooLarge")(
  "AppendTooLarge",
  {
    streamId: Schema.String,
    eventCount: Schema.Number,
    /** Encoded size of the whole append, in bytes, when the size was the limit broken. */
    bytes: Schema.optional(Schema.Number),
    maxEvents: Schema.Number,
    maxBytes: Schema.Number
  }
) {
  override get message(): string {
    return `Append to stream "${this.streamId}" of ${this.eventCount} event(s)${
      this.bytes === undefined ? "" : ` (${this.bytes} bytes)`
    } does not fit one atomic write (at most ${this.maxEvents} events and ${this.maxBytes} bytes): nothing was written. Split the decision into smaller commands.`
  }
}

/**
 * One event (or the snapshot) is larger than a Table Storage entity or string property may be.
 * Nothing was written.
 *
 * @since 0.1.0
 * @category errors
 */
export class EventTooLarge extends Schema.TaggedError<EventTooLarge>("effect-eventually/EventTooLarge")(
  "EventTooLarge",
  {
    streamId: Schema.String,
    /** The event type, or `"$snapshot"` for a snapshot. */
    type: Schema.String,
    /** The index of the event in the append, or -1 for a snapshot. */
    index: Schema.Number,
    bytes: Schema.Number,
    maxBytes: Schema.Number
  }
) {
  override get message(): string {
    return `Event ${this.index} ("${this.type}") of stream "${this.streamId}" is ${this.bytes} bytes once encoded, over the limit of ${this.maxBytes} bytes: nothing was written. Store large payloads elsewhere and reference them.`
  }
}

/**
 * A stream id that cannot be stored: empty, over 1 KiB in UTF-8, or containing `/`, `\`, `#`,
 * `?` or a control character (Table Storage forbids them in keys).
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidStreamId extends Schema.TaggedError<InvalidStreamId>("effect-eventually/InvalidStreamId")(
  "InvalidStreamId",
  {
    streamId: Schema.String,
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Invalid stream id ${JSON.stringify(this.streamId.slice(0, 100))}: ${this.reason}.`
  }
}

/**
 * The store could not be reached or refused for a moment (HTTP 503 / 500, timeouts, resets,
 * throttling). Transient: the adapter has already retried under its schedule; the write may be
 * retried again later, and an append that failed this way wrote either everything or nothing.
 *
 * @since 0.1.0
 * @category errors
 */
export class EventStoreUnavailable extends Schema.TaggedError<EventStoreUnavailable>(
  "effect-eventually/EventStoreUnavailable"
)("EventStoreUnavailable", {
  operation: Schema.String,
  streamId: Schema.optional(Schema.String),
  /** HTTP status or error code, when there was one. */
  code: Schema.optional(Schema.String),
  reason: Schema.String
}) {
  override get message(): string {
    return `Event store unavailable during ${this.operation}${
      this.streamId === undefined ? "" : ` on stream "${this.streamId}"`
    }${this.code === undefined ? "" : ` (${this.code})`}: ${this.reason}. This is transient; retry later.`
  }
}

/**
 * The store answered with something the adapter cannot use: a permanent failure such as a
 * refused credential, a missing table, or a malformed request. Not retried.
 *
 * @since 0.1.0
 * @category errors
 */
export class EventStoreFailure extends Schema.TaggedError<EventStoreFailure>("effect-eventually/EventStoreFailure")(
  "EventStoreFailure",
  {
    operation: Schema.String,
    streamId: Schema.optional(Schema.String),
    code: Schema.optional(Schema.String),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Event store failed during ${this.operation}${
      this.streamId === undefined ? "" : ` on stream "${this.streamId}"`
    }${this.code === undefined ? "" : ` (${this.code})`}: ${this.reason}.`
  }
}

/**
 * A stored event (or snapshot) could not be decoded: an unknown type, an unsupported schema
 * version, or a payload that does not match its schema.
 *
 * @since 0.1.0
 * @category errors
 */
export class DecodeError extends Schema.TaggedError<DecodeError>("effect-eventually/DecodeError")("DecodeError", {
  streamId: Schema.String,
  /** The version of the event, or of the snapshot. */
  version: Schema.Number,
  /** The stored event type, or `"$snapshot"`. */
  type: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `Cannot decode "${this.type}" at version ${this.version} of stream "${this.streamId}": ${this.reason}`
  }
}

/**
 * Any failure an event store may report.
 *
 * @since 0.1.0
 * @category errors
 */
export type EventStoreError =
  | ConcurrencyConflict
  | AppendTooLarge
  | EventTooLarge
  | InvalidStreamId
  | EventStoreUnavailable
  | EventStoreFailure
  | DecodeError

/**
 * True for failures worth retrying as they are (the same request may succeed later).
 *
 * @since 0.1.0
 * @category errors
 */
export const isTransient = (error: unknown): error is EventStoreUnavailable =>
  Predicate.isTagged(error, "EventStoreUnavailable")

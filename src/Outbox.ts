/**
 * The outbox: a runtime that forwards every event committed to the event store to Service Bus (a
 * queue or a topic per event, chosen by `route`), even when the process dies right after the
 * commit.
 *
 * - **At least once.** Events are sent first, and the stream's dispatched position is recorded
 *   after, with one conditional write. A crash or a failure between the two resends the events.
 * - **No second effect downstream.** A message's id is derived from its event's id
 *   (`Message.idFromEvent`), so with duplicate detection on the destination a resend is dropped.
 * - **Ordered per stream and destination.** A stream's events are sent in version order, one
 *   stream at a time per process.
 * - **Low latency, and nothing lost.** A commit in this process wakes the pump at once; a sweep
 *   of the store's pending index on a `Schedule` finds what a crashed process left behind.
 *
 * See `docs/outbox.md` for the design, the costs and the crash analysis.
 *
 * @since 0.1.0
 */
import type { Duration, Effect, Schedule, Scope } from "effect"
import { Context, Layer } from "effect"
import type { ReadError, RecordedEvent } from "./EventStore.js"
import type { EventStoreFailure, EventStoreUnavailable } from "./EventStoreError.js"
import * as internal from "./internal/outbox.js"
import type { OutgoingMessage } from "./Message.js"
import type { MessageSender } from "./MessageSender.js"
import type { OutboxStore } from "./OutboxStore.js"
import type { SendError } from "./ServiceBusError.js"
import * as StreamId from "./StreamId.js"

/**
 * What a dispatch can fail with: reading the stream, sending, or recording the position.
 *
 * @since 0.1.0
 * @category errors
 */
export type DispatchError = ReadError | EventStoreUnavailable | EventStoreFailure | SendError

/**
 * Options of the outbox: routing, batch size, concurrency, sweep, grace period and retries.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * The queue or topic an event goes to; `undefined` skips the event (it is not sent, and the
   * position moves past it). See {@link byCategory} and {@link byEventType}.
   */
  readonly route: (event: RecordedEvent) => string | undefined
  /** The most events sent (per destination) and recorded in one step; 100 by default, at most 1,000. */
  readonly batchSize?: number
  /** How many streams are dispatched at once; 8 by default. */
  readonly concurrency?: number
  /** When the pending index is swept; at start, then every minute by default. */
  readonly sweep?: Schedule.Schedule<unknown>
  /**
   * How old a pending bucket must be before the sweep reads it; 5 minutes by default. Never less
   * than the store's `appendWindow`; add the clock skew between processes to it.
   */
  readonly gracePeriod?: Duration.DurationInput
  /** How transient failures of a dispatch are retried; {@link defaultRetry} by default. */
  readonly retry?: Schedule.Schedule<unknown, DispatchError>
}

/**
 * What a sweep did.
 *
 * @since 0.1.0
 * @category models
 */
export interface SweepResult {
  /** Streams found in the pending index's ended buckets. */
  readonly streams: number
  /** Index entries removed (their streams were fully dispatched). */
  readonly cleared: number
  /** Streams that could not be dispatched (tried again on the next sweep). */
  readonly failures: number
}

/**
 * The running outbox. The pump works by itself; these are for tests and operations.
 *
 * @since 0.1.0
 * @category models
 */
export interface OutboxService {
  /** Sweeps the pending index now (as the schedule does). */
  readonly sweep: Effect.Effect<SweepResult, DispatchError>
  /** Dispatches a stream now and waits for it. */
  readonly dispatch: (streamId: string) => Effect.Effect<void, DispatchError>
  /** Queues a stream for dispatch, as a commit notification does. */
  readonly wake: (streamId: string) => Effect.Effect<void>
}

/**
 * The running outbox, as a service: sweep or dispatch on demand.
 *
 * @since 0.1.0
 * @category services
 */
export class Outbox extends Context.Tag("effect-eventually/Outbox")<Outbox, OutboxService>() {}

/**
 * The retry policy for transient failures unless `retry` replaces it: exponential backoff from
 * 100 milliseconds with jitter, each wait at most 5 seconds, at most 6 retries. After that the
 * stream is tried again 5 seconds later.
 *
 * @since 0.1.0
 * @category models
 */
export const defaultRetry: Schedule.Schedule<unknown, DispatchError> = internal.defaultRetry

/**
 * The application property names of the messages the outbox sends.
 *
 * @since 0.1.0
 * @category models
 */
export const propertyNames: {
  readonly streamId: "streamId"
  readonly version: "streamVersion"
  readonly eventType: "eventType"
  readonly schemaVersion: "schemaVersion"
} = internal.propertyNames

/**
 * The message carrying an event: id derived from the event id, subject = event type,
 * correlation and causation ids from the metadata, the stream id, version, type and schema
 * version as application properties, body = the event's data.
 *
 * @since 0.1.0
 * @category constructors
 */
export const toMessage: (event: RecordedEvent) => OutgoingMessage = internal.toMessage

/**
 * Routes by the stream's category (`StreamId.category`, the part before the first `-`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const byCategory =
  (routes: Readonly<Record<string, string>>, fallback?: string) => (event: RecordedEvent): string | undefined =>
    Object.hasOwn(routes, StreamId.category(event.streamId)) ? routes[StreamId.category(event.streamId)] : fallback

/**
 * Routes by event type.
 *
 * @since 0.1.0
 * @category constructors
 */
export const byEventType =
  (routes: Readonly<Record<string, string>>, fallback?: string) => (event: RecordedEvent): string | undefined =>
    Object.hasOwn(routes, event.type) ? routes[event.type] : fallback

/**
 * The outbox's metrics: `outbox_events_dispatched` and `outbox_dispatch_failures` (counters),
 * `outbox_lag_ms` (histogram, from an event's timestamp to its send), `outbox_queued_streams`
 * (gauge).
 *
 * @since 0.1.0
 * @category models
 */
export const metrics = internal.metrics

/**
 * Starts the outbox for the lifetime of the scope: its fibers are interrupted when the scope
 * closes. An interrupted dispatch leaves no half state: the position is only recorded after a
 * successful send, so the batch in flight is sent again later (and dropped as a duplicate).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (
  options: Options
) => Effect.Effect<OutboxService, never, OutboxStore | MessageSender | Scope.Scope> = internal.make

/**
 * The outbox as a layer: it runs as long as the layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<Outbox, never, OutboxStore | MessageSender> =>
  Layer.scoped(Outbox, make(options))

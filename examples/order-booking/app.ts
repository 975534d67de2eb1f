/**
 * The order-booking app: an HTTP API over the Booking aggregate, the outbox publishing booking
 * events to the `booking-events` topic, and two message processors:
 *
 * - the booking processor, on a subscription of that topic, keeps a summary per booking in Table
 *   Storage and, for confirmations and cancellations, sends a `SendNotification` command to the
 *   `notifications` queue (the summary write is its one write; the command goes out in the same
 *   Service Bus transaction as the completion of the event's message);
 * - the notification processor "sends" each notification and records it, one document per
 *   booking and kind.
 *
 * `makeApp` starts everything for the lifetime of a scope and stops it in reverse order when the
 * scope closes: the HTTP server first, then the processors (waiting for messages in flight),
 * the outbox, and last the embedded Azurite and Service Bus emulator when they were started.
 * Each part can also run on its own, in a process of its own (`makeStores`, `makeOutbox`,
 * `makeApi`, `makeBookingProcessor`, `makeNotificationProcessor`), as the chaos run does.
 */
import type { HttpServerError } from "@effect/platform"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Clock, Config, Effect, Layer, Option, ParseResult, Predicate, Record, Schedule, Schema } from "effect"
import { createServer } from "node:http"
import * as Aggregate from "../../src/Aggregate.js"
import * as AzureTableEventStore from "../../src/AzureTableEventStore.js"
import * as AzureTableProjectionStore from "../../src/AzureTableProjectionStore.js"
import * as MessageProcessor from "../../src/MessageProcessor.js"
import * as MessageReceiver from "../../src/MessageReceiver.js"
import * as MessageSender from "../../src/MessageSender.js"
import * as Outbox from "../../src/Outbox.js"
import * as ProjectionError from "../../src/ProjectionError.js"
import { ProjectionStore } from "../../src/ProjectionStore.js"
import * as ServiceBusClient from "../../src/ServiceBusClient.js"
import * as Booking from "../booking/Booking.js"
import * as Domain from "./domain.js"
import * as Entities from "./entities.js"
import * as Infrastructure from "./infrastructure.js"
import * as Stats from "./stats.js"

export interface AppOptions {
  /** The HTTP port on 127.0.0.1; 0 (the default) picks a free one. */
  readonly port?: number
  /** How the processors commit: `atomic` (the default) or `idempotent`; see {@link ProcessorOptions}. */
  readonly mode?: MessageProcessor.Transport<never>["mode"]
}

/** What a handler's write did, as the {@link Hooks} see it. */
export type HandlerEffect =
  | {
    /** The booking processor applied an event to its booking's summary. */
    readonly _tag: "EventApplied"
    readonly messageId: string
    readonly streamId: string
    readonly version: number
    readonly type: string
  }
  | {
    /** The notification processor sent a notification and recorded it. */
    readonly _tag: "NotificationRecorded"
    readonly messageId: string
    readonly bookingId: string
    readonly kind: Domain.NotificationKind
  }

/**
 * Hooks into the processors' handlers, for tests and fault injection (the chaos run slows
 * handlers down and keeps a trace of every effect); none by default.
 */
export interface Hooks {
  /** Runs first in every handler attempt; its time counts against the message's lock. */
  readonly beforeHandle?: (context: MessageProcessor.MessageContext) => Effect.Effect<void>
  /** Runs after a handler's write took effect, within the same attempt. */
  readonly onEffect?: (effect: HandlerEffect) => Effect.Effect<void>
}

export interface App {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string
  readonly port: number
  /** Where storage and Service Bus are, without secrets. */
  readonly description: ReadonlyArray<string>
  readonly stats: Effect.Effect<AppStats>
}

export const ProcessorStats = Schema.Struct({
  received: Schema.Int,
  completed: Schema.Int,
  abandoned: Schema.Int,
  deadLettered: Schema.Int,
  retries: Schema.Int
})

export const AppStats = Schema.Struct({
  ...Stats.Snapshot.fields,
  bookingProcessor: ProcessorStats,
  notificationProcessor: ProcessorStats
})
export type AppStats = typeof AppStats.Type

const tables = Config.all({
  events: Config.string("EVENT_STORE_TABLE").pipe(Config.withDefault("bookingevents")),
  projections: Config.string("PROJECTION_TABLE").pipe(Config.withDefault("bookingprojections"))
})

// ---------------------------------------------------------------------------------------------
// Processors
// ---------------------------------------------------------------------------------------------

// When the booking was confirmed or cancelled, from the event's data as the outbox sent it.
const Confirmed = Schema.Struct({ confirmedAt: Schema.String })
const Cancelled = Schema.Struct({ cancelledAt: Schema.String })
const notificationTime: {
  readonly [K in Domain.NotificationKind]: (body: unknown) => Effect.Effect<string, ParseResult.ParseError>
} = {
  BookingConfirmed: (body) => Effect.map(Schema.decodeUnknown(Confirmed)(body), (data) => data.confirmedAt),
  BookingCancelled: (body) => Effect.map(Schema.decodeUnknown(Cancelled)(body), (data) => data.cancelledAt)
}

const isNotificationKind = (type: string): type is Domain.NotificationKind => Object.hasOwn(notificationTime, type)

const isUpdated = (result: unknown): result is { readonly _tag: "Updated"; readonly documentId: string } =>
  Predicate.isTagged(result, "Updated") && Predicate.hasProperty(result, "documentId") &&
  typeof result.documentId === "string"

// The events of one command arrive together and are handled concurrently, so a summary often
// refuses an event whose predecessor is still being applied (a ProjectionGap, transient). That
// predecessor lands within milliseconds: retry soon and often, rather than with the default
// backoff from 100 ms meant for an unavailable service.
const bookingRetry = Schedule.exponential("5 millis", 1.5).pipe(
  Schedule.jittered,
  Schedule.union(Schedule.spaced("250 millis")),
  Schedule.intersect(Schedule.recurs(12))
)

// One lock per booking stream, taken in the order the messages arrive (the outbox sends a
// stream's events in order): a booking's events are applied one after the other instead of
// racing and retrying on gaps, while different bookings run concurrently. Only an optimization:
// the positions and the gap retries keep the summaries right without it, across processes too.
const makeStreamLocks = () => {
  const locks = new Map<string, { readonly semaphore: Effect.Semaphore; users: number }>()
  return <A, E, R>(streamId: string, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.acquireUseRelease(
      Effect.sync(() => {
        const lock = locks.get(streamId) ?? { semaphore: Effect.unsafeMakeSemaphore(1), users: 0 }
        lock.users++
        locks.set(streamId, lock)
        return lock
      }),
      (lock) => lock.semaphore.withPermits(1)(effect),
      (lock) =>
        Effect.sync(() => {
          if (--lock.users === 0) locks.delete(streamId)
        })
    )
}

const bookingHandlers = (stats: Stats.Stats, hooks: Hooks) => {
  const inStreamOrder = makeStreamLocks()
  return Record.map(
    MessageProcessor.projectionHandler(Domain.summaries, Booking.events),
    (project, type): MessageProcessor.Handler<unknown, ProjectionStore> => ({
      decode: project.decode,
      handle: (body, context) => {
        const streamId = context.message.applicationProperties?.[Outbox.propertyNames.streamId]
        const version = context.message.applicationProperties?.[Outbox.propertyNames.version]
        const handle = Effect.gen(function*() {
          if (hooks.beforeHandle !== undefined) yield* hooks.beforeHandle(context)
          const result = yield* project.handle(body, context)
          if (isUpdated(result) && typeof streamId === "string") {
            yield* stats.projected({ streamId, version: Number(version) }, result.documentId)
            if (hooks.onEffect !== undefined) {
              yield* hooks.onEffect({
                _tag: "EventApplied",
                messageId: context.messageId,
                streamId,
                version: Number(version),
                type
              })
            }
          }
          // Sent again when the event was already projected (a redelivery after a failed
          // commit): the notification must go out with the completion, and its id, derived from
          // the received message's, makes the resend a duplicate the queue drops.
          if (isNotificationKind(type) && typeof streamId === "string") {
            const at = yield* notificationTime[type](body)
            yield* context.publish(
              Entities.notifications,
              Domain.SendNotification,
              new Domain.SendNotification({ bookingId: Domain.bookingIdOf(streamId), kind: type, at })
            )
          }
          return result
        })
        return typeof streamId === "string" ? inStreamOrder(streamId, handle) : handle
      }
    })
  )
}

const encodeSent = Schema.encodeSync(Domain.SentNotification)

const notificationHandlers = (stats: Stats.Stats, hooks: Hooks) => ({
  SendNotification: MessageProcessor.handler(
    Domain.SendNotification,
    Effect.fn("OrderBooking.sendNotification")(function*(command, context) {
      if (hooks.beforeHandle !== undefined) yield* hooks.beforeHandle(context)
      // A real app would call an email or SMS service here, with the message id as its
      // idempotency key. The record below is the handler's one write.
      yield* Effect.annotateCurrentSpan({ bookingId: command.bookingId, kind: command.kind })
      const store = yield* ProjectionStore
      const sentAt = new Date(yield* Clock.currentTimeMillis).toISOString()
      const recorded = yield* store.put(
        Domain.sentNotifications,
        Domain.notificationDocumentId(command.bookingId, command.kind),
        {
          state: encodeSent({
            bookingId: command.bookingId,
            kind: command.kind,
            at: command.at,
            sentAt,
            messageId: context.messageId
          }),
          positions: {}
        },
        "new"
      ).pipe(
        Effect.as(true),
        // Already recorded by an earlier delivery whose completion was lost: nothing to do.
        Effect.catchTag("DocumentConflict", () => Effect.succeed(false))
      )
      if (recorded) {
        yield* stats.notificationRecorded
        yield* Effect.logDebug(`Notification ${command.kind} for booking ${command.bookingId} sent`)
        if (hooks.onEffect !== undefined) {
          yield* hooks.onEffect({
            _tag: "NotificationRecorded",
            messageId: context.messageId,
            bookingId: command.bookingId,
            kind: command.kind
          })
        }
      }
    })
  )
})

// ---------------------------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------------------------

export const BookingId = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_-]{1,64}$/))

export const PlaceRequest = Schema.Struct({
  bookingId: Schema.optional(BookingId),
  roomId: Booking.RoomId,
  capacity: Booking.Capacity,
  checkIn: Schema.Date,
  checkOut: Schema.Date,
  guests: Schema.NonEmptyArray(Booking.GuestName)
})

export const CancelRequest = Schema.Struct({
  reason: Schema.optionalWith(Schema.String, { default: () => "cancelled by the guest" })
})

export const CommandResponse = Schema.Struct({
  bookingId: Schema.String,
  version: Schema.Int,
  status: Schema.String,
  events: Schema.Array(Schema.String)
})
export type CommandResponse = typeof CommandResponse.Type

const PathParams = Schema.Struct({ bookingId: BookingId })

const domainErrors: Readonly<Record<Booking.BookingError["_tag"], number>> = {
  BookingNotFound: 404,
  BookingAlreadyPlaced: 409,
  InvalidDates: 422,
  CapacityExceeded: 422,
  BookingIsCancelled: 409,
  NotConfirmed: 409,
  AlreadyCheckedIn: 409,
  StayEnded: 409
}

const problem = (status: number, error: string, message: string) =>
  HttpServerResponse.unsafeJson({ error, message }, { status })

const isDomainError = (error: { readonly _tag: string }): error is Booking.BookingError =>
  Object.hasOwn(domainErrors, error._tag)

const runCommand = (stats: Stats.Stats, bookingId: string, command: Booking.Command, status = 200) =>
  Effect.gen(function*() {
    const startedAt = yield* Clock.currentTimeMillis
    const result = yield* Aggregate.handle(Booking.aggregate, Booking.streamId(bookingId), command)
    const last = result.recorded.at(-1)
    yield* stats.commandHandled({
      _tag: "Accepted",
      events: result.recorded.length,
      startedAt,
      ...(last === undefined ? {} : { last: { streamId: last.streamId, version: last.version } })
    })
    const body: CommandResponse = {
      bookingId,
      version: result.version,
      status: result.state._tag === "Booking" ? result.state.status : "NoBooking",
      events: result.recorded.map((event) => event.type)
    }
    return HttpServerResponse.unsafeJson(body, { status })
  }).pipe(
    Effect.catchAll((error) =>
      isDomainError(error)
        ? Effect.as(
          stats.commandHandled({ _tag: "Rejected" }),
          problem(domainErrors[error._tag], error._tag, error.message)
        )
        : Effect.as(
          Effect.logWarning(`${command._tag} for booking ${bookingId} failed`, error),
          problem(503, error._tag, error.message)
        )
    ),
    Effect.withSpan(`OrderBooking.${command._tag}`, { attributes: { bookingId } })
  )

const badRequest = (error: ParseResult.ParseError | HttpServerError.RequestError) =>
  Effect.succeed(
    problem(
      400,
      "BadRequest",
      ParseResult.isParseError(error) ? ParseResult.TreeFormatter.formatErrorSync(error) : error.message
    )
  )

const now = Effect.map(Clock.currentTimeMillis, (millis) => new Date(millis))

const routes = (stats: Stats.Stats, appStats: Effect.Effect<AppStats>) =>
  HttpRouter.empty.pipe(
    HttpRouter.post(
      "/bookings",
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.schemaBodyJson(PlaceRequest)
        const bookingId = request.bookingId ?? crypto.randomUUID()
        const command = new Booking.PlaceBooking({
          roomId: request.roomId,
          capacity: request.capacity,
          checkIn: request.checkIn,
          checkOut: request.checkOut,
          guests: request.guests,
          placedAt: yield* now
        })
        return yield* runCommand(stats, bookingId, command, 201)
      }).pipe(Effect.catchTags({ ParseError: badRequest, RequestError: badRequest }))
    ),
    HttpRouter.post(
      "/bookings/:bookingId/confirm",
      Effect.gen(function*() {
        const { bookingId } = yield* HttpRouter.schemaPathParams(PathParams)
        return yield* runCommand(stats, bookingId, new Booking.ConfirmBooking({ confirmedAt: yield* now }))
      }).pipe(Effect.catchTags({ ParseError: badRequest }))
    ),
    HttpRouter.post(
      "/bookings/:bookingId/cancel",
      Effect.gen(function*() {
        const { bookingId } = yield* HttpRouter.schemaPathParams(PathParams)
        const { reason } = yield* HttpServerRequest.schemaBodyJson(CancelRequest)
        return yield* runCommand(stats, bookingId, new Booking.CancelBooking({ reason, cancelledAt: yield* now }))
      }).pipe(Effect.catchTags({ ParseError: badRequest, RequestError: badRequest }))
    ),
    HttpRouter.get(
      "/bookings/:bookingId",
      Effect.gen(function*() {
        const { bookingId } = yield* HttpRouter.schemaPathParams(PathParams)
        const store = yield* ProjectionStore
        const document = yield* store.get(Domain.summaries.name, bookingId)
        if (Option.isNone(document)) return problem(404, "NotProjected", `No summary of booking ${bookingId} yet.`)
        // The version of the booking the summary reflects: the last event it applied.
        const version = document.value.positions[Booking.streamId(bookingId)] ?? 0
        return HttpServerResponse.unsafeJson({ ...(document.value.state as object), version })
      }).pipe(
        Effect.catchTags({ ParseError: badRequest }),
        Effect.catchIf(ProjectionError.isTransient, (error) => Effect.succeed(problem(503, error._tag, error.message))),
        Effect.withSpan("OrderBooking.getSummary")
      )
    ),
    HttpRouter.get(
      "/bookings/:bookingId/notifications",
      Effect.gen(function*() {
        const { bookingId } = yield* HttpRouter.schemaPathParams(PathParams)
        const store = yield* ProjectionStore
        const documents = yield* Effect.forEach(
          Domain.NotificationKind.literals,
          (kind) => store.get(Domain.sentNotifications, Domain.notificationDocumentId(bookingId, kind)),
          { concurrency: "unbounded" }
        )
        const notifications = documents.flatMap((document) => Option.isSome(document) ? [document.value.state] : [])
        return HttpServerResponse.unsafeJson({ bookingId, notifications })
      }).pipe(
        Effect.catchTags({ ParseError: badRequest }),
        Effect.catchIf(ProjectionError.isTransient, (error) => Effect.succeed(problem(503, error._tag, error.message))),
        Effect.withSpan("OrderBooking.getNotifications")
      )
    ),
    HttpRouter.get("/stats", Effect.map(appStats, (value) => HttpServerResponse.unsafeJson(value))),
    HttpRouter.get("/health", Effect.succeed(HttpServerResponse.text("ok")))
  )

// ---------------------------------------------------------------------------------------------
// The parts, each for the lifetime of a scope
// ---------------------------------------------------------------------------------------------

const processorStats = (stats: MessageProcessor.Stats): typeof ProcessorStats.Type => ({
  received: stats.received,
  completed: stats.completed,
  abandoned: stats.abandoned,
  deadLettered: stats.deadLettered,
  retries: stats.retries
})

const noProcessorStats: typeof ProcessorStats.Type = {
  received: 0,
  completed: 0,
  abandoned: 0,
  deadLettered: 0,
  retries: 0
}

/** The store layers' settings beyond where the tables are: retries, timeouts, the pending index. */
export interface StoreOptions {
  readonly eventStore?: AzureTableEventStore.StoreOptions
  readonly projectionStore?: AzureTableProjectionStore.StoreOptions
}

/**
 * The event store (with the outbox's store) and the projection store, on the tables named by
 * `EVENT_STORE_TABLE` and `PROJECTION_TABLE` (created when missing).
 */
export const makeStores = (infrastructure: Infrastructure.Infrastructure, options: StoreOptions = {}) =>
  Effect.gen(function*() {
    const tableNames = yield* tables
    const context = yield* Layer.build(Layer.merge(
      AzureTableEventStore.layer({ ...options.eventStore, ...infrastructure.storage, tableName: tableNames.events }),
      AzureTableProjectionStore.layer({
        ...options.projectionStore,
        ...infrastructure.storage,
        tableName: tableNames.projections
      })
    ))
    return { context, tableNames }
  })

/** The outbox's settings beyond its route: batch size, concurrency, sweep, grace period, retry. */
export type OutboxOptions = Omit<Outbox.Options, "route">

/**
 * The outbox pump, publishing every booking event to the `booking-events` topic, for the
 * lifetime of the scope.
 */
export const makeOutbox = (infrastructure: Infrastructure.Infrastructure, options: OutboxOptions = {}) =>
  Effect.gen(function*() {
    const sender = yield* Layer.build(
      MessageSender.layerServiceBus().pipe(Layer.provide(ServiceBusClient.layer(infrastructure.serviceBus)))
    )
    // Each dispatch is a few round trips (read, send, record the position), mostly waiting:
    // more streams at once keep up with a busier API than the default 8.
    return yield* Outbox.make({
      concurrency: 32,
      ...options,
      route: Outbox.byCategory({ booking: Entities.bookingEvents })
    }).pipe(Effect.provide(sender))
  })

export interface ProcessorOptions {
  /**
   * `atomic` (the default) completes a message and sends its outgoing messages in one Service Bus
   * transaction; `idempotent` sends them first, with ids derived from the received message, then
   * completes it (for namespaces without transactions).
   */
  readonly mode?: MessageProcessor.Transport<never>["mode"]
  readonly stats?: Stats.Stats
  readonly hooks?: Hooks
}

const transportOf = (infrastructure: Infrastructure.Infrastructure, options: ProcessorOptions) =>
  options.mode === "idempotent"
    ? MessageProcessor.idempotent({ connection: infrastructure.connection })
    : MessageProcessor.atomic({ connection: infrastructure.connection })

/**
 * The booking processor, on the `booking-processor` subscription: the summary of each booking,
 * and a `SendNotification` command for each confirmation and cancellation.
 */
export const makeBookingProcessor = (infrastructure: Infrastructure.Infrastructure, options: ProcessorOptions = {}) =>
  MessageProcessor.run({
    source: MessageReceiver.subscription(Entities.bookingEvents, Entities.bookingProcessor),
    transport: transportOf(infrastructure, options),
    handlers: bookingHandlers(options.stats ?? Stats.make(), options.hooks ?? {}),
    retry: bookingRetry,
    concurrency: 32,
    destinations: [Entities.notifications]
  })

/** The notification processor, on the `notifications` queue: one record per notification sent. */
export const makeNotificationProcessor = (
  infrastructure: Infrastructure.Infrastructure,
  options: ProcessorOptions = {}
) =>
  MessageProcessor.run({
    source: MessageReceiver.queue(Entities.notifications),
    transport: transportOf(infrastructure, options),
    handlers: notificationHandlers(options.stats ?? Stats.make(), options.hooks ?? {}),
    concurrency: 16
  })

export interface ApiOptions {
  /** The HTTP port on 127.0.0.1; 0 (the default) picks a free one. */
  readonly port?: number
  readonly stats?: Stats.Stats
  /** What `GET /stats` answers; this process's command counts, and no processor, by default. */
  readonly appStats?: Effect.Effect<AppStats>
}

/** The HTTP API on 127.0.0.1, served for the lifetime of the scope. */
export const makeApi = (options: ApiOptions = {}) =>
  Effect.gen(function*() {
    const stats = options.stats ?? Stats.make()
    const appStats = options.appStats ?? Effect.map(stats.snapshot, (snapshot) => ({
      ...snapshot,
      bookingProcessor: noProcessorStats,
      notificationProcessor: noProcessorStats
    }))
    const server = yield* NodeHttpServer.make(() => createServer(), { host: "127.0.0.1", port: options.port ?? 0 })
    yield* server.serve(routes(stats, appStats)).pipe(Effect.annotateLogs("component", "http"))
    const port = server.address._tag === "TcpAddress" ? server.address.port : 0
    return { url: `http://127.0.0.1:${port}`, port }
  })

// ---------------------------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------------------------

export const makeApp = (options: AppOptions = {}) =>
  Effect.gen(function*() {
    const infrastructure = yield* Infrastructure.make()
    const stats = Stats.make()
    const { context: services, tableNames } = yield* makeStores(infrastructure)
    yield* makeOutbox(infrastructure).pipe(Effect.provide(services))

    const processorOptions: ProcessorOptions = { stats, ...(options.mode === undefined ? {} : { mode: options.mode }) }
    const bookingProcessor = yield* makeBookingProcessor(infrastructure, processorOptions).pipe(
      Effect.provide(services)
    )
    const notificationProcessor = yield* makeNotificationProcessor(infrastructure, processorOptions).pipe(
      Effect.provide(services)
    )

    const appStats: Effect.Effect<AppStats> = Effect.all({
      snapshot: stats.snapshot,
      booking: bookingProcessor.stats,
      notification: notificationProcessor.stats
    }).pipe(Effect.map(({ booking, notification, snapshot }) => ({
      ...snapshot,
      bookingProcessor: processorStats(booking),
      notificationProcessor: processorStats(notification)
    })))

    const { port, url } = yield* makeApi({ port: options.port ?? 0, stats, appStats }).pipe(Effect.provide(services))
    const app: App = {
      url,
      port,
      description: [
        ...infrastructure.description,
        `Tables: ${tableNames.events} (events), ${tableNames.projections} (projections)`
      ],
      stats: appStats
    }
    return app
  })

/**
 * What the order-booking app adds to the Booking aggregate: the read model (a summary per
 * booking), the notification command the booking processor sends, and the record the
 * notification processor keeps of each notification it sent.
 */
import { Effect, Either, Schema } from "effect"
import type * as EventCodec from "../../src/EventCodec.js"
import type { RecordedEvent } from "../../src/EventStore.js"
import * as Projection from "../../src/Projection.js"
import * as Booking from "../booking/Booking.js"

export const bookingIdOf = (streamId: string): string => streamId.slice("booking-".length)

// ---------------------------------------------------------------------------------------------
// Booking events as the projection sees them
// ---------------------------------------------------------------------------------------------

/**
 * A booking event with the booking it belongs to. Booking events do not repeat their booking's
 * id (the stream says it), and a projection routes an event to its document from the event
 * alone, so the codec below adds the id from the stream when it decodes.
 */
export interface BookingEvent {
  readonly _tag: Booking.Event["_tag"]
  readonly bookingId: string
  readonly event: Booking.Event
}

const withBooking = (recorded: RecordedEvent) => (event: Booking.Event): BookingEvent => ({
  _tag: event._tag,
  bookingId: bookingIdOf(recorded.streamId),
  event
})

export const bookingEvents: EventCodec.EventCodec<BookingEvent> = {
  types: Booking.events.types,
  schemaVersionOf: Booking.events.schemaVersionOf,
  encode: (event, options) => Booking.events.encode(event.event, options),
  decode: (recorded) => Effect.map(Booking.events.decode(recorded), withBooking(recorded)),
  decodeEither: (recorded) => Either.map(Booking.events.decodeEither(recorded), withBooking(recorded))
}

// ---------------------------------------------------------------------------------------------
// The summary projection: one document per booking
// ---------------------------------------------------------------------------------------------

// Dates are kept as ISO strings: the summary is served as JSON as it is stored.
export const Summary = Schema.Struct({
  bookingId: Schema.String,
  status: Booking.Status,
  roomId: Schema.String,
  checkIn: Schema.String,
  checkOut: Schema.String,
  guests: Schema.Array(Schema.String),
  placedAt: Schema.String,
  confirmedAt: Schema.NullOr(Schema.String),
  cancelledAt: Schema.NullOr(Schema.String),
  cancelReason: Schema.NullOr(Schema.String)
})
export type Summary = typeof Summary.Type

const noSummary: Summary = {
  bookingId: "",
  status: "Placed",
  roomId: "",
  checkIn: "",
  checkOut: "",
  guests: [],
  placedAt: "",
  confirmedAt: null,
  cancelledAt: null,
  cancelReason: null
}

// Follows the decider's evolve, so the summary shows what the aggregate decided.
const evolveSummary = (summary: Summary, { bookingId, event }: BookingEvent): Summary => {
  const state = { ...summary, bookingId }
  switch (event._tag) {
    case "BookingPlaced":
      return {
        ...state,
        roomId: event.roomId,
        checkIn: event.checkIn.toISOString(),
        checkOut: event.checkOut.toISOString(),
        placedAt: event.placedAt.toISOString()
      }
    case "GuestAdded":
      return state.guests.includes(event.name) ? state : { ...state, guests: [...state.guests, event.name] }
    case "BookingConfirmed":
      return state.status === "Placed"
        ? { ...state, status: "Confirmed", confirmedAt: event.confirmedAt.toISOString() }
        : state
    case "BookingCancelled":
      return {
        ...state,
        status: "Cancelled",
        cancelledAt: event.cancelledAt.toISOString(),
        cancelReason: event.reason
      }
    case "DatesChanged":
      return { ...state, checkIn: event.checkIn.toISOString(), checkOut: event.checkOut.toISOString() }
    case "GuestsCheckedIn":
      return state.status === "Cancelled" ? state : { ...state, status: "CheckedIn" }
  }
}

export const summaries = Projection.make({
  name: "booking-summary",
  initialState: noSummary,
  evolve: evolveSummary,
  documentId: (event: BookingEvent) => event.bookingId,
  state: Summary
})

// ---------------------------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------------------------

export const NotificationKind = Schema.Literal("BookingConfirmed", "BookingCancelled")
export type NotificationKind = typeof NotificationKind.Type

/** The command the booking processor sends to the notifications queue. */
export class SendNotification extends Schema.TaggedClass<SendNotification>()("SendNotification", {
  bookingId: Schema.String,
  kind: NotificationKind,
  /** When the booking changed, from the event. */
  at: Schema.String
}) {}

/** What the notification processor records once a notification is sent. */
export const SentNotification = Schema.Struct({
  bookingId: Schema.String,
  kind: NotificationKind,
  at: Schema.String,
  sentAt: Schema.String,
  messageId: Schema.String
})
export type SentNotification = typeof SentNotification.Type

/** The projection-store namespace of sent notifications: one document per booking and kind. */
export const sentNotifications = "notification-sent"

export const notificationDocumentId = (bookingId: string, kind: NotificationKind): string => `${bookingId}.${kind}`

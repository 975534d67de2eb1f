/**
 * What the order-booking app adds to the Booking aggregate: the read model (a summary per
 * booking), the notification command the booking processor sends, and the record the
 * notification processor keeps of each notification it sent.
 */
import { Schema } from "effect"
import * as Projection from "../../src/Projection.js"
import * as Booking from "../booking/Booking.js"

export const bookingIdOf = (streamId: string): string => streamId.slice("booking-".length)

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

// Follows the decider's evolve, so the summary shows what the aggregate decided. Booking events do
// not repeat their booking's id: the stream they come from says it.
const evolveSummary = (summary: Summary, event: Booking.Event, position: Projection.Position): Summary => {
  const state = { ...summary, bookingId: bookingIdOf(position.streamId) }
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
  // One summary per booking stream.
  documentId: (_event: Booking.Event, envelope: Projection.EventEnvelope) => bookingIdOf(envelope.streamId),
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

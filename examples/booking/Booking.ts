/**
 * A hotel room booking, one stream per booking: placed, confirmed, checked in, or cancelled, with
 * dates and guests that may change until check-in.
 *
 * Rules the decider enforces: dates are ordered (check-out after check-in); there are never more
 * guests than the room's capacity, and never the same guest twice; a cancelled booking is final
 * (no confirmation, date change, guest or check-in after it); only a confirmed booking can be
 * checked in, and only before its check-out date; a checked-in booking cannot be cancelled.
 * Repeating a command that already took effect (confirm, cancel, check in, add the same guest,
 * change to the same dates) changes nothing, so a retried request is harmless.
 */
import { Either, Schema } from "effect"
import * as Aggregate from "../../src/Aggregate.js"
import * as Decider from "../../src/Decider.js"
import * as EventCodec from "../../src/EventCodec.js"

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

export const GuestName = Schema.NonEmptyTrimmedString.pipe(Schema.maxLength(100))
export const Capacity = Schema.Int.pipe(Schema.between(1, 8))
export const RoomId = Schema.NonEmptyTrimmedString.pipe(Schema.maxLength(20))

// ---------------------------------------------------------------------------------------------
// Commands: what a guest or the front desk asks for. Time comes in with the command.
// ---------------------------------------------------------------------------------------------

export class PlaceBooking extends Schema.TaggedClass<PlaceBooking>()("PlaceBooking", {
  roomId: RoomId,
  /** The room's capacity, from the room catalogue at the time of booking. */
  capacity: Capacity,
  checkIn: Schema.Date,
  checkOut: Schema.Date,
  guests: Schema.NonEmptyArray(GuestName),
  placedAt: Schema.Date
}) {}

export class ConfirmBooking extends Schema.TaggedClass<ConfirmBooking>()("ConfirmBooking", {
  confirmedAt: Schema.Date
}) {}

export class CancelBooking extends Schema.TaggedClass<CancelBooking>()("CancelBooking", {
  reason: Schema.String,
  cancelledAt: Schema.Date
}) {}

export class ChangeDates extends Schema.TaggedClass<ChangeDates>()("ChangeDates", {
  checkIn: Schema.Date,
  checkOut: Schema.Date
}) {}

export class AddGuest extends Schema.TaggedClass<AddGuest>()("AddGuest", {
  name: GuestName
}) {}

export class CheckIn extends Schema.TaggedClass<CheckIn>()("CheckIn", {
  at: Schema.Date
}) {}

export const Command = Schema.Union(PlaceBooking, ConfirmBooking, CancelBooking, ChangeDates, AddGuest, CheckIn)
export type Command = typeof Command.Type

// ---------------------------------------------------------------------------------------------
// Events: what happened. Stored forever, so they keep the facts, not the rules.
// ---------------------------------------------------------------------------------------------

export class BookingPlaced extends Schema.TaggedClass<BookingPlaced>()("BookingPlaced", {
  roomId: RoomId,
  capacity: Capacity,
  checkIn: Schema.Date,
  checkOut: Schema.Date,
  placedAt: Schema.Date
}) {}

export class GuestAdded extends Schema.TaggedClass<GuestAdded>()("GuestAdded", {
  name: GuestName
}) {}

export class BookingConfirmed extends Schema.TaggedClass<BookingConfirmed>()("BookingConfirmed", {
  confirmedAt: Schema.Date
}) {}

export class BookingCancelled extends Schema.TaggedClass<BookingCancelled>()("BookingCancelled", {
  reason: Schema.String,
  cancelledAt: Schema.Date
}) {}

export class DatesChanged extends Schema.TaggedClass<DatesChanged>()("DatesChanged", {
  checkIn: Schema.Date,
  checkOut: Schema.Date
}) {}

export class GuestsCheckedIn extends Schema.TaggedClass<GuestsCheckedIn>()("GuestsCheckedIn", {
  at: Schema.Date
}) {}

export const Event = Schema.Union(
  BookingPlaced,
  GuestAdded,
  BookingConfirmed,
  BookingCancelled,
  DatesChanged,
  GuestsCheckedIn
)
export type Event = typeof Event.Type

// ---------------------------------------------------------------------------------------------
// Domain errors: why a command is refused.
// ---------------------------------------------------------------------------------------------

export class BookingNotFound extends Schema.TaggedError<BookingNotFound>()("BookingNotFound", {}) {
  override get message() {
    return "There is no booking to change: place it first."
  }
}

export class BookingAlreadyPlaced extends Schema.TaggedError<BookingAlreadyPlaced>()("BookingAlreadyPlaced", {
  roomId: Schema.String
}) {
  override get message() {
    return `This booking was already placed, for room ${this.roomId}.`
  }
}

export class InvalidDates extends Schema.TaggedError<InvalidDates>()("InvalidDates", {
  checkIn: Schema.Date,
  checkOut: Schema.Date
}) {
  override get message() {
    return `Check-out (${this.checkOut.toISOString()}) must be after check-in (${this.checkIn.toISOString()}).`
  }
}

export class CapacityExceeded extends Schema.TaggedError<CapacityExceeded>()("CapacityExceeded", {
  capacity: Schema.Int,
  guests: Schema.Int
}) {
  override get message() {
    return `The room sleeps ${this.capacity}; ${this.guests} guests is too many.`
  }
}

export class BookingIsCancelled extends Schema.TaggedError<BookingIsCancelled>()("BookingIsCancelled", {}) {
  override get message() {
    return "The booking is cancelled: place a new one."
  }
}

export class NotConfirmed extends Schema.TaggedError<NotConfirmed>()("NotConfirmed", {}) {
  override get message() {
    return "Only a confirmed booking can be checked in."
  }
}

export class AlreadyCheckedIn extends Schema.TaggedError<AlreadyCheckedIn>()("AlreadyCheckedIn", {}) {
  override get message() {
    return "The guests are checked in: the booking can no longer be cancelled or moved."
  }
}

export class StayEnded extends Schema.TaggedError<StayEnded>()("StayEnded", {
  checkOut: Schema.Date,
  at: Schema.Date
}) {
  override get message() {
    return `The stay ended at ${this.checkOut.toISOString()}: too late to check in at ${this.at.toISOString()}.`
  }
}

export type BookingError =
  | BookingNotFound
  | BookingAlreadyPlaced
  | InvalidDates
  | CapacityExceeded
  | BookingIsCancelled
  | NotConfirmed
  | AlreadyCheckedIn
  | StayEnded

// ---------------------------------------------------------------------------------------------
// State: what decisions need, folded from the events. A schema, so it can be snapshotted.
// ---------------------------------------------------------------------------------------------

export const Status = Schema.Literal("Placed", "Confirmed", "CheckedIn", "Cancelled")
export type Status = typeof Status.Type

export const NoBooking = Schema.TaggedStruct("NoBooking", {})

export const Booking = Schema.TaggedStruct("Booking", {
  status: Status,
  roomId: Schema.String,
  capacity: Schema.Int,
  checkIn: Schema.Date,
  checkOut: Schema.Date,
  guests: Schema.Array(Schema.String)
})
export type Booking = typeof Booking.Type

export const State = Schema.Union(NoBooking, Booking)
export type State = typeof State.Type

export const initialState: State = NoBooking.make({})

// ---------------------------------------------------------------------------------------------
// The decider
// ---------------------------------------------------------------------------------------------

// Total on every history: an event that does not fit the state (a history today's rules would
// not produce) is still recorded as far as it can be, and never throws.
export const evolve = (state: State, event: Event): State => {
  if (event._tag === "BookingPlaced") {
    return state._tag === "Booking" ? state : Booking.make({
      status: "Placed",
      roomId: event.roomId,
      capacity: event.capacity,
      checkIn: event.checkIn,
      checkOut: event.checkOut,
      guests: []
    })
  }
  if (state._tag === "NoBooking") return state
  switch (event._tag) {
    case "GuestAdded":
      return state.guests.includes(event.name) ? state : { ...state, guests: [...state.guests, event.name] }
    case "BookingConfirmed":
      return state.status === "Placed" ? { ...state, status: "Confirmed" } : state
    case "BookingCancelled":
      return { ...state, status: "Cancelled" }
    case "DatesChanged":
      return { ...state, checkIn: event.checkIn, checkOut: event.checkOut }
    case "GuestsCheckedIn":
      return state.status === "Cancelled" ? state : { ...state, status: "CheckedIn" }
  }
}

const datesOrdered = (checkIn: Date, checkOut: Date) => checkOut.getTime() > checkIn.getTime()

// The checks shared by every command on an existing booking that is still open to changes.
const changeable = (state: State): Either.Either<Booking, BookingNotFound | BookingIsCancelled> =>
  state._tag === "NoBooking"
    ? Either.left(new BookingNotFound())
    : state.status === "Cancelled"
    ? Either.left(new BookingIsCancelled())
    : Either.right(state)

export const decide = (command: Command, state: State): Either.Either<ReadonlyArray<Event>, BookingError> => {
  switch (command._tag) {
    case "PlaceBooking": {
      if (state._tag === "Booking") return Decider.reject(new BookingAlreadyPlaced({ roomId: state.roomId }))
      if (!datesOrdered(command.checkIn, command.checkOut)) {
        return Decider.reject(new InvalidDates({ checkIn: command.checkIn, checkOut: command.checkOut }))
      }
      const guests = [...new Set(command.guests)]
      if (guests.length > command.capacity) {
        return Decider.reject(new CapacityExceeded({ capacity: command.capacity, guests: guests.length }))
      }
      return Decider.accept<Event>(
        new BookingPlaced({
          roomId: command.roomId,
          capacity: command.capacity,
          checkIn: command.checkIn,
          checkOut: command.checkOut,
          placedAt: command.placedAt
        }),
        ...guests.map((name) => new GuestAdded({ name }))
      )
    }
    case "ConfirmBooking":
      return Either.flatMap(changeable(state), (booking) =>
        booking.status === "Placed"
          ? Decider.accept(new BookingConfirmed({ confirmedAt: command.confirmedAt }))
          : Decider.accept())
    case "CancelBooking":
      if (state._tag === "Booking" && state.status === "Cancelled") return Decider.accept()
      return Either.flatMap(changeable(state), (booking) =>
        booking.status === "CheckedIn"
          ? Decider.reject(new AlreadyCheckedIn())
          : Decider.accept(new BookingCancelled({ reason: command.reason, cancelledAt: command.cancelledAt })))
    case "ChangeDates":
      return Either.flatMap(changeable(state), (booking): Either.Either<ReadonlyArray<Event>, BookingError> => {
        if (booking.status === "CheckedIn") return Decider.reject(new AlreadyCheckedIn())
        if (!datesOrdered(command.checkIn, command.checkOut)) {
          return Decider.reject(new InvalidDates({ checkIn: command.checkIn, checkOut: command.checkOut }))
        }
        const same = booking.checkIn.getTime() === command.checkIn.getTime() &&
          booking.checkOut.getTime() === command.checkOut.getTime()
        return same
          ? Decider.accept()
          : Decider.accept(new DatesChanged({ checkIn: command.checkIn, checkOut: command.checkOut }))
      })
    case "AddGuest":
      return Either.flatMap(changeable(state), (booking): Either.Either<ReadonlyArray<Event>, BookingError> => {
        if (booking.guests.includes(command.name)) return Decider.accept()
        if (booking.guests.length >= booking.capacity) {
          return Decider.reject(new CapacityExceeded({ capacity: booking.capacity, guests: booking.guests.length + 1 }))
        }
        return Decider.accept(new GuestAdded({ name: command.name }))
      })
    case "CheckIn":
      return Either.flatMap(changeable(state), (booking): Either.Either<ReadonlyArray<Event>, BookingError> => {
        if (booking.status === "CheckedIn") return Decider.accept()
        if (booking.status !== "Confirmed") return Decider.reject(new NotConfirmed())
        if (command.at.getTime() >= booking.checkOut.getTime()) {
          return Decider.reject(new StayEnded({ checkOut: booking.checkOut, at: command.at }))
        }
        return Decider.accept(new GuestsCheckedIn({ at: command.at }))
      })
  }
}

export const decider = Decider.make<Command, Event, State, BookingError>({ initialState, evolve, decide })

// ---------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------

export const events = EventCodec.make(Event)

export const aggregate = Aggregate.make({
  decider,
  events,
  snapshot: { schema: State, schemaVersion: 1, every: 20 }
})

/** The stream of one booking. */
export const streamId = (bookingId: string): string => `booking-${bookingId}`

// ---------------------------------------------------------------------------------------------
// Invariants, checked by the property tests after every accepted command
// ---------------------------------------------------------------------------------------------

const rank: Record<Status, number> = { Placed: 0, Confirmed: 1, CheckedIn: 2, Cancelled: 3 }

/** True when `state` is consistent, and reachable from `previous` by the rules. */
export const invariant = (state: State, previous: State): boolean => {
  if (state._tag === "NoBooking") return previous._tag === "NoBooking"
  const consistent = state.guests.length <= state.capacity &&
    new Set(state.guests).size === state.guests.length &&
    datesOrdered(state.checkIn, state.checkOut)
  if (previous._tag === "NoBooking") return consistent && (state.status === "Placed")
  // Statuses only move forward: no confirmation after a cancellation, no cancellation after check-in.
  const forward = rank[state.status] >= rank[previous.status] &&
    !(previous.status === "CheckedIn" && state.status === "Cancelled") &&
    !(previous.status === "Placed" && state.status === "CheckedIn")
  return consistent && forward && state.roomId === previous.roomId
}

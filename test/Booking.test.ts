import { assert, describe, it } from "@effect/vitest"
import { Either, FastCheck } from "effect"
import {
  AddGuest,
  AlreadyCheckedIn,
  BookingAlreadyPlaced,
  BookingCancelled,
  BookingConfirmed,
  BookingIsCancelled,
  BookingNotFound,
  BookingPlaced,
  CancelBooking,
  CapacityExceeded,
  ChangeDates,
  CheckIn,
  Command,
  ConfirmBooking,
  DatesChanged,
  decider,
  Event,
  events as codec,
  GuestAdded,
  GuestsCheckedIn,
  InvalidDates,
  invariant,
  NotConfirmed,
  PlaceBooking,
  StayEnded
} from "../examples/booking/Booking.js"
import * as Decider from "../src/Decider.js"
import * as DeciderLaws from "../src/testing/DeciderLaws.js"
import * as DeciderSpec from "../src/testing/DeciderSpec.js"

const day = (n: number) => new Date(Date.UTC(2030, 6, n, 14))

const place = new PlaceBooking({
  roomId: "101",
  capacity: 3,
  checkIn: day(10),
  checkOut: day(12),
  guests: ["Ada", "Grace", "Ada"],
  placedAt: day(1)
})
const placed = new BookingPlaced({
  roomId: "101",
  capacity: 3,
  checkIn: day(10),
  checkOut: day(12),
  placedAt: day(1)
})
const ada = new GuestAdded({ name: "Ada" })
const grace = new GuestAdded({ name: "Grace" })
const confirmed = new BookingConfirmed({ confirmedAt: day(2) })
const cancelled = new BookingCancelled({ reason: "plans changed", cancelledAt: day(3) })
const checkedIn = new GuestsCheckedIn({ at: day(10) })

const spec = DeciderSpec.for(decider)

describe("Booking", () => {
  describe("PlaceBooking", () => {
    it("places the booking and adds each guest once", () => {
      spec.given([]).when(place).then([placed, ada, grace])
    })

    it("refuses check-out on or before check-in", () => {
      spec.given([]).when(new PlaceBooking({ ...place, checkOut: day(10) })).thenFails(
        new InvalidDates({ checkIn: day(10), checkOut: day(10) })
      )
    })

    it("refuses more guests than the room sleeps", () => {
      spec.given([]).when(new PlaceBooking({ ...place, capacity: 1 })).thenFails(
        new CapacityExceeded({ capacity: 1, guests: 2 })
      )
    })

    it("refuses to place a booking twice", () => {
      spec.given([placed]).when(place).thenFails(new BookingAlreadyPlaced({ roomId: "101" }))
    })
  })

  describe("ConfirmBooking", () => {
    const confirm = new ConfirmBooking({ confirmedAt: day(2) })

    it("confirms a placed booking, once", () => {
      spec.given([placed, ada]).when(confirm).then([confirmed])
      spec.given([placed, ada, confirmed]).when(confirm).thenNothing()
    })

    it("cannot confirm after a cancellation, nor a booking never placed", () => {
      spec.given([placed, cancelled]).when(confirm).thenFails(new BookingIsCancelled())
      spec.given([]).when(confirm).thenFails(new BookingNotFound())
    })
  })

  describe("CancelBooking", () => {
    const cancel = new CancelBooking({ reason: "plans changed", cancelledAt: day(3) })

    it("cancels a placed or confirmed booking; cancelling again changes nothing", () => {
      spec.given([placed]).when(cancel).then([cancelled])
      spec.given([placed, confirmed]).when(cancel).then([cancelled])
      spec.given([placed, cancelled]).when(cancel).thenNothing()
    })

    it("cannot cancel once the guests are checked in", () => {
      spec.given([placed, ada, confirmed, checkedIn]).when(cancel).thenFails(new AlreadyCheckedIn())
    })
  })

  describe("ChangeDates", () => {
    it("moves the stay; the same dates change nothing", () => {
      spec.given([placed]).when(new ChangeDates({ checkIn: day(11), checkOut: day(14) })).then([
        new DatesChanged({ checkIn: day(11), checkOut: day(14) })
      ])
      spec.given([placed]).when(new ChangeDates({ checkIn: day(10), checkOut: day(12) })).thenNothing()
    })

    it("keeps the dates ordered, and the stay fixed once cancelled or checked in", () => {
      spec.given([placed]).when(new ChangeDates({ checkIn: day(14), checkOut: day(11) })).thenFails((error) =>
        error._tag === "InvalidDates"
      )
      spec.given([placed, cancelled]).when(new ChangeDates({ checkIn: day(11), checkOut: day(14) })).thenFails(
        new BookingIsCancelled()
      )
      spec.given([placed, confirmed, checkedIn]).when(new ChangeDates({ checkIn: day(11), checkOut: day(14) }))
        .thenFails(new AlreadyCheckedIn())
    })
  })

  describe("AddGuest", () => {
    it("adds a new guest; an existing one changes nothing", () => {
      spec.given([placed, ada]).when(new AddGuest({ name: "Alan" })).then([new GuestAdded({ name: "Alan" })])
      spec.given([placed, ada]).when(new AddGuest({ name: "Ada" })).thenNothing()
    })

    it("never exceeds the capacity", () => {
      spec.given([placed, ada, grace, new GuestAdded({ name: "Alan" })]).when(new AddGuest({ name: "Edsger" }))
        .thenFails(new CapacityExceeded({ capacity: 3, guests: 4 }))
    })

    it("cannot add guests to a cancelled booking", () => {
      spec.given([placed, cancelled]).when(new AddGuest({ name: "Alan" })).thenFails(new BookingIsCancelled())
    })
  })

  describe("CheckIn", () => {
    it("checks in a confirmed booking, once", () => {
      spec.given([placed, ada, confirmed]).when(new CheckIn({ at: day(10) })).then([checkedIn])
      spec.given([placed, ada, confirmed, checkedIn]).when(new CheckIn({ at: day(10) })).thenNothing()
    })

    it("needs a confirmation, and a stay that has not ended", () => {
      spec.given([placed, ada]).when(new CheckIn({ at: day(10) })).thenFails(new NotConfirmed())
      spec.given([placed, ada, confirmed]).when(new CheckIn({ at: day(12) })).thenFails(
        new StayEnded({ checkOut: day(12), at: day(12) })
      )
    })
  })

  describe("laws", () => {
    // Schema-derived commands are mostly refused (random dates, random names): they probe the
    // edges. These focus on a few days, rooms and guests, so sequences go through every status.
    const days = FastCheck.integer({ min: 1, max: 8 }).map(day)
    const names = FastCheck.constantFrom("Ada", "Grace", "Alan", "Edsger", "Barbara")
    const focused: FastCheck.Arbitrary<Command> = FastCheck.oneof(
      FastCheck.record({
        roomId: FastCheck.constantFrom("101", "102"),
        capacity: FastCheck.integer({ min: 1, max: 4 }),
        checkIn: days,
        checkOut: days,
        guests: FastCheck.tuple(names, FastCheck.array(names, { maxLength: 3 })).map(([first, rest]) =>
          [first, ...rest] as const
        ),
        placedAt: days
      }).map((fields) => new PlaceBooking(fields)),
      days.map((confirmedAt) => new ConfirmBooking({ confirmedAt })),
      days.map((cancelledAt) => new CancelBooking({ reason: "changed plans", cancelledAt })),
      FastCheck.record({ checkIn: days, checkOut: days }).map((dates) => new ChangeDates(dates)),
      names.map((name) => new AddGuest({ name })),
      days.map((at) => new CheckIn({ at }))
    )

    describe("with commands derived from the schema", () => {
      DeciderLaws.register(it, { decider, commands: Command, events: Event, invariant, codec })
    })

    describe("with focused commands", () => {
      DeciderLaws.register(it, { decider, commands: focused, invariant, parameters: { numRuns: 300 } })
    })

    it("focused sequences reach every event type", () => {
      const seen = new Set<string>()
      for (const sequence of FastCheck.sample(FastCheck.array(focused, { maxLength: 30 }), { numRuns: 300, seed: 7 })) {
        let state = decider.initialState
        for (const command of sequence) {
          const decision = Decider.runFrom(decider, state, command)
          if (Either.isRight(decision)) {
            decision.right.events.forEach((event) => seen.add(event._tag))
            state = decision.right.state
          }
        }
      }
      assert.deepStrictEqual([...seen].sort(), [...codec.types].sort())
    })
  })
})

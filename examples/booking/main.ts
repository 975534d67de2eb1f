/**
 * Handles a few booking commands against Azure Table Storage and prints what happens: the events
 * each command records, the state they lead to, a concurrency conflict, and a domain error.
 *
 * With `AZURE_STORAGE_CONNECTION_STRING` set, it uses that storage account; without it, it
 * starts Azurite in process (in memory, on a free port) and stops it on exit.
 *
 *     npm run example:booking
 */
import { NodeRuntime } from "@effect/platform-node"
import { Clock, Config, Console, Effect, Layer, Option, Schedule } from "effect"
import * as Aggregate from "../../src/Aggregate.js"
import * as AzureTableEventStore from "../../src/AzureTableEventStore.js"
import { EventStore } from "../../src/EventStore.js"
import type { ConcurrencyConflict } from "../../src/EventStoreError.js"
import * as Azurite from "../../src/testing/Azurite.js"
import * as Booking from "./Booking.js"

const tableName = "bookings"

// The configured storage account, or Azurite for as long as the program runs.
const StoreLive = Layer.unwrapScoped(
  Effect.gen(function*() {
    const configured = yield* Config.option(Config.redacted("AZURE_STORAGE_CONNECTION_STRING"))
    if (Option.isSome(configured)) {
      yield* Console.log(`Event store: table "${tableName}" of the account in AZURE_STORAGE_CONNECTION_STRING`)
      return AzureTableEventStore.layer({ connectionString: configured.value, tableName })
    }
    const azurite = yield* Azurite.make()
    yield* Console.log(`Event store: table "${tableName}" on Azurite, started in process at ${azurite.tableEndpoint}`)
    return AzureTableEventStore.layer({ connectionString: azurite.connectionString, tableName })
  })
)

const show = (value: unknown): string => JSON.stringify(value)

const printResult = (title: string, result: Aggregate.HandleResult<Booking.Event, Booking.State>) =>
  Console.log(
    [
      ...(title === "" ? [] : [`\n${title}`]),
      ...(result.events.length === 0 ? ["  no events: nothing to change"] : []),
      ...result.recorded.map((event) => `  v${event.version} ${event.type} ${show(event.data)}`),
      `  state at v${result.version}: ${show(result.state)}`
    ].join("\n")
  )

const program = Effect.gen(function*() {
  const store = yield* EventStore
  // Decisions are pure: the time they need comes in with the command.
  const now = new Date(yield* Clock.currentTimeMillis)
  const inDays = (days: number) => new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + days))
  const bookingId = now.getTime().toString(36)
  const streamId = Booking.streamId(bookingId)
  yield* Console.log(`Stream ${streamId}`)

  const placed = yield* Aggregate.handle(
    Booking.aggregate,
    streamId,
    new Booking.PlaceBooking({
      roomId: "101",
      capacity: 4,
      checkIn: inDays(30),
      checkOut: inDays(33),
      guests: ["Ada Lovelace", "Charles Babbage"],
      placedAt: now
    }),
    // The command id makes event ids deterministic: `${commandId}:${index}`.
    { commandId: `place-${bookingId}`, correlationId: `web-${bookingId}` }
  )
  yield* printResult("PlaceBooking: one decision, three events, one atomic append", placed)

  yield* printResult(
    "ConfirmBooking",
    yield* Aggregate.handle(Booking.aggregate, streamId, new Booking.ConfirmBooking({ confirmedAt: now }))
  )
  yield* printResult(
    "ConfirmBooking again: already done, so nothing is written",
    yield* Aggregate.handle(Booking.aggregate, streamId, new Booking.ConfirmBooking({ confirmedAt: now }))
  )

  // A conflict: a writer that read version 4 appends after someone else wrote version 5.
  const stale = yield* Aggregate.load(Booking.aggregate, streamId)
  yield* Aggregate.handle(Booking.aggregate, streamId, new Booking.AddGuest({ name: "Mary Somerville" }))
  const conflict = yield* store.append(streamId, stale.version, [
    Booking.events.encode(new Booking.DatesChanged({ checkIn: inDays(31), checkOut: inDays(34) }), {
      eventId: `stale-${bookingId}`,
      metadata: { timestamp: now.toISOString() }
    })
  ]).pipe(Effect.flip)
  yield* Console.log(`\nAppend at a stale version fails with ${conflict._tag}:\n  ${conflict.message}`)

  // Aggregate.handle does that reload-and-decide-again itself: two desks changing the booking at
  // the same time both succeed, whichever loses the race retries on the new version. The retry
  // schedule is the default one, with a line printed at each conflict.
  const retry = Aggregate.defaultConflictRetry.pipe(
    Schedule.tapInput((conflict: ConcurrencyConflict) =>
      Console.log(`\n  (conflict at v${conflict.expectedVersion}: reloading and deciding again)`)
    )
  )
  const [moved, added] = yield* Effect.all([
    Aggregate.handle(
      Booking.aggregate,
      streamId,
      new Booking.ChangeDates({ checkIn: inDays(31), checkOut: inDays(34) }),
      { retry }
    ),
    Aggregate.handle(Booking.aggregate, streamId, new Booking.AddGuest({ name: "Grace Hopper" }), { retry })
  ], { concurrency: "unbounded" })
  yield* printResult("ChangeDates and AddGuest at the same time: both succeed", moved)
  yield* printResult("", added)

  // A domain error: typed in the error channel, and nothing is written.
  const refused = yield* Aggregate.handle(
    Booking.aggregate,
    streamId,
    new Booking.AddGuest({ name: "Alan Turing" })
  ).pipe(Effect.flip)
  yield* Console.log(`\nAddGuest of a fifth guest is refused with ${refused._tag}:\n  ${refused.message}`)

  const final = yield* Aggregate.load(Booking.aggregate, streamId)
  yield* Console.log(`\nFinal state at v${final.version}: ${show(final.state)}`)
  const history = yield* store.read(streamId)
  yield* Console.log(
    `\nThe stream as stored:\n${
      history.map((event) => `  v${event.version} ${event.type.padEnd(16)} ${event.eventId}`).join("\n")
    }`
  )
})

NodeRuntime.runMain(program.pipe(Effect.provide(StoreLive)))

import { assert, describe, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import * as EventCodec from "../src/EventCodec.js"
import type { EventData, RecordedEvent } from "../src/EventStore.js"

class Opened extends Schema.TaggedClass<Opened>()("Opened", {
  owner: Schema.NonEmptyString,
  at: Schema.Date
}) {}
class Deposited extends Schema.TaggedClass<Deposited>()("Deposited", {
  amount: Schema.Int,
  currency: Schema.Literal("EUR", "USD")
}) {}
const Closed = Schema.TaggedStruct("Closed", { reasons: Schema.Array(Schema.String) })

const Event = Schema.Union(Opened, Deposited, Closed)
type Event = typeof Event.Type

const metadata = { timestamp: "2030-01-01T00:00:00.000Z", correlationId: "corr-1" }

const record = (data: EventData, version = 1, streamId = "account-1"): RecordedEvent =>
  JSON.parse(JSON.stringify({ ...data, streamId, version }))

const stored = (fields: Partial<RecordedEvent>): RecordedEvent => ({
  eventId: "e",
  type: "Deposited",
  schemaVersion: 1,
  data: { amount: 1, currency: "EUR" },
  metadata,
  streamId: "account-7",
  version: 12,
  ...fields
})

describe("EventCodec", () => {
  const codec = EventCodec.make(Event)

  it("knows the types of the union", () => {
    assert.deepStrictEqual(codec.types, ["Opened", "Deposited", "Closed"])
  })

  it("encodes the tag as the type and the encoded fields as the data", () => {
    const data = codec.encode(new Opened({ owner: "ada", at: new Date("2030-01-01T10:00:00Z") }), {
      eventId: "cmd-1:0",
      metadata
    })
    assert.deepStrictEqual(data, {
      eventId: "cmd-1:0",
      type: "Opened",
      schemaVersion: 1,
      data: { owner: "ada", at: "2030-01-01T10:00:00.000Z" },
      metadata
    })
  })

  it.effect("decodes what it encoded, through JSON", () =>
    Effect.gen(function*() {
      const events: Array<Event> = [
        new Opened({ owner: "ada", at: new Date(0) }),
        new Deposited({ amount: 5, currency: "USD" }),
        Closed.make({ reasons: ["moved", "fees"] })
      ]
      for (const [index, event] of events.entries()) {
        const decoded = yield* codec.decode(record(codec.encode(event, { eventId: `e${index}`, metadata }), index + 1))
        assert.deepStrictEqual(decoded, event)
      }
    }))

  it.prop("every event round-trips through JSON", [Event], ([event]) => {
    const decoded = codec.decodeEither(record(codec.encode(event, { eventId: "e", metadata })))
    assert.deepStrictEqual(decoded._tag, "Right")
    if (decoded._tag === "Right") assert.deepStrictEqual(decoded.right, event)
  })

  it.effect("an unknown type is a DecodeError naming the stream, version and type", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(codec.decode(stored({ type: "Renamed" })))
      assert.strictEqual(error._tag, "DecodeError")
      assert.strictEqual(error.streamId, "account-7")
      assert.strictEqual(error.version, 12)
      assert.strictEqual(error.type, "Renamed")
      assert.include(error.reason, "unknown event type")
      assert.include(error.reason, "\"Opened\", \"Deposited\", \"Closed\"")
      assert.include(error.message, "account-7")
    }))

  it.effect("a payload that does not match the schema is a DecodeError saying where", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(codec.decode(stored({ data: { amount: "12", currency: "GBP" } })))
      assert.strictEqual(error._tag, "DecodeError")
      assert.strictEqual(error.type, "Deposited")
      assert.strictEqual(error.version, 12)
      // All problems are reported, not only the first.
      assert.include(error.reason, "[\"amount\"]")
      assert.include(error.reason, "[\"currency\"]")
    }))

  it.effect("a payload that is not an object is a DecodeError", () =>
    Effect.gen(function*() {
      for (const data of [null, 42, "text", [1, 2]]) {
        const error = yield* Effect.flip(codec.decode(stored({ data })))
        assert.include(error.reason, "not an object")
      }
    }))

  it("ignores extra fields, and takes the type from the record, not the payload", () => {
    const decoded = codec.decodeEither(stored({ data: { amount: 3, currency: "EUR", _tag: "Opened", extra: true } }))
    assert.deepStrictEqual(decoded._tag, "Right")
    if (decoded._tag === "Right") assert.deepStrictEqual(decoded.right, new Deposited({ amount: 3, currency: "EUR" }))
  })

  describe("schema versions", () => {
    const versioned = EventCodec.make(Event, {
      schemaVersions: { Deposited: 3 },
      upcasters: {
        Deposited: {
          // Version 1 stored cents as a string; version 2 had no currency.
          1: (data) => ({ ...data, amount: Number(data.cents) / 100 }),
          2: (data) => ({ currency: "EUR", ...data })
        }
      }
    })

    it("writes each type with its current schema version", () => {
      assert.strictEqual(versioned.schemaVersionOf("Deposited"), 3)
      assert.strictEqual(versioned.schemaVersionOf("Opened"), 1)
      const data = versioned.encode(new Deposited({ amount: 2, currency: "USD" }), { eventId: "e", metadata })
      assert.strictEqual(data.schemaVersion, 3)
    })

    it.effect("upcasts older payloads step by step", () =>
      Effect.gen(function*() {
        const fromV1 = yield* versioned.decode(stored({ schemaVersion: 1, data: { cents: "700" } }))
        assert.deepStrictEqual(fromV1, new Deposited({ amount: 7, currency: "EUR" }))
        const fromV2 = yield* versioned.decode(stored({ schemaVersion: 2, data: { amount: 9 } }))
        assert.deepStrictEqual(fromV2, new Deposited({ amount: 9, currency: "EUR" }))
        const current = yield* versioned.decode(stored({ schemaVersion: 3, data: { amount: 9, currency: "USD" } }))
        assert.deepStrictEqual(current, new Deposited({ amount: 9, currency: "USD" }))
      }))

    it.effect("a newer schema version, or a missing upcaster, is a DecodeError", () =>
      Effect.gen(function*() {
        const newer = yield* Effect.flip(versioned.decode(stored({ schemaVersion: 4 })))
        assert.include(newer.reason, "schema version 4 is newer")
        const noUpcaster = yield* Effect.flip(codec.decode(stored({ type: "Opened", schemaVersion: 0 })))
        assert.strictEqual(noUpcaster._tag, "DecodeError")
        const unversioned = EventCodec.make(Event, { schemaVersions: { Opened: 2 } })
        const missing = yield* Effect.flip(unversioned.decode(stored({ type: "Opened", data: {} })))
        assert.include(missing.reason, "no upcaster from schema version 1 to 2")
      }))

    it.effect("an upcaster that throws, or returns no object, is a DecodeError", () =>
      Effect.gen(function*() {
        const broken = EventCodec.make(Event, {
          schemaVersions: { Opened: 2, Deposited: 2 },
          upcasters: {
            Opened: {
              1: () => {
                throw new Error("boom")
              }
            },
            Deposited: { 1: () => null as unknown as Record<string, unknown> }
          }
        })
        const threw = yield* Effect.flip(broken.decode(stored({ type: "Opened", data: {} })))
        assert.include(threw.reason, "boom")
        const nothing = yield* Effect.flip(broken.decode(stored({})))
        assert.include(nothing.reason, "did not return an object")
      }))
  })

  it("refuses schemas it cannot key by tag, and options that name no event type", () => {
    // The types refuse an untagged member too; this checks the guard for untyped callers.
    const untagged = Schema.Union(Opened, Schema.Struct({ a: Schema.String }))
    // @ts-expect-error the member has no _tag
    assert.throws(() => EventCodec.make(untagged), /literal string _tag/)
    assert.throws(() => EventCodec.make(Schema.Union(Opened, Schema.TaggedStruct("Opened", {}))), /two event schemas/)
    assert.throws(
      () => EventCodec.make(Event, { schemaVersions: { Nope: 2 } as { readonly Opened?: number } }),
      /"Nope", which is not an event type/
    )
    assert.throws(() => EventCodec.make(Event, { schemaVersions: { Opened: 0 } }), /positive integer/)
  })

  it("encoding an event that breaks its own schema throws: the decider has a bug", () => {
    const invalid = new Deposited({ amount: 1.5, currency: "EUR" }, { disableValidation: true })
    assert.throws(() => codec.encode(invalid, { eventId: "e", metadata }), /does not match its schema/)
  })

  describe("snapshots", () => {
    const State = Schema.Struct({ balance: Schema.Int, since: Schema.Date })
    const snapshots = EventCodec.makeSnapshot(State, { schemaVersion: 2 })

    it.effect("round-trips the state with its version and schema version", () =>
      Effect.gen(function*() {
        const state = { balance: 10, since: new Date(0) }
        const snapshot = snapshots.encode(state, 42)
        assert.deepStrictEqual(snapshot, {
          version: 42,
          schemaVersion: 2,
          state: { balance: 10, since: "1970-01-01T00:00:00.000Z" }
        })
        assert.deepStrictEqual(yield* snapshots.decode(JSON.parse(JSON.stringify(snapshot)), "account-1"), state)
      }))

    it.effect("another schema version or a bad state is a DecodeError of type $snapshot", () =>
      Effect.gen(function*() {
        const other = yield* Effect.flip(
          snapshots.decode({ version: 5, schemaVersion: 1, state: { balance: 1, since: "1970-01-01" } }, "account-1")
        )
        assert.strictEqual(other.type, "$snapshot")
        assert.strictEqual(other.version, 5)
        assert.strictEqual(other.streamId, "account-1")
        assert.include(other.reason, "schema version 1")
        const bad = yield* Effect.flip(snapshots.decode({ version: 5, schemaVersion: 2, state: { balance: "x" } }, "a"))
        assert.include(bad.reason, "[\"balance\"]")
      }))

    it("refuses a schema version that is not a positive integer", () => {
      assert.throws(() => EventCodec.makeSnapshot(State, { schemaVersion: 1.5 }), /positive integer/)
    })
  })
})

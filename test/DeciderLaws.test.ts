import { assert, describe, it } from "@effect/vitest"
import { Either, FastCheck, Schema } from "effect"
import * as Decider from "../src/Decider.js"
import * as EventCodec from "../src/EventCodec.js"
import * as DeciderLaws from "../src/testing/DeciderLaws.js"

class Add extends Schema.TaggedClass<Add>()("Add", { n: Schema.Int.pipe(Schema.between(-5, 20)) }) {}
class Reset extends Schema.TaggedClass<Reset>()("Reset", {}) {}
const Command = Schema.Union(Add, Reset)
type Command = typeof Command.Type

class Added extends Schema.TaggedClass<Added>()("Added", { n: Schema.Int }) {}
class Cleared extends Schema.TaggedClass<Cleared>()("Cleared", {}) {}
const Event = Schema.Union(Added, Cleared)
type Event = typeof Event.Type

// A total capped at 50, never negative.
const capped = Decider.make<Command, Event, number, string>({
  initialState: 0,
  evolve: (total, event) => event._tag === "Added" ? total + event.n : 0,
  decide: (command, total) => {
    if (command._tag === "Reset") return total === 0 ? Decider.accept() : Decider.accept<Event>(new Cleared())
    if (command.n <= 0) return Decider.reject("not positive")
    return total + command.n > 50 ? Decider.reject("over 50") : Decider.accept<Event>(new Added({ n: command.n }))
  }
})

const invariant = (total: number) => total >= 0 && total <= 50
const parameters = { seed: 20300501, numRuns: 200 }
const good = {
  decider: capped,
  commands: Command,
  events: Event,
  invariant,
  codec: EventCodec.make(Event),
  parameters
}

const violation = <CommandEncoded, EventEncoded>(
  options: DeciderLaws.Options<Command, Event, number, string, CommandEncoded, EventEncoded>
): string => {
  try {
    DeciderLaws.check(options)
  } catch (error) {
    return String(error)
  }
  return assert.fail("a law should have been broken")
}

describe("DeciderLaws", () => {
  it("a sound decider passes every law", () => {
    DeciderLaws.check(good)
  })

  it("lists the laws that apply to the options given", () => {
    assert.deepStrictEqual(DeciderLaws.laws(good).map((law) => law.name), [
      "decide never throws, is deterministic, and its events fold",
      "evolve and decide never throw, on any history",
      "the invariant holds after every accepted command",
      "events round-trip through the codec"
    ])
    assert.deepStrictEqual(
      DeciderLaws.laws({ decider: capped, commands: Command }).map((law) => law.name),
      ["decide never throws, is deterministic, and its events fold"]
    )
    assert.throws(() => DeciderLaws.laws({ decider: capped, commands: Command, codec: good.codec }), /needs `events`/)
  })

  it("register hands each law to the runner's test function", () => {
    const registered: Array<string> = []
    DeciderLaws.register((name, body) => {
      registered.push(name)
      body()
    }, good)
    assert.strictEqual(registered.length, 4)
  })

  describe("registered with @effect/vitest", () => {
    DeciderLaws.register(it, good)
  })

  it("accepts arbitraries as well as schemas", () => {
    DeciderLaws.check({
      decider: capped,
      commands: FastCheck.integer({ min: 1, max: 10 }).map((n) => new Add({ n })),
      invariant,
      parameters
    })
  })

  it("catches a decide that throws", () => {
    const message = violation({
      ...good,
      decider: {
        ...capped,
        decide: (command, total) => {
          if (command._tag === "Reset" && total > 10) throw new Error("cannot reset")
          return capped.decide(command, total)
        }
      }
    })
    assert.include(message, "decide threw Error: cannot reset")
    assert.include(message, "Counterexample")
  })

  it("catches a decide that reads something besides its inputs", () => {
    let calls = 0
    const message = violation({
      ...good,
      decider: {
        ...capped,
        decide: (command, total) => (++calls % 2 === 0 ? capped.decide(command, total) : Either.right([]))
      }
    })
    assert.include(message, "decide is not deterministic")
  })

  it("catches an evolve that throws on a history the rules would not produce", () => {
    const message = violation({
      ...good,
      decider: {
        ...capped,
        evolve: (total, event) => {
          if (event._tag === "Added" && event.n < 0) throw new RangeError("negative amount")
          return capped.evolve(total, event)
        }
      }
    })
    assert.include(message, "evolve and decide never throw, on any history")
    assert.include(message, "evolve threw RangeError: negative amount")
  })

  it("catches a broken invariant, with the commands that led to it", () => {
    const message = violation({
      ...good,
      decider: {
        ...capped,
        decide: (command, total) => command._tag === "Add" ? capped.decide(command, 0) : capped.decide(command, total)
      }
    })
    assert.include(message, "the invariant does not hold")
    assert.include(message, "commands:")
  })

  it("catches events that do not survive the codec", () => {
    class Noted extends Schema.TaggedClass<Noted>()("Noted", { value: Schema.Number }) {}
    const message = violation({
      decider: {
        initialState: 0,
        evolve: (state) => state,
        decide: () => Either.right([])
      },
      commands: Command,
      events: Noted as unknown as typeof Event,
      codec: EventCodec.make(Noted) as unknown as DeciderLaws.RoundTripCodec<Event>,
      parameters: { ...parameters, numRuns: 1000 }
    })
    // NaN and the infinities become null in JSON.
    assert.include(message, "events round-trip through the codec")
  })
})

import { assert, describe, it } from "@effect/vitest"
import { Either, Schema } from "effect"
import * as Decider from "../src/Decider.js"

class Deposit extends Schema.TaggedClass<Deposit>()("Deposit", { amount: Schema.Int }) {}
class Withdraw extends Schema.TaggedClass<Withdraw>()("Withdraw", { amount: Schema.Int }) {}
class Deposited extends Schema.TaggedClass<Deposited>()("Deposited", { amount: Schema.Int }) {}
class Withdrawn extends Schema.TaggedClass<Withdrawn>()("Withdrawn", { amount: Schema.Int }) {}
class InsufficientFunds extends Schema.TaggedError<InsufficientFunds>()("InsufficientFunds", {
  balance: Schema.Int,
  amount: Schema.Int
}) {}

const Event = Schema.Union(Deposited, Withdrawn)
type Event = typeof Event.Type

const account = Decider.make({
  initialState: 0,
  evolve: (balance: number, event: Event) =>
    event._tag === "Deposited" ? balance + event.amount : balance - event.amount,
  decide: (command: Deposit | Withdraw, balance: number) => {
    if (command.amount <= 0) return Decider.accept()
    if (command._tag === "Deposit") return Decider.accept<Event>(new Deposited({ amount: command.amount }))
    return command.amount > balance
      ? Decider.reject(new InsufficientFunds({ balance, amount: command.amount }))
      : Decider.accept<Event>(new Withdrawn({ amount: command.amount }))
  }
})

describe("Decider", () => {
  it("make returns the decider it is given", () => {
    const decider: Decider.Decider<Deposit, Deposited, number> = {
      initialState: 0,
      evolve: (balance, event) => balance + event.amount,
      decide: (command) => Either.right([new Deposited({ amount: command.amount })])
    }
    assert.strictEqual(Decider.make(decider), decider)
  })

  it("fold starts from the initial state, or from the state given", () => {
    const events = [new Deposited({ amount: 10 }), new Withdrawn({ amount: 3 })]
    assert.strictEqual(Decider.fold(account, []), 0)
    assert.strictEqual(Decider.fold(account, events), 7)
    assert.strictEqual(Decider.fold(account, events, 100), 107)
  })

  it("fold accepts any iterable", () => {
    function* history() {
      yield new Deposited({ amount: 5 })
      yield new Deposited({ amount: 6 })
    }
    assert.strictEqual(Decider.fold(account, history()), 11)
    assert.strictEqual(Decider.fold(account, new Set([new Withdrawn({ amount: 1 })]), 1), 0)
  })

  it.prop(
    "folding a concatenation is folding one part after the other",
    [Schema.Array(Event), Schema.Array(Event)],
    ([first, second]) => {
      assert.strictEqual(
        Decider.fold(account, [...first, ...second]),
        Decider.fold(account, second, Decider.fold(account, first))
      )
    }
  )

  it("decideFrom folds the history, then decides", () => {
    const history = [new Deposited({ amount: 10 })]
    assert.deepStrictEqual(
      Decider.decideFrom(account, history, new Withdraw({ amount: 4 })),
      Either.right([new Withdrawn({ amount: 4 })])
    )
    assert.deepStrictEqual(
      Decider.decideFrom(account, history, new Withdraw({ amount: 11 })),
      Either.left(new InsufficientFunds({ balance: 10, amount: 11 }))
    )
  })

  it("run returns the events and the state after them", () => {
    const result = Decider.run(account, [new Deposited({ amount: 10 })], new Withdraw({ amount: 4 }))
    assert.deepStrictEqual(result, Either.right({ events: [new Withdrawn({ amount: 4 })], state: 6 }))
  })

  it("run returns the domain error of a refused command", () => {
    const result = Decider.run(account, [], new Withdraw({ amount: 1 }))
    assert.isTrue(Either.isLeft(result))
    if (Either.isLeft(result)) {
      assert.strictEqual(result.left._tag, "InsufficientFunds")
      assert.strictEqual(result.left.amount, 1)
    }
  })

  it("runFrom starts from a folded state; a command with no events keeps it", () => {
    assert.deepStrictEqual(
      Decider.runFrom(account, 42, new Deposit({ amount: 0 })),
      Either.right({ events: [], state: 42 })
    )
    assert.deepStrictEqual(
      Decider.runFrom(account, 42, new Deposit({ amount: 8 })),
      Either.right({ events: [new Deposited({ amount: 8 })], state: 50 })
    )
  })

  it("accept and reject build decisions", () => {
    assert.deepStrictEqual(Decider.accept(), Either.right([]))
    assert.deepStrictEqual(Decider.accept(1, 2), Either.right([1, 2]))
    assert.deepStrictEqual(Decider.reject("no"), Either.left("no"))
  })
})

// Folding a long history: `Decider.fold` against a hand-written loop calling the same `evolve`.
// The ratio is the cost of going through the decider; 1.0 is no overhead.
import { Schema } from "effect"
import * as Decider from "../src/Decider.js"
import { compare, median, report } from "./util.js"

class Deposited extends Schema.TaggedClass<Deposited>()("Deposited", { amount: Schema.Int }) {}
class Withdrawn extends Schema.TaggedClass<Withdrawn>()("Withdrawn", { amount: Schema.Int }) {}
type Event = Deposited | Withdrawn

interface Account {
  readonly balance: number
  readonly transactions: number
}

const evolve = (state: Account, event: Event): Account => ({
  balance: event._tag === "Deposited" ? state.balance + event.amount : state.balance - event.amount,
  transactions: state.transactions + 1
})

const account = Decider.make<never, Event, Account, never>({
  initialState: { balance: 0, transactions: 0 },
  evolve,
  decide: () => Decider.accept()
})

const count = 1_000_000
const events: Array<Event> = Array.from(
  { length: count },
  (_, i) => i % 3 === 2 ? new Withdrawn({ amount: i % 7 }) : new Deposited({ amount: i % 11 })
)

const byHand = (): Account => {
  let state: Account = { balance: 0, transactions: 0 }
  for (let i = 0; i < events.length; i++) state = evolve(state, events[i])
  return state
}

const expected = byHand()
const check = (state: Account) => {
  if (state.balance !== expected.balance || state.transactions !== count) throw new Error("the folds disagree")
}

const times = await compare(
  async () => check(Decider.fold(account, events)),
  async () => check(byHand()),
  { iterations: 30, rounds: 5, warmup: 5 }
)
const ours = median(times.ours)
const theirs = median(times.theirs)
report(
  "fold",
  ours / theirs,
  "<=",
  1.5,
  `${count} events: Decider.fold ${ours.toFixed(2)} ms, hand-written loop ${
    theirs.toFixed(2)
  } ms (medians of ${times.ours.length})`
)

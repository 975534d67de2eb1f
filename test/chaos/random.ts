// A small seeded pseudo-random generator (mulberry32), so that a chaos run's every random
// decision follows from its seed. Independent decisions use independent streams (`fork`), so
// that the fault schedule does not shift when, say, the load makes a different number of draws.

export interface Random {
  /** A float in [0, 1). */
  readonly next: () => number
  /** An integer in [min, max], both included. */
  readonly int: (min: number, max: number) => number
  readonly bool: (probability?: number) => boolean
  readonly pick: <A>(values: ReadonlyArray<A>) => A
  /** A value by weight. */
  readonly weighted: <A>(choices: ReadonlyArray<readonly [A, number]>) => A
  /** An independent stream, named so that its draws do not depend on this one's. */
  readonly fork: (name: string) => Random
}

// FNV-1a, 32 bits: turns a seed and a stream name into a generator state.
const hash = (text: string): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

export const make = (seed: string | number): Random => {
  let state = hash(String(seed))
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const int = (min: number, max: number) => min + Math.floor(next() * (max - min + 1))
  return {
    next,
    int,
    bool: (probability = 0.5) => next() < probability,
    pick: (values) => values[int(0, values.length - 1)]!,
    weighted: (choices) => {
      const total = choices.reduce((sum, [, weight]) => sum + weight, 0)
      let point = next() * total
      for (const [value, weight] of choices) {
        point -= weight
        if (point < 0) return value
      }
      return choices[choices.length - 1]![0]
    },
    fork: (name) => make(`${seed}/${name}`)
  }
}

// Shared helpers for the benchmarks: timing, statistics and the one-line report format.
import { performance } from "node:perf_hooks"

/** Runs `fn` `iterations` times after `warmup` runs and returns each run's duration in ms. */
export const sample = async (
  fn: () => Promise<unknown>,
  options: { readonly iterations: number; readonly warmup?: number | undefined }
): Promise<Array<number>> => {
  for (let i = 0; i < (options.warmup ?? Math.ceil(options.iterations / 10)); i++) await fn()
  const times: Array<number> = []
  for (let i = 0; i < options.iterations; i++) {
    const start = performance.now()
    await fn()
    times.push(performance.now() - start)
  }
  return times
}

/** Alternates the two candidates in rounds so drift in machine load affects both alike. */
export const compare = async (
  ours: () => Promise<unknown>,
  theirs: () => Promise<unknown>,
  options: { readonly iterations: number; readonly rounds?: number; readonly warmup?: number }
): Promise<{ readonly ours: Array<number>; readonly theirs: Array<number> }> => {
  const rounds = options.rounds ?? 5
  const per = Math.max(1, Math.ceil(options.iterations / rounds))
  const all = { ours: [] as Array<number>, theirs: [] as Array<number> }
  for (let round = 0; round < rounds; round++) {
    all.theirs.push(...(await sample(theirs, { iterations: per, warmup: round === 0 ? options.warmup : 0 })))
    all.ours.push(...(await sample(ours, { iterations: per, warmup: round === 0 ? options.warmup : 0 })))
  }
  return all
}

export const quantile = (values: ReadonlyArray<number>, q: number): number => {
  const sorted = [...values].sort((a, b) => a - b)
  if (sorted.length === 0) return Number.NaN
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[index]
}

export const median = (values: ReadonlyArray<number>): number => quantile(values, 0.5)

/** Prints the one line every benchmark reports: `bench <name>: ratio <r> (target <op> <t>)`. */
export const report = (name: string, ratio: number, op: "<=" | ">=", target: number, details?: string): void => {
  console.log(`bench ${name}: ratio ${ratio.toFixed(3)} (target ${op} ${target})`)
  if (details !== undefined) console.log(`  ${details}`)
}

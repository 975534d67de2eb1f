/**
 * A terminal progress bar for `Projector.rebuild`: pass {@link reporter} as its `onProgress`.
 * On a terminal the bar is redrawn in place; elsewhere (a log file, CI) a line is printed at
 * every tenth of the work, so logs stay short.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import type { EventCodec, Projection, ProjectionStore } from "effect-eventually"
 * import { Projector } from "effect-eventually"
 * import { Progress } from "effect-eventually/cli"
 *
 * declare const projection: Projection.Projection<{ readonly _tag: "Placed" }, number>
 * declare const codec: EventCodec.EventCodec<{ readonly _tag: "Placed" }>
 * declare const target: ProjectionStore.ProjectionStoreService
 *
 * export const rebuild = Projector.rebuild(projection, codec, {
 *   streams: ["booking-1", "booking-2"],
 *   target,
 *   onProgress: Progress.reporter(process.stdout)
 * })
 * ```
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import type { RebuildProgress } from "../Projector.js"
import type { Output } from "./Cli.js"

/**
 * Options of {@link render}.
 *
 * @since 0.1.0
 * @category models
 */
export interface BarOptions {
  /** Characters of the bar itself; 30 by default. */
  readonly width?: number
}

/**
 * Options of {@link reporter}.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReporterOptions extends BarOptions {
  /** Redraw in place; `output.isTTY` by default. */
  readonly interactive?: boolean
}

const count = (n: number): string => Math.round(n).toLocaleString("en-US")

/**
 * One line describing a rebuild's progress:
 * `room-occupancy [#########.....................]  30% 300/1,000 streams, 4,210 events, 850 events/s`.
 * Without a known total, the bar is left out.
 *
 * @since 0.1.0
 * @category constructors
 */
export const render = (progress: RebuildProgress, options: BarOptions = {}): string => {
  const width = Math.max(1, options.width ?? 30)
  const stats = `${count(progress.eventsRead)} events, ${count(progress.eventsPerSecond)} events/s` +
    (progress.resumedFrom > 0 ? `, resumed after ${count(progress.resumedFrom)}` : "") +
    (progress.done ? ", done" : "")
  if (progress.percentage === undefined || progress.streamsTotal === undefined) {
    return `${progress.projection} ${count(progress.streamsCompleted)} streams, ${stats}`
  }
  const filled = Math.min(width, Math.floor((progress.percentage / 100) * width))
  const bar = "#".repeat(filled) + ".".repeat(width - filled)
  const percent = `${Math.floor(progress.percentage)}%`.padStart(4)
  return `${progress.projection} [${bar}] ${percent} ${count(progress.streamsCompleted)}/${
    count(progress.streamsTotal)
  } streams, ${stats}`
}

/**
 * A progress callback for `Projector.rebuild` that draws {@link render}'s line on `output`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const reporter = (
  output: Output,
  options: ReporterOptions = {}
): (progress: RebuildProgress) => Effect.Effect<void> => {
  const interactive = options.interactive ?? output.isTTY === true
  // The last tenth printed, so that a non-interactive output gets about ten lines in all.
  let printed = -1
  return (progress) =>
    Effect.sync(() => {
      const line = render(progress, options)
      if (interactive) {
        // Return to the start of the line and clear it, then redraw; a newline once done.
        output.write(`\r\x1b[2K${line}${progress.done ? "\n" : ""}`)
        return
      }
      const step = progress.percentage === undefined
        ? Math.floor(progress.streamsCompleted / 100)
        : Math.floor(progress.percentage / 10)
      if (progress.done || step > printed) {
        printed = step
        output.write(`${line}\n`)
      }
    })
}

/**
 * The operations command line and its helpers.
 *
 * @since 0.1.0
 */

/**
 * The `effect-eventually` command line: streams, outbox lag, dead-letter queues, rebuilds.
 *
 * @since 0.1.0
 */
export * as Cli from "./Cli.js"

/**
 * A terminal progress bar for `Projector.rebuild`.
 *
 * @since 0.1.0
 */
export * as Progress from "./Progress.js"

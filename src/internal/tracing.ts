import type { Fiber } from "effect"
import { Context, Effect, FiberRef, Option, Tracer } from "effect"

// The tracer a runtime has when the application installs none: its spans go nowhere.
let nativeTracer: Tracer.Tracer | undefined

/**
 * Whether the fiber's spans can be seen: a tracer other than the native one (an exporter), with
 * tracing enabled. Spans on per-event and per-message paths are built only then: a span no one
 * can see costs more than the operation it would describe.
 */
export const isTracing = (fiber: Fiber.RuntimeFiber<unknown, unknown>): boolean => {
  nativeTracer ??= Effect.runSync(Effect.tracer)
  return fiber.currentTracer !== nativeTracer && fiber.getFiberRef(FiberRef.currentTracerEnabled)
}

/** `Effect.withSpan` when a tracer can see the span; the effect alone otherwise. */
export const withSpanIfTracing = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  name: string,
  options: () => Tracer.SpanOptions
): Effect.Effect<A, E, R> =>
  Effect.withFiberRuntime((fiber) => isTracing(fiber) ? Effect.withSpan(effect, name, options()) : effect)

/**
 * The fiber's current span, if any, read from its context: `Effect.currentSpan` fails inside with
 * an exception (a stack trace captured) when there is none, which on a per-message path costs
 * more than what the span is wanted for.
 */
export const currentSpanOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>): Tracer.Span | undefined => {
  const span = Context.getOption(fiber.getFiberRef(FiberRef.currentContext), Tracer.ParentSpan)
  return Option.isSome(span) && span.value._tag === "Span" ? span.value : undefined
}

/** `Effect.annotateCurrentSpan` without its cost when there is no span (see `currentSpanOf`). */
export const annotateSpan = (key: string, value: unknown): Effect.Effect<void> =>
  Effect.withFiberRuntime((fiber) => {
    currentSpanOf(fiber)?.attribute(key, value)
    return Effect.void
  })

import type { Fiber } from "effect"
import { Effect, FiberRef, type Tracer } from "effect"

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

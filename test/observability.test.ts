// The library's spans and metrics reach OpenTelemetry through @effect/opentelemetry, as
// docs/observability.md shows: exported here to in-memory exporters instead of OTLP.
import { NodeSdk } from "@effect/opentelemetry"
import { assert, describe, it } from "@effect/vitest"
import {
  AggregationTemporality,
  InMemoryMetricExporter,
  PeriodicExportingMetricReader
} from "@opentelemetry/sdk-metrics"
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Effect, Layer } from "effect"
import * as Booking from "../examples/booking/Booking.js"
import * as Aggregate from "../src/Aggregate.js"
import { layerMemory } from "../src/EventStore.js"

const bookings = Aggregate.make({ decider: Booking.decider, events: Booking.events })
const day = (n: number) => new Date(Date.UTC(2025, 0, n))

describe("OpenTelemetry export", () => {
  it.live("command handling exports its spans and the event store's counters", () => {
    const spans = new InMemorySpanExporter()
    const metrics = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
    const reader = new PeriodicExportingMetricReader({ exporter: metrics, exportIntervalMillis: 3_600_000 })
    const telemetry = NodeSdk.layer(() => ({
      resource: { serviceName: "observability-test" },
      spanProcessor: new SimpleSpanProcessor(spans),
      metricReader: reader
    }))
    const streamId = Booking.streamId(`otel-${Date.now()}`)
    return Effect.gen(function*() {
      yield* Aggregate.handle(
        bookings,
        streamId,
        new Booking.PlaceBooking({
          roomId: "101",
          capacity: 2,
          checkIn: day(10),
          checkOut: day(12),
          guests: ["Ada"],
          placedAt: day(1)
        })
      )
      yield* Effect.promise(() => reader.forceFlush())

      const finished = spans.getFinishedSpans()
      const handle = finished.find((span) => span.name === "Aggregate.handle")
      const append = finished.find((span) => span.name === "EventStore.append")
      assert.isDefined(handle)
      assert.isDefined(append)
      // The append runs inside the command's span, in the same trace.
      assert.strictEqual(append!.spanContext().traceId, handle!.spanContext().traceId)

      const exported = metrics.getMetrics().flatMap((resource) =>
        resource.scopeMetrics.flatMap((scope) => scope.metrics)
      )
      const appends = exported.find((metric) => metric.descriptor.name === "effect_eventually_event_store_appends")
      assert.isDefined(appends)
      const memoryPoint = appends!.dataPoints.find((point) => point.attributes.store === "memory")
      assert.isDefined(memoryPoint)
      assert.isAtLeast(Number(memoryPoint!.value), 1)
    }).pipe(Effect.provide(Layer.merge(layerMemory, telemetry)))
  })
})

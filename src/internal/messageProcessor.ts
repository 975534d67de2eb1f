// The processor's engine, shared by every transport: a receive loop that keeps at most
// `concurrency` messages in flight (it receives as many as there are free slots), one fiber per
// message that decodes, dispatches, retries transient failures, and commits or settles, and a
// shutdown that stops the loop, waits for the fibers, and abandons what is left.
import type { Scope } from "effect"
import {
  Cause,
  Clock,
  Context,
  Deferred,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  FiberId,
  FiberRef,
  FiberSet,
  HashMap,
  Metric,
  MetricBoundaries,
  Option,
  ParseResult,
  PubSub,
  Schedule,
  Schema,
  Stream,
  Tracer
} from "effect"
import * as Aggregate from "../Aggregate.js"
import type { EventCodec } from "../EventCodec.js"
import type { RecordedEvent } from "../EventStore.js"
import { EventStore } from "../EventStore.js"
import { isTransient as isEventStoreTransient } from "../EventStoreError.js"
import type { OutgoingMessage } from "../Message.js"
import { decodeBody, idFromMessage, traceparentOf } from "../Message.js"
import type * as Api from "../MessageProcessor.js"
import { CurrentMessage, HandlerDefect, NotAnEventMessage, UnknownMessageType } from "../MessageProcessor.js"
import type { Settlement } from "../MessageReceiver.js"
import { entityPath } from "../MessageReceiver.js"
import { propertyNames as outboxProperties } from "../Outbox.js"
import type { Projection } from "../Projection.js"
import { isTransient as isProjectionTransient } from "../ProjectionError.js"
import type { ProjectionStore } from "../ProjectionStore.js"
import * as Projector from "../Projector.js"
import type { ReceiveError } from "../ServiceBusError.js"
import { MessageEncodeError } from "../ServiceBusError.js"
import { isTransient as isTransactionTransient } from "../ServiceBusTransaction.js"
import type { Dispatch, Inbound } from "./messageProcessorTransport.js"
import { implOf } from "./messageProcessorTransport.js"
import { annotateSpan, currentSpanOf, isTracing } from "./tracing.js"

export const propertyNames = {
  retryCount: "retryCount",
  originalMessageId: "originalMessageId"
} as const

export const defaultRetry: Schedule.Schedule<unknown, unknown> = Schedule.exponential("100 millis").pipe(
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(3)),
  Schedule.asVoid
)

const defaultConcurrency = 8
const defaultReceiveWait = Duration.seconds(10)
const defaultMaxAttempts = 10
const defaultShutdownTimeout = Duration.seconds(30)
// Dead-letter descriptions are application properties (32 KB each at most on Service Bus).
const maxDescriptionLength = 4096
// Pause between failed receives (connection lost, entity busy): the loop never gives up.
const receiveBackoff = Schedule.exponential("100 millis").pipe(Schedule.union(Schedule.spaced("5 seconds")))

export const metrics = {
  processed: Metric.counter("message_processor_messages_processed", {
    description: "Messages handled and committed",
    incremental: true
  }),
  retries: Metric.counter("message_processor_retries", {
    description: "In-process retries of transient failures, and redeliveries asked for after a failed attempt",
    incremental: true
  }),
  deadLetters: Metric.counter("message_processor_dead_letters", {
    description: "Messages moved to the dead-letter queue by the processor",
    incremental: true
  }),
  commitFailures: Metric.counter("message_processor_commit_failures", {
    description: "Commits (completion with outgoing messages) that failed",
    incremental: true
  }),
  duration: Metric.histogram(
    "message_processor_handle_ms",
    MetricBoundaries.exponential({ start: 1, factor: 2, count: 16 }),
    "Milliseconds from a message's receipt to its settlement"
  )
}

const zero: Api.Stats = {
  received: 0,
  completed: 0,
  abandoned: 0,
  rescheduled: 0,
  deadLettered: 0,
  retries: 0,
  commitFailures: 0,
  inFlight: 0
}

export const handler = <A, I, E, R>(
  schema: Schema.Schema<A, I>,
  handle: (body: A, context: Api.MessageContext) => Effect.Effect<unknown, E, R>
): Api.Handler<E, R> => {
  const decode = decodeBody(schema)
  const decodeSync = Schema.decodeUnknownEither(schema)
  return {
    // Synchronously when the schema allows (no Effect of parsing per message); through
    // `decodeBody` for bytes, failures (for its error) and schemas that need effects.
    decode: (message) => {
      if (message.body instanceof Uint8Array) return decode(message)
      const decoded = decodeSync(message.body)
      return Either.isRight(decoded) ? Effect.succeed(decoded.right) : decode(message)
    },
    handle: (body, context) => handle(body as A, context)
  }
}

const defaultIsTransient = (error: unknown): boolean =>
  isTransactionTransient(error) || isEventStoreTransient(error) || isProjectionTransient(error)

const tagOf = (error: unknown): string => {
  if (typeof error === "object" && error !== null) {
    if ("_tag" in error && typeof error._tag === "string") return error._tag
    if (error instanceof Error) return error.name
  }
  return "HandlerFailed"
}

const describe = (error: unknown): string => {
  let text: string
  if (error instanceof Error || (typeof error === "object" && error !== null && "message" in error)) {
    text = String((error as { readonly message: unknown }).message)
  } else if (typeof error === "string") {
    text = error
  } else {
    try {
      text = JSON.stringify(error) ?? String(error)
    } catch {
      text = String(error)
    }
  }
  return text.length > maxDescriptionLength ? `${text.slice(0, maxDescriptionLength - 1)}…` : text
}

const traceparentPattern = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/

const parentSpanOf = (traceparent: string | undefined): Tracer.ExternalSpan | undefined => {
  const match = traceparent === undefined ? null : traceparentPattern.exec(traceparent)
  if (match === null) return undefined
  return Tracer.externalSpan({
    traceId: match[1],
    spanId: match[2],
    sampled: (Number.parseInt(match[3], 16) & 1) === 1
  })
}

// The fiber's current span's, if any.
const traceparentIn = (fiber: Fiber.RuntimeFiber<unknown, unknown>): string | undefined => {
  const span = currentSpanOf(fiber)
  return span === undefined ? undefined : traceparentOf(span)
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] }

/**
 * Retries `effect` under the schedule after it failed with `first`: the schedule sees that
 * failure first, as with `Effect.retry` around the first attempt too, but its driver is made
 * only now (the first attempt almost always succeeds).
 */
const retryAfter = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  first: E,
  options: { readonly schedule: Schedule.Schedule<unknown, E>; readonly while?: (error: E) => boolean }
): Effect.Effect<A, E, R> => {
  let pending = true
  const again = Effect.suspend(() => {
    if (!pending) return effect
    pending = false
    return Effect.fail(first)
  })
  return Effect.retry(again, options)
}

const countCompleted = (stats: Mutable<Api.Stats>): void => {
  stats.completed++
}

export const run = <H extends Api.Handlers, R>(
  options: Api.Options<H, R>
): Effect.Effect<Api.Processor, Api.StartError, R | Api.HandlerContext<H[keyof H]> | Scope.Scope> =>
  Effect.gen(function*() {
    const transport = implOf(options.transport)
    const source = options.source
    const entity = entityPath(source)
    const handlers: Api.Handlers = options.handlers
    const known = Object.keys(handlers)
    const concurrency = Math.max(1, Math.floor(options.concurrency ?? defaultConcurrency))
    const receiveWait = Duration.decode(options.receiveWait ?? defaultReceiveWait)
    const maxAttempts = Math.max(1, Math.floor(options.maxAttempts ?? defaultMaxAttempts))
    const shutdownTimeout = Duration.decode(options.shutdownTimeout ?? defaultShutdownTimeout)
    const retry = options.retry ?? defaultRetry
    const isTransient = (options.isTransient ?? defaultIsTransient) as (error: unknown) => boolean
    const delayedRetry = options.delayedRetry
    const delayOf = (attempt: number): Duration.Duration =>
      Duration.decode(typeof delayedRetry === "function" ? delayedRetry(attempt) : delayedRetry ?? 0)
    const counters = {
      processed: Metric.tagged(metrics.processed, "entity", entity),
      retries: Metric.tagged(metrics.retries, "entity", entity),
      deadLetters: Metric.tagged(metrics.deadLetters, "entity", entity),
      commitFailures: Metric.tagged(metrics.commitFailures, "entity", entity),
      duration: Metric.tagged(metrics.duration, "entity", entity)
    }

    // The handlers' services come with the context: the message fibers are forked from the loop,
    // which is forked from here.
    const link = yield* transport.open({
      source,
      destinations: options.destinations ?? [],
      lockRenewal: options.lockRenewal,
      concurrency
    })
    // The counts change a few times per message: a plain snapshot, published only while someone
    // listens, and waiters checked as it changes.
    let current: Api.Stats = zero
    let listeners = 0
    const published = yield* PubSub.unbounded<Api.Stats>()
    const waiters = new Set<
      { readonly predicate: (stats: Api.Stats) => boolean; readonly done: Deferred.Deferred<Api.Stats> }
    >()
    const bump = (f: (stats: Mutable<Api.Stats>) => void): Effect.Effect<void> =>
      Effect.suspend(() => {
        const next = { ...current }
        f(next)
        current = next
        for (const waiter of waiters) {
          // A predicate that throws fails its own wait, not the message being counted.
          let met: boolean
          try {
            met = waiter.predicate(next)
          } catch (defect) {
            waiters.delete(waiter)
            Deferred.unsafeDone(waiter.done, Exit.die(defect))
            continue
          }
          if (met) {
            waiters.delete(waiter)
            Deferred.unsafeDone(waiter.done, Exit.succeed(next))
          }
        }
        return listeners === 0 ? Effect.void : Effect.asVoid(PubSub.publish(published, next))
      })
    const changes: Stream.Stream<Api.Stats> = Stream.unwrapScoped(Effect.gen(function*() {
      yield* Effect.acquireRelease(
        Effect.sync(() => {
          listeners++
        }),
        () =>
          Effect.sync(() => {
            listeners--
          })
      )
      const subscription = yield* PubSub.subscribe(published)
      return Stream.concat(Stream.succeed(current), Stream.fromQueue(subscription))
    }))
    const awaitStats = (predicate: (stats: Api.Stats) => boolean): Effect.Effect<Api.Stats> =>
      Effect.suspend(() => {
        if (predicate(current)) return Effect.succeed(current)
        const waiter = { predicate, done: Deferred.unsafeMake<Api.Stats>(FiberId.none) }
        waiters.add(waiter)
        return Deferred.await(waiter.done).pipe(Effect.onInterrupt(() => Effect.sync(() => waiters.delete(waiter))))
      })

    // ---------------------------------------------------------------------------------------
    // One message

    // Runs in a fiber of its own, forked for the message: it sets that fiber's log annotations and
    // (for each attempt of the handler) its `CurrentMessage` for the rest of the fiber, rather
    // than around an effect with `Effect.annotateLogs` and `Effect.provideService`, which cost
    // several effects each. `after` runs last, whatever happened.
    const processOne = (item: Inbound, after: Effect.Effect<void>): Effect.Effect<void> =>
      Effect.withFiberRuntime((fiber) => {
        const message = item.message
        const tracing = isTracing(fiber)
        const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
        const labels = fiber.getFiberRef(FiberRef.currentMetricLabels)
        let start = 0
        let completed = false
        const props = message.applicationProperties ?? {}
        const original = props[propertyNames.originalMessageId]
        const messageId = typeof original === "string" && original.length > 0
          ? original
          : message.messageId ?? `${entity}#${message.sequenceNumber}`
        const previous = Number(props[propertyNames.retryCount] ?? 0)
        const earlierAttempts = Number.isFinite(previous) && previous > 0 ? Math.floor(previous) : 0
        const attempt = earlierAttempts + message.deliveryCount
        const subject = message.subject
        const correlationId = message.correlationId ?? messageId
        // Counts are changed once when the message comes and once when it is done with, so that a
        // reader never sees it counted as both in flight and finished.
        const changes: Array<(stats: Mutable<Api.Stats>) => void> = []
        const note = (change: (stats: Mutable<Api.Stats>) => void) =>
          Effect.sync(() => {
            changes.push(change)
          })

        const makeContext = (buffer: Array<Dispatch>, retry: number): Api.MessageContext => {
          let index = 0
          const complete = (outgoing: Api.Outgoing, traceparent: string | undefined): OutgoingMessage => {
            const position = index++
            const full: Mutable<OutgoingMessage> = {
              ...outgoing,
              messageId: outgoing.messageId ?? idFromMessage(messageId, position),
              correlationId: outgoing.correlationId ?? correlationId,
              causationId: outgoing.causationId ?? messageId
            }
            const trace = outgoing.traceparent ?? traceparent
            if (trace !== undefined) full.traceparent = trace
            return full
          }
          const send = (destination: string, messages: Api.Outgoing | ReadonlyArray<Api.Outgoing>) =>
            Effect.withFiberRuntime<void>((current) => {
              const traceparent = traceparentIn(current)
              const list: ReadonlyArray<Api.Outgoing> = Array.isArray(messages)
                ? messages
                : [messages as Api.Outgoing]
              buffer.push({ destination, messages: list.map((outgoing) => complete(outgoing, traceparent)) })
              return Effect.void
            })
          return {
            message,
            entity,
            messageId,
            subject: subject ?? "",
            correlationId,
            causationId: message.causationId,
            deliveryCount: message.deliveryCount,
            attempt,
            retry,
            enqueuedTime: message.enqueuedTime,
            traceparent: message.traceparent,
            send,
            publish: <A, I>(destination: string, schema: Schema.Schema<A, I>, body: A, fields?: Api.PublishFields) =>
              Schema.encode(schema)(body).pipe(
                Effect.mapError((error) =>
                  new MessageEncodeError({
                    ...(fields?.messageId === undefined ? {} : { messageId: fields.messageId }),
                    reason: ParseResult.TreeFormatter.formatErrorSync(error)
                  })
                ),
                Effect.flatMap((encoded) => {
                  const tag = typeof body === "object" && body !== null && "_tag" in body ? body._tag : undefined
                  const outgoing: Mutable<Api.Outgoing> = { ...fields, body: encoded }
                  if (outgoing.subject === undefined && typeof tag === "string") outgoing.subject = tag
                  return send(destination, outgoing)
                })
              )
          }
        }

        const settleOrRelease = (settlement: Settlement, what: string) =>
          item.settle(settlement).pipe(
            Effect.as(true),
            Effect.catchAll((error) =>
              Effect.as(
                Effect.zipRight(
                  Effect.logDebug(`Could not ${what} the message; it is delivered again when its lock expires`, error),
                  item.release
                ),
                false
              )
            )
          )

        const deadLetter = (error: unknown) =>
          settleOrRelease({ _tag: "DeadLetter", reason: tagOf(error), description: describe(error) }, "dead-letter")
            .pipe(
              Effect.tap((done) =>
                done
                  ? Effect.zipRight(
                    Metric.increment(counters.deadLetters),
                    note((s) => {
                      s.deadLettered++
                    })
                  )
                  : note((s) => {
                    s.abandoned++
                  })
              ),
              Effect.zipLeft(
                Effect.logWarning("Message dead-lettered", { reason: tagOf(error), error: describe(error) })
              ),
              Effect.asVoid
            )

        // Built only when needed: most messages are completed.
        const abandon = Effect.suspend(() =>
          settleOrRelease({ _tag: "Abandon" }, "abandon").pipe(
            Effect.zipRight(Metric.increment(counters.retries)),
            Effect.zipRight(note((s) => {
              s.abandoned++
            }))
          )
        )

        const reschedule = (delay: Duration.Duration) =>
          Effect.gen(function*() {
            if (source._tag !== "Queue") return yield* abandon
            const now = yield* Clock.currentTimeMillis
            const copy: OutgoingMessage = {
              body: message.body,
              messageId: idFromMessage(`retry:${messageId}`, attempt),
              ...(subject === undefined ? {} : { subject }),
              correlationId,
              ...(message.causationId === undefined ? {} : { causationId: message.causationId }),
              ...(message.traceparent === undefined ? {} : { traceparent: message.traceparent }),
              ...(message.sessionId === undefined ? {} : { sessionId: message.sessionId }),
              ...(message.partitionKey === undefined ? {} : { partitionKey: message.partitionKey }),
              applicationProperties: {
                ...props,
                [propertyNames.retryCount]: attempt,
                [propertyNames.originalMessageId]: messageId
              },
              scheduledEnqueueTime: new Date(now + Duration.toMillis(delay))
            }
            const done = yield* item.commit({ _tag: "Complete" }, [{ destination: source.queue, messages: [copy] }])
              .pipe(
                Effect.as(true),
                Effect.catchAll((error) =>
                  Effect.zipRight(
                    Effect.logDebug("Could not reschedule the message; abandoning it", error),
                    Effect.succeed(false)
                  )
                )
              )
            if (!done) return yield* abandon
            yield* Metric.increment(counters.retries)
            yield* note((s) => {
              s.rescheduled++
            })
          })

        // A failed attempt: dead-letter once the attempts are spent, else ask for another delivery.
        const failed = (error: unknown) =>
          Effect.gen(function*() {
            yield* annotateSpan("error", tagOf(error))
            if (attempt >= maxAttempts) return yield* deadLetter(error)
            yield* Effect.logInfo("Message handling failed; it will be retried", {
              error: tagOf(error),
              reason: describe(error)
            })
            if (delayedRetry !== undefined) return yield* reschedule(delayOf(attempt))
            return yield* abandon
          })

        // What the last attempt of the handler sent.
        let sent: Array<Dispatch> = []
        const handle = (selected: Api.Handler<unknown, unknown>, body: unknown) => {
          let tries = 0
          const once = Effect.suspend(() => {
            const buffer: Array<Dispatch> = []
            sent = buffer
            const context = makeContext(buffer, tries)
            const attempt = Effect.zipRight(
              FiberRef.update(FiberRef.currentContext, (services) => Context.add(services, CurrentMessage, context)),
              selected.handle(body, context) as Effect.Effect<unknown, unknown>
            )
            if (tries++ === 0) return attempt
            return Effect.zipRight(
              Effect.zipRight(
                Metric.increment(counters.retries),
                note((s) => {
                  s.retries++
                })
              ),
              attempt
            )
          })
          // The schedule's driver is made only after a first transient failure: the first attempt
          // almost always succeeds. The schedule then sees that failure first, as with
          // `Effect.retry` over the whole.
          return Effect.catchIf(
            once,
            isTransient,
            (first) => retryAfter(once, first, { schedule: retry, while: isTransient })
          )
        }

        const commit = (sends: ReadonlyArray<Dispatch>) =>
          tracing
            ? item.commit({ _tag: "Complete" }, sends).pipe(
              Effect.withSpan("MessageProcessor.commit", {
                captureStackTrace: false,
                attributes: {
                  entity,
                  messageId,
                  mode: transport.mode,
                  messages: sends.reduce((n, dispatch) => n + dispatch.messages.length, 0)
                }
              })
            )
            : item.commit({ _tag: "Complete" }, sends)

        const committed = Effect.sync(() => {
          completed = true
          changes.push(countCompleted)
        })
        const commitFailed = (error: unknown) =>
          Effect.zipRight(
            Effect.zipRight(
              Metric.increment(counters.commitFailures),
              note((s) => {
                s.commitFailures++
              })
            ),
            failed(error)
          )

        const work = (restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>) => {
          const selected = subject !== undefined && Object.hasOwn(handlers, subject) ? handlers[subject] : undefined
          if (selected === undefined) {
            return deadLetter(
              new UnknownMessageType({
                entity,
                ...(message.messageId === undefined ? {} : { messageId: message.messageId }),
                ...(subject === undefined ? {} : { subject }),
                known
              })
            )
          }
          return Effect.matchEffect(selected.decode(message), {
            onFailure: deadLetter,
            onSuccess: (body) =>
              Effect.matchCauseEffect(restore(handle(selected, body)), {
                onFailure: (cause) => {
                  if (Cause.isInterruptedOnly(cause)) {
                    // Shutdown ran out of time: let another receiver have the message at once.
                    return Effect.zipRight(
                      settleOrRelease({ _tag: "Abandon" }, "abandon"),
                      note((s) => {
                        s.abandoned++
                      })
                    )
                  }
                  const error = Cause.failureOption(cause)
                  if (Option.isSome(error)) return failed(error.value)
                  // A defect of the handler (it threw, or died): not retried in process.
                  return failed(
                    new HandlerDefect({
                      entity,
                      messageId,
                      ...(subject === undefined ? {} : { subject }),
                      reason: describe(Cause.squash(cause))
                    })
                  )
                },
                onSuccess: () =>
                  Effect.matchEffect(commit(sent), {
                    onFailure: commitFailed,
                    onSuccess: () => committed
                  })
              })
          })
        }

        const started = Effect.suspend(() => {
          start = clock.unsafeCurrentTimeMillis()
          return bump((s) => {
            s.received++
            s.inFlight++
          })
        })
        // Counted once, at the end: the histogram, the completion, and the stats.
        const finished = Effect.suspend(() => {
          counters.duration.unsafeUpdate(clock.unsafeCurrentTimeMillis() - start, labels)
          if (completed) counters.processed.unsafeUpdate(1, labels)
          return bump((s) => {
            for (const change of changes) change(s)
            s.inFlight--
          })
        })
        // Uninterruptible but for the handler: whatever happens, the message is settled or
        // released, counted, and `after` runs (it gives the slot back). Nothing escapes a
        // message's fiber: the loop and the other messages keep going.
        const unexpected = (cause: Cause.Cause<unknown>) =>
          Effect.zipRight(Effect.logError("Message processing failed unexpectedly", cause), item.release)
        const done = Effect.zipRight(Effect.catchAllCause(finished, unexpected), after)
        const body = Effect.uninterruptibleMask((restore) =>
          Effect.matchCauseEffect(
            Effect.zipRight(started, Effect.catchAllCause(work(restore), unexpected)),
            {
              onFailure: (cause) => Effect.zipRight(Effect.zipRight(unexpected(cause), done), Effect.failCause(cause)),
              onSuccess: () => done
            }
          )
        )
        const annotated = Effect.zipRight(
          FiberRef.update(FiberRef.currentLogAnnotations, (annotations) =>
            HashMap.set(
              HashMap.set(HashMap.set(annotations, "entity", entity as unknown), "messageId", messageId),
              "subject",
              subject ?? ""
            )),
          body
        )
        if (!tracing && message.traceparent === undefined) return annotated
        const parent = parentSpanOf(message.traceparent)
        return Effect.withSpan(annotated, "MessageProcessor.handle", {
          kind: "consumer",
          captureStackTrace: false,
          attributes: {
            entity,
            messageId,
            subject: subject ?? "",
            deliveryCount: message.deliveryCount,
            attempt,
            mode: transport.mode
          },
          ...(parent === undefined ? {} : { parent })
        })
      })

    // ---------------------------------------------------------------------------------------
    // The loop

    const inFlight = yield* FiberSet.make<void>()
    // The free slots, counted in plain code: a semaphore's take and release are several effects
    // each (and a scheduled task to wake a waiter), for every message. The loop waits for one
    // free slot, then receives as many messages as there are free slots.
    let free = concurrency
    let waiting: (() => void) | undefined
    const grab = Effect.sync(() => {
      const n = free
      free = 0
      return n
    })
    const takeSlots: Effect.Effect<number> = Effect.suspend(() =>
      free > 0 ? grab : Effect.zipRight(
        Effect.async<void>((resume) => {
          // A slot freed since the check above: no wait.
          if (free > 0) return resume(Effect.void)
          waiting = () => resume(Effect.void)
          return Effect.sync(() => {
            waiting = undefined
          })
        }),
        takeSlots
      )
    )
    const releaseSlots = (n: number) => {
      free += n
      const wake = waiting
      waiting = undefined
      wake?.()
    }

    // One receive and the fibers of what it brought. Plain combinators rather than a generator:
    // this runs once per few messages.
    const receiveOnce: Effect.Effect<void, Api.StartError | ReceiveError> = Effect.flatMap(
      takeSlots,
      (wanted) =>
        link.receive(wanted, receiveWait).pipe(
          Effect.tapErrorCause(() => Effect.sync(() => releaseSlots(wanted))),
          Effect.flatMap((batch) => {
            const items = batch.items
            if (items.length < wanted) releaseSlots(wanted - items.length)
            if (items.length === 0) return batch.done
            let pending = items.length
            const finished = Effect.suspend(() => {
              releaseSlots(1)
              return --pending === 0 ? batch.done : Effect.void
            })
            const start = (item: Inbound) => FiberSet.run(inFlight, processOne(item, finished))
            return items.length === 1 ? Effect.asVoid(start(items[0])) : Effect.forEach(items, start, { discard: true })
          })
        )
    )

    // The loop receives while there are free slots. A failed receive is tried again under
    // `receiveBackoff`, whose driver is made only after a failure (a retry around every receive
    // would make one each time). The loop yields between receives, as `Effect.forever` does, so
    // that the message fibers it just forked start first.
    const once = Effect.tapError(receiveOnce, (error) => Effect.logWarning("Receiving failed; trying again", error))
    const receiving: Effect.Effect<never, Api.StartError | ReceiveError> = Effect.flatMap(
      Effect.catchAll(once, (first) => retryAfter(once, first, { schedule: receiveBackoff })),
      () => Effect.zipRight(Effect.yieldNow(), receiving)
    )
    const loop = receiving.pipe(Effect.annotateLogs({ entity, processor: transport.name }))
    const loopFiber = yield* Effect.forkScoped(Effect.interruptible(loop))

    // ---------------------------------------------------------------------------------------
    // Shutdown

    const stopped = yield* Deferred.make<void>()
    let stopping = false
    const shutdown = Effect.suspend(() => {
      if (stopping) return Deferred.await(stopped)
      stopping = true
      return Effect.gen(function*() {
        yield* Fiber.interrupt(loopFiber)
        const drained = yield* FiberSet.awaitEmpty(inFlight).pipe(Effect.timeoutOption(shutdownTimeout))
        if (Option.isNone(drained)) {
          yield* Effect.logWarning("Shutdown timed out; abandoning the messages still in flight")
          yield* FiberSet.clear(inFlight)
        }
        yield* Deferred.succeed(stopped, undefined)
      }).pipe(Effect.uninterruptible, Effect.withSpan("MessageProcessor.shutdown", { attributes: { entity } }))
    })
    yield* Effect.addFinalizer(() => shutdown)

    const processor: Api.Processor = {
      source,
      mode: transport.mode,
      stats: Effect.sync(() => current),
      changes,
      awaitStats,
      shutdown
    }
    return processor
  })

// ---------------------------------------------------------------------------------------------
// Helpers

export const handleCommand = <
  A,
  Command extends { readonly _tag: string },
  Event extends { readonly _tag: string },
  State,
  Err
>(
  aggregate: Aggregate.Aggregate<Command, Event, State, Err>,
  options: Api.HandleCommandOptions<A, Command>
) =>
(
  body: A,
  context: Api.MessageContext
): Effect.Effect<Aggregate.HandleResult<Event, State>, Err | Aggregate.HandleError, EventStore> =>
  Effect.gen(function*() {
    const streamId = options.streamId(body, context)
    const commandId = context.messageId
    // A command decided again after its events were stored would append new events (the state
    // moved on), so a second try first looks for the events this command already wrote.
    if (context.attempt > 1 || context.retry > 0) {
      const store = yield* EventStore
      const prefix = `${commandId}:`
      const written = (yield* store.read(streamId)).filter((event) =>
        event.eventId.startsWith(prefix) && /^\d+$/.test(event.eventId.slice(prefix.length))
      )
      if (written.length > 0) {
        const loaded = yield* Aggregate.load(aggregate, streamId)
        const events = yield* Effect.forEach(written, (event) => aggregate.events.decode(event))
        return { streamId, version: loaded.version, events, recorded: written, state: loaded.state }
      }
    }
    return yield* Aggregate.handle(aggregate, streamId, options.command(body, context), {
      commandId,
      correlationId: context.correlationId,
      causationId: commandId
    })
  })

const numberOf = (value: unknown): number | undefined => {
  if (typeof value === "number" && Number.isFinite(value)) return value
  if (typeof value === "string" && /^\d+$/.test(value)) return Number(value)
  return undefined
}

export const projectionHandler = <Event extends { readonly _tag: string }, State>(
  projection: Projection<Event, State>,
  codec: EventCodec<Event>,
  options?: Projector.ProjectOptions
): Readonly<
  Record<string, Api.Handler<Projector.ProjectError | NotAnEventMessage, ProjectionStore>>
> => {
  const one = handler(Schema.Unknown, (data, context) =>
    Effect.suspend((): Effect.Effect<
      Projector.ProjectResult<State>,
      Projector.ProjectError | NotAnEventMessage,
      ProjectionStore
    > => {
      const props = context.message.applicationProperties ?? {}
      const streamId = props[outboxProperties.streamId]
      const version = numberOf(props[outboxProperties.version])
      if (typeof streamId !== "string" || version === undefined) {
        return Effect.fail(
          new NotAnEventMessage({
            entity: context.entity,
            messageId: context.messageId,
            reason: typeof streamId !== "string" ? "no streamId property" : "no numeric streamVersion property"
          })
        )
      }
      const eventType = props[outboxProperties.eventType]
      const recorded: RecordedEvent = {
        eventId: context.messageId,
        type: typeof eventType === "string" ? eventType : context.subject,
        schemaVersion: numberOf(props[outboxProperties.schemaVersion]) ?? 1,
        data,
        metadata: {
          timestamp: context.enqueuedTime.toISOString(),
          correlationId: context.correlationId,
          ...(context.causationId === undefined ? {} : { causationId: context.causationId })
        },
        streamId,
        version
      }
      return Projector.project(projection, codec, recorded, options)
    }))
  return Object.fromEntries(codec.types.map((type) => [type, one]))
}

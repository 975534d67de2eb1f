// What a chaos run checks once the system is drained: it reads Table Storage directly (not
// through the fault proxy) and the emulator's counts and dead-letter queues.
import type { TableClient } from "@azure/data-tables"
import { ServiceBusClient } from "@azure/service-bus"
import { Effect, Option, Redacted } from "effect"
import * as Booking from "../../examples/booking/Booking.js"
import * as Domain from "../../examples/order-booking/domain.js"
import * as Entities from "../../examples/order-booking/entities.js"
import * as AzureTableEventStore from "../../src/AzureTableEventStore.js"
import * as AzureTableProjectionStore from "../../src/AzureTableProjectionStore.js"
import type { ServiceBusEmulator } from "../../src/emulator/index.js"

export const subscriptionPath = `${Entities.bookingEvents}/Subscriptions/${Entities.bookingProcessor}`
export const queuePath = Entities.notifications

// The example's projection, given the position of each event (whether or not it uses it).
const evolve: (
  state: Domain.Summary,
  event: Booking.Event,
  position: { readonly streamId: string; readonly version: number }
) => Domain.Summary = Domain.summaries.evolve

export interface StreamProgress {
  readonly streamId: string
  readonly version: number
  readonly dispatched: number
}

/** Every booking stream's version and dispatched position, from the head and outbox rows. */
export const streams = async (events: TableClient): Promise<ReadonlyArray<StreamProgress>> => {
  const byStream = new Map<string, { version: number; dispatched: number }>()
  const rows = events.listEntities<{ Version?: number; Dispatched?: number }>({
    queryOptions: { filter: "RowKey eq '~head' or RowKey eq '~outbox'" }
  })
  for await (const row of rows) {
    const streamId = row.partitionKey ?? ""
    if (!streamId.startsWith("booking-")) continue
    const entry = byStream.get(streamId) ?? { version: 0, dispatched: 0 }
    if (row.rowKey === "~head") entry.version = Number(row.Version ?? 0)
    else entry.dispatched = Number(row.Dispatched ?? 0)
    byStream.set(streamId, entry)
  }
  return [...byStream].map(([streamId, entry]) => ({ streamId, ...entry })).sort((a, b) =>
    a.streamId.localeCompare(b.streamId)
  )
}

export interface Backlog {
  /** Events stored and not yet dispatched by the outbox. */
  readonly undispatched: number
  readonly subscription: ServiceBusEmulator.EntityCounts
  readonly queue: ServiceBusEmulator.EntityCounts
}

export const backlog = async (events: TableClient, emulator: ServiceBusEmulator.Emulator): Promise<Backlog> => {
  const progress = await streams(events)
  const [subscription, queue] = await Effect.runPromise(
    Effect.all([emulator.admin.counts(subscriptionPath), emulator.admin.counts(queuePath)])
  )
  return {
    undispatched: progress.reduce((sum, stream) => sum + Math.max(0, stream.version - stream.dispatched), 0),
    subscription,
    queue
  }
}

export const isDrained = (backlog: Backlog): boolean =>
  backlog.undispatched === 0 &&
  [backlog.subscription, backlog.queue].every((counts) =>
    counts.active === 0 && counts.locked === 0 && counts.scheduled === 0 && counts.deferred === 0
  )

export const describeBacklog = (backlog: Backlog): string =>
  `${backlog.undispatched} events not dispatched; subscription ${JSON.stringify(backlog.subscription)}; ` +
  `queue ${JSON.stringify(backlog.queue)}`

export interface DeadLetter {
  readonly entity: string
  readonly subject: string
  readonly reason: string
}

export interface Findings {
  readonly streams: number
  readonly eventsStored: number
  /** Events whose stream's dispatched position reached them. */
  readonly eventsDispatched: number
  readonly streamsBehind: ReadonlyArray<string>
  /** Events applied to summaries, by the summaries' positions. */
  readonly eventsApplied: number
  /** Effects traced, by kind. */
  readonly effects: { readonly eventsApplied: number; readonly notificationsRecorded: number }
  /** Messages whose effect was traced more than once, with the count. */
  readonly duplicateEffects: ReadonlyArray<string>
  /** Summaries that differ from a fold of their stream (state or position), or are missing. */
  readonly projectionMismatches: ReadonlyArray<string>
  /** Confirmations and cancellations applied to a summary whose notification is not recorded. */
  readonly missingNotifications: ReadonlyArray<string>
  readonly notificationsExpected: number
  readonly notificationsRecorded: number
  readonly deadLetters: ReadonlyArray<DeadLetter>
}

export interface CheckOptions {
  /** Azurite, directly. */
  readonly storage: Redacted.Redacted<string>
  readonly eventsTable: TableClient
  readonly traceTable: TableClient
  readonly tables: { readonly events: string; readonly projections: string }
  readonly serviceBus: Redacted.Redacted<string>
}

const deadLetters = async (connectionString: Redacted.Redacted<string>): Promise<ReadonlyArray<DeadLetter>> => {
  const client = new ServiceBusClient(Redacted.value(connectionString))
  try {
    const found: Array<DeadLetter> = []
    const receivers = [
      {
        entity: subscriptionPath,
        receiver: client.createReceiver(Entities.bookingEvents, Entities.bookingProcessor, {
          subQueueType: "deadLetter"
        })
      },
      { entity: queuePath, receiver: client.createReceiver(Entities.notifications, { subQueueType: "deadLetter" }) }
    ]
    for (const { entity, receiver } of receivers) {
      const messages = await receiver.peekMessages(5_000)
      for (const message of messages) {
        found.push({
          entity,
          subject: message.subject ?? "",
          reason: `${message.deadLetterReason ?? "no reason"}: ${message.deadLetterErrorDescription ?? ""}`.slice(
            0,
            300
          )
        })
      }
      await receiver.close()
    }
    return found
  } finally {
    await client.close()
  }
}

export const check = async (options: CheckOptions): Promise<Findings> => {
  const progress = await streams(options.eventsTable)
  const eventsStored = progress.reduce((sum, stream) => sum + stream.version, 0)
  const eventsDispatched = progress.reduce((sum, stream) => sum + Math.min(stream.version, stream.dispatched), 0)
  const streamsBehind = progress.filter((stream) => stream.dispatched < stream.version).map((stream) =>
    `${stream.streamId}: ${stream.dispatched} of ${stream.version} dispatched`
  )

  // The traces: one row per effect; a message with more than one row had its effect twice.
  const perMessage = new Map<string, number>()
  const perSubject = new Map<string, number>()
  const effects = { eventsApplied: 0, notificationsRecorded: 0 }
  for await (
    const row of options.traceTable.listEntities<{ messageId: string; subject: string }>()
  ) {
    if (row.partitionKey === "EventApplied") effects.eventsApplied++
    else effects.notificationsRecorded++
    const messageKey = `${row.partitionKey} ${row.messageId}`
    perMessage.set(messageKey, (perMessage.get(messageKey) ?? 0) + 1)
    const subjectKey = `${row.partitionKey} ${row.subject}`
    perSubject.set(subjectKey, (perSubject.get(subjectKey) ?? 0) + 1)
  }
  const duplicateEffects = [
    ...[...perMessage].filter(([, count]) => count > 1).map(([key, count]) => `message ${key}: ${count} times`),
    ...[...perSubject].filter(([, count]) => count > 1).map(([key, count]) => `${key}: ${count} times`)
  ]

  const program = Effect.gen(function*() {
    const store = yield* AzureTableEventStore.make({
      connectionString: options.storage,
      tableName: options.tables.events,
      createTable: false
    })
    const documents = yield* AzureTableProjectionStore.make({
      connectionString: options.storage,
      tableName: options.tables.projections,
      createTable: false
    })
    const projectionMismatches: Array<string> = []
    const missingNotifications: Array<string> = []
    let eventsApplied = 0
    let notificationsExpected = 0
    let notificationsRecorded = 0
    yield* Effect.forEach(progress, (stream) =>
      Effect.gen(function*() {
        const recorded = yield* store.read(stream.streamId)
        const events = yield* Effect.forEach(recorded, Booking.events.decode)
        const bookingId = Domain.bookingIdOf(stream.streamId)
        const folded = events.reduce(
          (state, event, index) =>
            evolve(state, event, { streamId: stream.streamId, version: recorded[index]!.version }),
          Domain.summaries.initialState
        )
        const document = yield* documents.get(Domain.summaries.name, bookingId)
        const applied = Option.match(document, {
          onNone: () => 0,
          onSome: (document) => document.positions[stream.streamId] ?? 0
        })
        eventsApplied += applied
        if (Option.isNone(document)) {
          projectionMismatches.push(`${stream.streamId}: no summary (version ${stream.version})`)
        } else if (applied !== stream.version) {
          projectionMismatches.push(`${stream.streamId}: summary at version ${applied}, stream at ${stream.version}`)
        } else if (toData(document.value.state) !== toData(Domain.summaries.encodeState(folded))) {
          projectionMismatches.push(
            `${stream.streamId}: summary ${JSON.stringify(document.value.state)} differs from the fold ${
              JSON.stringify(Domain.summaries.encodeState(folded))
            }`
          )
        }
        // Every confirmation or cancellation the summary applied must have its notification.
        for (const [index, event] of events.entries()) {
          const kind = event._tag
          if (kind !== "BookingConfirmed" && kind !== "BookingCancelled") continue
          if (recorded[index]!.version > applied) continue
          notificationsExpected++
          const notification = yield* documents.get(
            Domain.sentNotifications,
            Domain.notificationDocumentId(bookingId, kind)
          )
          if (Option.isSome(notification)) notificationsRecorded++
          else missingNotifications.push(`${stream.streamId}@${recorded[index]!.version} ${kind}`)
        }
      }), { concurrency: 8, discard: true })
    return { projectionMismatches, missingNotifications, eventsApplied, notificationsExpected, notificationsRecorded }
  })
  const folded = await Effect.runPromise(program)

  return {
    streams: progress.length,
    eventsStored,
    eventsDispatched,
    streamsBehind,
    effects,
    duplicateEffects,
    ...folded,
    deadLetters: await deadLetters(options.serviceBus)
  }
}

// A JSON value as structurally comparable data.
const toData = (value: unknown): string => JSON.stringify(value, Object.keys(flatKeys(value)).sort())

const flatKeys = (value: unknown, keys: Record<string, true> = {}): Record<string, true> => {
  if (Array.isArray(value)) { for (const item of value) flatKeys(item, keys) }
  else if (typeof value === "object" && value !== null) {
    for (const [key, item] of Object.entries(value)) {
      keys[key] = true
      flatKeys(item, keys)
    }
  }
  return keys
}

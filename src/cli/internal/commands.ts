import type { ConfigError } from "effect"
import {
  Cause,
  Clock,
  Config,
  ConfigProvider,
  Duration,
  Effect,
  Either,
  Exit,
  Layer,
  Logger,
  LogLevel,
  Option
} from "effect"
import { readFile } from "node:fs/promises"
import type { Options as StorageOptions } from "../../AzureTableEventStore.js"
import * as AzureTableEventStore from "../../AzureTableEventStore.js"
import * as AzureTableProjectionStore from "../../AzureTableProjectionStore.js"
import type { EventCodec } from "../../EventCodec.js"
import { EventStore } from "../../EventStore.js"
import type { OutgoingMessage, ReceivedMessage } from "../../Message.js"
import * as Message from "../../Message.js"
import * as MessageReceiver from "../../MessageReceiver.js"
import * as MessageSender from "../../MessageSender.js"
import { OutboxStore } from "../../OutboxStore.js"
import type { Projection } from "../../Projection.js"
import * as Projector from "../../Projector.js"
import * as ServiceBusClient from "../../ServiceBusClient.js"
import * as ServiceBusTransaction from "../../ServiceBusTransaction.js"
import type * as Api from "../Cli.js"
import { CliError } from "../Cli.js"
import * as Progress from "../Progress.js"
import * as Argv from "./argv.js"

const program = "effect-eventually"

// Configuration --------------------------------------------------------------------------------

const configFailure = (what: string) => (error: ConfigError.ConfigError) =>
  new CliError({ message: `${what} is not configured: ${String(error)}` })

const storageOptions = (table: string | undefined): Effect.Effect<StorageOptions, CliError> =>
  Config.unwrap(AzureTableEventStore.config).pipe(
    Effect.mapError(configFailure("the event store")),
    // An operations tool reads what exists: it never creates a table by mistake.
    Effect.map((options): StorageOptions => ({
      ...options,
      ...(table === undefined ? {} : { tableName: table }),
      createTable: false
    }))
  )

const serviceBusOptions: Effect.Effect<ServiceBusClient.ServiceBusClientOptions, CliError> = Config.unwrap(
  ServiceBusClient.config
).pipe(
  Effect.mapError(configFailure("Service Bus")),
  Effect.filterOrFail(
    (options) => options.connectionString !== undefined || options.fullyQualifiedNamespace !== undefined,
    () =>
      new CliError({
        message: "Service Bus is not configured: set SERVICEBUS_CONNECTION_STRING, or SERVICEBUS_NAMESPACE " +
          "(authenticated with DefaultAzureCredential)"
      })
  )
)

const transactionConnection = (
  options: ServiceBusClient.ServiceBusClientOptions
): Effect.Effect<ServiceBusTransaction.Connection, CliError> =>
  options.connectionString !== undefined
    ? Effect.succeed({ connectionString: options.connectionString })
    : Effect.tryPromise({
      try: () => import("@azure/identity"),
      catch: () => new CliError({ message: "@azure/identity could not be loaded for SERVICEBUS_NAMESPACE" })
    }).pipe(Effect.map((identity) => ({
      fullyQualifiedNamespace: options.fullyQualifiedNamespace ?? "",
      credential: new identity.DefaultAzureCredential()
    })))

// Formatting -----------------------------------------------------------------------------------

const columns = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((title, index) => Math.max(title.length, ...rows.map((row) => row[index]?.length ?? 0)))
  const line = (cells: ReadonlyArray<string>) =>
    cells.map((cell, index) => index === cells.length - 1 ? cell : cell.padEnd(widths[index])).join("  ").trimEnd()
  return [line(header), ...rows.map(line)].join("\n") + "\n"
}

// Values of other programs may hold anything: keep each on one line of the table.
const oneLine = (text: string): string => text.replace(/\s*[\r\n]+\s*/g, " ")

const json = (value: unknown): string =>
  JSON.stringify(value, (_, v: unknown) => typeof v === "bigint" ? v.toString() : v) ?? "undefined"

const text = (value: unknown): string => typeof value === "string" ? value : ""
const int = (value: unknown): number => typeof value === "number" ? value : 0

// Entities -------------------------------------------------------------------------------------

const parseEntity = (name: string): Either.Either<MessageReceiver.Source, CliError> => {
  // The dead-letter queue's own path is accepted too: it names the same entity.
  const path = name.replace(/\/\$deadletterqueue$/i, "")
  const parts = path.split("/")
  if (parts.length === 1 && parts[0] !== "") return Either.right(MessageReceiver.queue(parts[0]))
  if (parts.length === 3 && parts[1].toLowerCase() === "subscriptions" && parts[0] !== "" && parts[2] !== "") {
    return Either.right(MessageReceiver.subscription(parts[0], parts[2]))
  }
  return Either.left(
    new CliError({ message: `'${name}' is not a queue or a subscription: write 'queue' or 'topic/subscriptions/name'` })
  )
}

const destinationOf = (source: MessageReceiver.Source): string => source._tag === "Queue" ? source.queue : source.topic

// The application properties Service Bus adds when it dead-letters a message.
const deadLetterProperties = new Set<string>([
  Message.propertyNames.deadLetterReason,
  Message.propertyNames.deadLetterErrorDescription
])

/**
 * The copy sent back to the entity. Its id is new but derived from the dead-lettered message
 * (its id and its sequence number in the dead-letter queue): the original id may still be in the
 * entity's duplicate detection history, which would drop the copy, while a retried requeue of
 * the same dead-lettered message gets the same id and is dropped.
 */
export const requeuedCopy = (message: ReceivedMessage): OutgoingMessage => {
  const properties: Record<string, string | number | boolean> = {}
  for (const [key, value] of Object.entries(message.applicationProperties ?? {})) {
    if (!deadLetterProperties.has(key)) properties[key] = value
  }
  if (message.messageId !== undefined) properties.requeuedFrom = message.messageId
  if (message.deadLetterReason !== undefined) properties.requeuedDeadLetterReason = message.deadLetterReason
  return {
    body: message.body,
    messageId: Message.deterministicId("requeue", message.messageId ?? "", message.sequenceNumber.toString()),
    ...(message.subject === undefined ? {} : { subject: message.subject }),
    ...(message.correlationId === undefined ? {} : { correlationId: message.correlationId }),
    ...(message.causationId === undefined ? {} : { causationId: message.causationId }),
    ...(message.sessionId === undefined ? {} : { sessionId: message.sessionId }),
    ...(message.partitionKey === undefined ? {} : { partitionKey: message.partitionKey }),
    ...(message.traceparent === undefined ? {} : { traceparent: message.traceparent }),
    applicationProperties: properties
  }
}

// Commands -------------------------------------------------------------------------------------

const tableOption: Api.OptionSpec = {
  name: "table",
  kind: "string",
  placeholder: "NAME",
  description: "the event store's table (default: EVENT_STORE_TABLE, or events)"
}
const jsonOption: Api.OptionSpec = { name: "json", kind: "flag", description: "print one JSON object per line" }
const entityArgument: Api.ArgumentSpec = {
  name: "entity",
  description: "a queue ('orders') or a subscription ('events/subscriptions/billing')"
}

const optionalString = (value: unknown): string | undefined => typeof value === "string" ? value : undefined

const streamRead: Api.Command = {
  spec: {
    path: ["stream", "read"],
    summary: "print the events of a stream",
    details: "Prints version, type, event id, timestamp and data of each event, in version order.",
    args: [{ name: "streamId", description: "the stream to read" }],
    options: [
      { name: "from", kind: "integer", placeholder: "N", default: 1, description: "the first version to print" },
      tableOption,
      jsonOption
    ]
  },
  run: ({ args, options, stdout }) =>
    Effect.gen(function*() {
      const settings = yield* storageOptions(optionalString(options.table))
      const store = yield* EventStore
      const events = yield* store.read(args[0], { fromVersion: Math.max(1, int(options.from)) })
      if (options.json === true) {
        for (const event of events) stdout.write(json(event) + "\n")
        return
      }
      if (events.length === 0) {
        stdout.write(
          `no events in '${args[0]}' from version ${int(options.from)} (table ${settings.tableName ?? "events"})\n`
        )
        return
      }
      stdout.write(columns(
        ["VERSION", "TYPE", "EVENT ID", "TIMESTAMP", "DATA"],
        events.map((event) => [
          String(event.version),
          event.type,
          event.eventId,
          event.metadata.timestamp,
          oneLine(json(event.data))
        ])
      ))
    }).pipe(
      Effect.provide(Layer.unwrapEffect(
        Effect.map(storageOptions(optionalString(options.table)), AzureTableEventStore.layer)
      ))
    )
}

const outboxLag: Api.Command = {
  spec: {
    path: ["outbox", "lag"],
    summary: "list the streams with events the outbox has not dispatched",
    details: "Reads the outbox's pending index (every bucket, the current one included), then each listed\n" +
      "stream's version and dispatched position. Streams appended to in the last moments may be in\n" +
      "flight rather than behind.",
    args: [],
    options: [tableOption, jsonOption]
  },
  run: ({ options, stdout }) =>
    Effect.gen(function*() {
      const outbox = yield* OutboxStore
      const store = yield* EventStore
      const now = yield* Clock.currentTimeMillis
      // Buckets that end by then include the current one: an operator wants the latest state.
      const entries = yield* outbox.pending({ endedBefore: now + Duration.toMillis(outbox.bucketSize) })
      const oldestBucket = new Map<string, number>()
      for (const entry of entries) {
        oldestBucket.set(entry.streamId, Math.min(entry.bucket, oldestBucket.get(entry.streamId) ?? entry.bucket))
      }
      const behind = yield* Effect.forEach(
        [...oldestBucket.keys()],
        (streamId) =>
          Effect.gen(function*() {
            const progress = yield* outbox.progress(streamId)
            if (progress.version <= progress.dispatched) return Option.none()
            const [first] = yield* store.read(streamId, {
              fromVersion: progress.dispatched + 1,
              toVersion: progress.dispatched + 1
            })
            return Option.some({
              streamId,
              version: progress.version,
              dispatched: progress.dispatched,
              behind: progress.version - progress.dispatched,
              oldestUndispatched: first?.metadata.timestamp
            })
          }),
        { concurrency: 8 }
      ).pipe(Effect.map((results) => results.flatMap(Option.toArray)))
      const sorted = behind.sort((a, b) => b.behind - a.behind || a.streamId.localeCompare(b.streamId))
      if (options.json === true) {
        for (const row of sorted) stdout.write(json(row) + "\n")
        return
      }
      if (sorted.length === 0) {
        stdout.write(`nothing to dispatch: ${oldestBucket.size} streams in the pending index, all dispatched\n`)
        return
      }
      stdout.write(columns(
        ["STREAM", "VERSION", "DISPATCHED", "BEHIND", "OLDEST UNDISPATCHED"],
        sorted.map((row) => [
          row.streamId,
          String(row.version),
          String(row.dispatched),
          String(row.behind),
          row.oldestUndispatched === undefined
            ? ""
            : `${row.oldestUndispatched} (${ago(now - Date.parse(row.oldestUndispatched))})`
        ])
      ))
      const events = sorted.reduce((sum, row) => sum + row.behind, 0)
      stdout.write(`${sorted.length} streams behind, ${events} events not dispatched\n`)
    }).pipe(
      Effect.provide(Layer.unwrapEffect(
        Effect.map(storageOptions(optionalString(options.table)), AzureTableEventStore.layer)
      ))
    )
}

const ago = (millis: number): string =>
  Number.isNaN(millis)
    ? "unknown age"
    : `${Duration.format(Duration.seconds(Math.max(0, Math.round(millis / 1000))))} ago`

const serviceBusLayer = Layer.unwrapScoped(
  Effect.map(
    serviceBusOptions,
    (options) =>
      Layer.mergeAll(MessageSender.layerServiceBus(), MessageReceiver.layerServiceBus()).pipe(
        Layer.provide(ServiceBusClient.layer(options))
      )
  )
)

const dlqPeek: Api.Command = {
  spec: {
    path: ["dlq", "peek"],
    summary: "show dead-lettered messages without receiving them",
    args: [entityArgument],
    options: [
      { name: "max", kind: "integer", placeholder: "N", default: 10, description: "how many messages to show" },
      jsonOption
    ]
  },
  run: ({ args, options, stdout }) =>
    // The entity is checked before anything connects.
    Effect.flatMap(parseEntity(args[0]), (source) => peek(source, options, stdout))
}

const peek = (source: MessageReceiver.Source, options: Api.OptionValues, stdout: Api.Output) =>
  Effect.gen(function*() {
    const receiver = yield* MessageReceiver.MessageReceiver
    const deadLetters = MessageReceiver.deadLetterOf(source)
    const messages = yield* receiver.peek(deadLetters, { maxMessages: Math.max(1, int(options.max)) })
    if (options.json === true) {
      for (const message of messages) stdout.write(json(message) + "\n")
      return
    }
    if (messages.length === 0) {
      stdout.write(`${MessageReceiver.entityPath(deadLetters)} is empty\n`)
      return
    }
    stdout.write(columns(
      ["SEQUENCE", "MESSAGE ID", "SUBJECT", "ENQUEUED", "REASON", "DESCRIPTION"],
      messages.map((message) => [
        message.sequenceNumber.toString(),
        message.messageId ?? "",
        oneLine(message.subject ?? ""),
        message.enqueuedTime.toISOString(),
        oneLine(message.deadLetterReason ?? ""),
        oneLine(message.deadLetterErrorDescription ?? "")
      ])
    ))
  }).pipe(Effect.provide(serviceBusLayer))

const dlqRequeue: Api.Command = {
  spec: {
    path: ["dlq", "requeue"],
    summary: "move dead-lettered messages back to their entity",
    details: "Each message is received from the dead-letter queue, a copy is sent to the queue (or, for a\n" +
      "subscription, to its topic) and the dead-lettered message is completed, in one Service Bus\n" +
      "transaction. The copy gets a new message id derived from the dead-lettered one, so a retried\n" +
      "requeue is dropped by duplicate detection; its 'requeuedFrom' property holds the original id.\n" +
      "A copy sent to a topic reaches every subscription whose filter matches it: pass\n" +
      "--allow-fan-out to requeue a subscription's messages anyway.",
    args: [entityArgument],
    options: [
      { name: "max", kind: "integer", placeholder: "N", default: 10, description: "how many messages to move" },
      {
        name: "wait",
        kind: "integer",
        placeholder: "SECONDS",
        default: 5,
        description: "how long to wait for dead-lettered messages"
      },
      {
        name: "no-transaction",
        kind: "flag",
        description: "send, then complete, without a transaction (Basic tier)"
      },
      { name: "allow-fan-out", kind: "flag", description: "allow requeueing a subscription's messages to its topic" }
    ]
  },
  run: ({ args, options, stdout }) =>
    Effect.gen(function*() {
      const source = yield* parseEntity(args[0])
      if (source._tag === "Subscription" && options["allow-fan-out"] !== true) {
        return yield* new CliError({
          message: `a copy sent to topic '${source.topic}' reaches every matching subscription, not only ` +
            `'${source.subscription}': pass --allow-fan-out to requeue anyway`
        })
      }
      const max = int(options.max)
      const wait = Duration.seconds(int(options.wait))
      const destination = destinationOf(source)
      const from = MessageReceiver.entityPath(MessageReceiver.deadLetterOf(source))
      const report = (message: ReceivedMessage, copy: OutgoingMessage) =>
        stdout.write(
          `requeued ${message.sequenceNumber} ${message.messageId ?? "(no id)"} as ${copy.messageId}` +
            `${message.deadLetterReason === undefined ? "" : ` (was: ${oneLine(message.deadLetterReason)})`}\n`
        )
      const moved = options["no-transaction"] === true
        ? yield* requeueWithoutTransaction(source, destination, max, wait, report)
        : yield* requeueInTransactions(source, destination, max, wait, report)
      stdout.write(`requeued ${moved} messages from ${from} to ${destination}\n`)
    })
}

const requeueInTransactions = (
  source: MessageReceiver.Source,
  destination: string,
  max: number,
  wait: Duration.Duration,
  report: (message: ReceivedMessage, copy: OutgoingMessage) => void
) =>
  Effect.gen(function*() {
    const connection = yield* Effect.flatMap(serviceBusOptions, transactionConnection)
    const session = yield* ServiceBusTransaction.makeSession({
      connection,
      entity: MessageReceiver.deadLetterOf(source),
      destinations: [destination]
    })
    let moved = 0
    while (moved < max) {
      const messages = yield* session.receive(Math.min(max - moved, 50), { maxWait: wait })
      if (messages.length === 0) break
      // One transaction per message: a refused message leaves the others moved.
      for (const message of messages) {
        const copy = requeuedCopy(message)
        yield* ServiceBusTransaction.run(session, (tx) =>
          Effect.zipRight(tx.send(destination, copy), tx.complete(message)))
        report(message, copy)
        moved++
      }
    }
    return moved
  }).pipe(Effect.scoped)

const requeueWithoutTransaction = (
  source: MessageReceiver.Source,
  destination: string,
  max: number,
  wait: Duration.Duration,
  report: (message: ReceivedMessage, copy: OutgoingMessage) => void
) =>
  Effect.gen(function*() {
    const receiver = yield* MessageReceiver.MessageReceiver
    const sender = yield* MessageSender.MessageSender
    let moved = 0
    while (moved < max) {
      const deliveries = yield* receiver.receive(MessageReceiver.deadLetterOf(source), {
        maxMessages: Math.min(max - moved, 50),
        maxWaitTime: wait
      })
      if (deliveries.length === 0) break
      for (const delivery of deliveries) {
        const copy = requeuedCopy(delivery.message)
        // Send first: a crash before the completion leaves the message dead-lettered, and the
        // next requeue sends the same id again, which duplicate detection drops.
        yield* sender.send(destination, copy)
        yield* delivery.complete
        report(delivery.message, copy)
        moved++
      }
    }
    return moved
  }).pipe(Effect.scoped, Effect.provide(serviceBusLayer))

export const builtins: ReadonlyArray<Api.Command> = [streamRead, outboxLag, dlqPeek, dlqRequeue]

export const rebuildCommand = <Event extends { readonly _tag: string }, State>(
  projection: Projection<Event, State>,
  codec: EventCodec<Event>
): Api.Command => ({
  spec: {
    path: ["projection", "rebuild", projection.name],
    summary: `rebuild the projection '${projection.name}' into a new table`,
    details: "Replays the listed streams from the event store, in the order of the file. The rebuild is\n" +
      "resumable: run the same command again after an interruption and it skips the streams done.",
    args: [],
    options: [
      {
        name: "streams",
        kind: "string",
        placeholder: "FILE",
        required: true,
        description: "the stream ids to replay, one per line"
      },
      {
        name: "target-table",
        kind: "string",
        placeholder: "NAME",
        required: true,
        description: "the table to build the documents in"
      },
      tableOption,
      {
        name: "checkpoint-every",
        kind: "integer",
        placeholder: "N",
        default: 10,
        description: "streams between checkpoints"
      }
    ]
  },
  run: ({ options, stdout }) =>
    Effect.gen(function*() {
      const file = text(options.streams)
      const content = yield* Effect.tryPromise({
        try: () => readFile(file, "utf8"),
        catch: (error) =>
          new CliError({ message: `cannot read ${file}: ${error instanceof Error ? error.message : String(error)}` })
      })
      const streams = content.split(/\r?\n/).map((line) => line.trim()).filter((line) => line !== "")
      const storage = yield* storageOptions(optionalString(options.table))
      const target = yield* AzureTableProjectionStore.make({
        ...(storage.connectionString === undefined ? {} : { connectionString: storage.connectionString }),
        ...(storage.accountUrl === undefined ? {} : { accountUrl: storage.accountUrl }),
        tableName: text(options["target-table"])
      })
      const result = yield* Projector.rebuild(projection, codec, {
        streams,
        target,
        checkpointEvery: Math.max(1, int(options["checkpoint-every"])),
        onProgress: Progress.reporter(stdout)
      }).pipe(Effect.provide(AzureTableEventStore.layer(storage)))
      stdout.write(
        `rebuilt ${projection.name}: ${result.streamsCompleted} streams, ${result.eventsApplied} events applied\n`
      )
    })
})

// Running --------------------------------------------------------------------------------------

const describeError = (error: unknown): string => {
  if (typeof error === "object" && error !== null) {
    const tag = "_tag" in error && typeof error._tag === "string" ? error._tag : undefined
    const message = "message" in error && typeof error.message === "string" && error.message !== ""
      ? error.message
      : String(error)
    return tag === undefined || tag === "CliError" ? message : `${tag}: ${message}`
  }
  return String(error)
}

export const main = async (argv: ReadonlyArray<string>, options: Api.MainOptions = {}): Promise<number> => {
  const stdout = options.stdout ?? process.stdout
  const stderr = options.stderr ?? process.stderr
  const name = options.program ?? program
  const all = [...builtins, ...(options.commands ?? [])]
  const footer =
    "Configuration: AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL (and EVENT_STORE_TABLE)\n" +
    "for the event store, SERVICEBUS_CONNECTION_STRING or SERVICEBUS_NAMESPACE for Service Bus."
  const parsed = Argv.parse(all.map((command) => command.spec), argv)
  if (Either.isLeft(parsed)) {
    const error = parsed.left
    stderr.write(`error: ${error.message}\n`)
    stderr.write(
      error.command === undefined
        ? `Run '${name}${error.prefix.length > 0 ? ` ${error.prefix.join(" ")}` : ""} --help' for the commands.\n`
        : `Usage: ${Argv.usage(name, error.command)}\nRun '${name} ${error.command.path.join(" ")} --help' for more.\n`
    )
    return 2
  }
  if (parsed.right._tag === "Help") {
    const { command, prefix } = parsed.right
    stdout.write(
      command === undefined
        ? Argv.overview(name, all.map((c) => c.spec), prefix, footer)
        : Argv.commandHelp(name, command)
    )
    return 0
  }
  const { args, command: spec, options: values } = parsed.right
  const command = all.find((candidate) => candidate.spec === spec)
  if (command === undefined) return 2
  const env = options.env ?? process.env
  const provider = ConfigProvider.fromMap(
    new Map(Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined))
  )
  // Logs go to stderr, so stdout holds only the command's output (and can be piped).
  const logger = Logger.make((log) => {
    stderr.write(`${Logger.logfmtLogger.log(log)}\n`)
  })
  const exit = await Effect.runPromiseExit(
    command.run({ args, options: values, stdout, stderr }).pipe(
      Effect.withConfigProvider(provider),
      Effect.provide(Logger.replace(Logger.defaultLogger, logger)),
      Logger.withMinimumLogLevel(LogLevel.Warning)
    )
  )
  if (Exit.isSuccess(exit)) return 0
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) {
    stderr.write(`error: ${describeError(failure.value)}\n`)
  } else if (Cause.isInterruptedOnly(exit.cause)) {
    stderr.write("interrupted\n")
  } else {
    stderr.write(`unexpected error: ${describeError(Cause.squash(exit.cause))}\n`)
  }
  return 1
}

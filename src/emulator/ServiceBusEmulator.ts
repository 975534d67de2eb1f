/**
 * A Node-native Azure Service Bus emulator: an AMQP 1.0 server that the official
 * `@azure/service-bus` client (and any AMQP 1.0 client) can talk to, with queues, topics,
 * subscriptions and filters, peek-lock, dead-lettering, deferral, scheduling, duplicate detection
 * and AMQP transactions, plus fault injection for tests.
 *
 * @since 0.1.0
 */
import type { Scope } from "effect"
import { Context, Duration, Effect, Layer, Redacted, Schema } from "effect"
import { BrokerError, Conditions } from "./internal/broker.js"
import type { DurationLike } from "./internal/config.js"
import { rulesOf, settingsOf } from "./internal/config.js"
import type { CorrelationFilter as CorrelationFilterConfig } from "./internal/filter.js"
import { EmulatorServer } from "./internal/server.js"

/**
 * A duration: milliseconds, an Effect duration (`"30 seconds"`), or ISO 8601 (`"PT30S"`).
 *
 * @since 0.1.0
 * @category models
 */
export type DurationOption = DurationLike

/**
 * A correlation filter: every field given must equal the message's.
 *
 * @since 0.1.0
 * @category models
 */
export type CorrelationFilter = CorrelationFilterConfig

/**
 * A subscription filter: `true` (every message), `false`, a SQL filter such as
 * `"sys.label = 'created' AND user.region = 'eu'"`, or a correlation filter.
 *
 * @since 0.1.0
 * @category models
 */
export type Filter = boolean | { readonly sql: string } | { readonly correlation: CorrelationFilter }

/**
 * A subscription rule.
 *
 * @since 0.1.0
 * @category models
 */
export interface RuleOptions {
  readonly name: string
  readonly filter: Filter
}

/**
 * Settings shared by queues and subscriptions.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReceiveSideOptions {
  /** How long a peek-lock lasts (default 1 minute, at most 5). */
  readonly lockDuration?: DurationOption | undefined
  /** Deliveries before a message is dead-lettered (default 10). */
  readonly maxDeliveryCount?: number | undefined
  /** Time to live of messages that set none shorter (default: forever). */
  readonly defaultMessageTimeToLive?: DurationOption | undefined
  /** Moves expired messages to the dead-letter queue instead of dropping them (default false). */
  readonly deadLetteringOnMessageExpiration?: boolean | undefined
}

/**
 * Settings of the entities that accept sends (queues and topics).
 *
 * @since 0.1.0
 * @category models
 */
export interface SendSideOptions {
  /** Drops messages whose MessageId was seen within the window (default off). */
  readonly requiresDuplicateDetection?: boolean | undefined
  /** The duplicate detection window (default 10 minutes; setting it turns detection on). */
  readonly duplicateDetectionHistoryTimeWindow?: DurationOption | undefined
  /** Largest message or batch accepted (default 256, as on the Standard tier). */
  readonly maxMessageSizeInKilobytes?: number | undefined
}

/**
 * A queue.
 *
 * @since 0.1.0
 * @category models
 */
export interface QueueOptions extends ReceiveSideOptions, SendSideOptions {
  readonly name: string
}

/**
 * A subscription. Without `filter` or `rules` it receives every message of its topic.
 *
 * @since 0.1.0
 * @category models
 */
export interface SubscriptionOptions extends ReceiveSideOptions {
  readonly name: string
  /** Shorthand for one rule named `$Default`. */
  readonly filter?: Filter | undefined
  readonly rules?: ReadonlyArray<RuleOptions> | undefined
}

/**
 * A topic and its subscriptions.
 *
 * @since 0.1.0
 * @category models
 */
export interface TopicOptions extends SendSideOptions {
  readonly name: string
  readonly defaultMessageTimeToLive?: DurationOption | undefined
  readonly subscriptions?: ReadonlyArray<SubscriptionOptions> | undefined
}

/**
 * How to start the emulator.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Interface to listen on (default `127.0.0.1`). */
  readonly host?: string | undefined
  /** TCP port (default 0: a free port). */
  readonly port?: number | undefined
  /** Name of the shared access key (default `RootManageSharedAccessKey`). */
  readonly sharedAccessKeyName?: string | undefined
  /**
   * The shared access key. When set, SAS tokens and SASL PLAIN passwords are checked against it
   * and a client with a wrong key is refused; when not set, any key is accepted.
   */
  readonly sharedAccessKey?: Redacted.Redacted<string> | string | undefined
  /** Accepts any well-formed JWT in CBS put-token (for `TokenCredential` clients; default true). */
  readonly acceptJwt?: boolean | undefined
  readonly queues?: ReadonlyArray<QueueOptions> | undefined
  readonly topics?: ReadonlyArray<TopicOptions> | undefined
  /** How long a transaction may run after its first operation (default 2 minutes). */
  readonly transactionTimeout?: Duration.DurationInput | undefined
  /** Operations allowed in one transaction (default 100). */
  readonly maxTransactionOperations?: number | undefined
  /**
   * Whether the namespace has transactions (default true). `false` plays a Basic tier namespace:
   * a declare is rejected with `amqp:not-allowed`, as Service Bus does there.
   */
  readonly transactions?: boolean | undefined
}

/**
 * Counts of the messages of a queue or subscription.
 *
 * @since 0.1.0
 * @category models
 */
export interface EntityCounts {
  readonly active: number
  readonly locked: number
  readonly deferred: number
  readonly scheduled: number
  readonly deadLettered: number
}

/**
 * Fault injection, for tests of code that uses Service Bus.
 *
 * @since 0.1.0
 * @category models
 */
export interface Faults {
  /** Closes every client connection (with `amqp:connection:forced`, or by dropping the socket). */
  readonly closeConnections: (options?: { readonly abrupt?: boolean }) => Effect.Effect<number>
  /**
   * Detaches every sender and receiver link of every client with `amqp:link:detach-forced`,
   * keeping the connections, as Service Bus does with idle links; returns how many.
   */
  readonly detachLinks: Effect.Effect<number>
  /** Refuses the next `count` operations (sends, settlements, management requests). */
  readonly refuseNext: (
    count: number,
    options?: { readonly condition?: string }
  ) => Effect.Effect<void>
  /** Delays the next `count` operations (all of them when no count is given). */
  readonly delay: (duration: Duration.DurationInput, options?: { readonly count?: number }) => Effect.Effect<void>
  /** Expires the lock with this token (the SDK's `message.lockToken`) now; false if it is not held. */
  readonly expireLock: (lockToken: string) => Effect.Effect<boolean>
  /** Expires every lock held on an entity (or everywhere) now; returns how many. */
  readonly expireLocks: (entityPath?: string) => Effect.Effect<number>
  /** Turns off refusals and delays. */
  readonly reset: Effect.Effect<void>
}

/**
 * Entity administration while the emulator runs.
 *
 * @since 0.1.0
 * @category models
 */
export interface Admin {
  readonly createQueue: (options: QueueOptions) => Effect.Effect<void, EmulatorConfigError>
  readonly createTopic: (options: TopicOptions) => Effect.Effect<void, EmulatorConfigError>
  readonly createSubscription: (
    topicName: string,
    options: SubscriptionOptions
  ) => Effect.Effect<void, EmulatorConfigError>
  /** Message counts of a queue or subscription path (`orders`, `events/Subscriptions/audit`). */
  readonly counts: (entityPath: string) => Effect.Effect<EntityCounts, EntityNotFound>
}

/**
 * A running emulator.
 *
 * @since 0.1.0
 * @category models
 */
export interface Emulator {
  /**
   * `Endpoint=sb://127.0.0.1:PORT;SharedAccessKeyName=...;SharedAccessKey=...;UseDevelopmentEmulator=true`,
   * for `new ServiceBusClient(connectionString)`.
   */
  readonly connectionString: Redacted.Redacted<string>
  /** `sb://HOST:PORT/`. */
  readonly endpoint: string
  readonly host: string
  readonly port: number
  readonly faults: Faults
  readonly admin: Admin
}

/**
 * The emulator could not start (for instance, the port is taken).
 *
 * @since 0.1.0
 * @category errors
 */
export class EmulatorStartError extends Schema.TaggedError<EmulatorStartError>(
  "effect-eventually/EmulatorStartError"
)("EmulatorStartError", {
  host: Schema.String,
  port: Schema.Number,
  reason: Schema.String
}) {
  override get message(): string {
    return `The Service Bus emulator could not listen on ${this.host}:${this.port}: ${this.reason}. Use port 0 for a free port.`
  }
}

/**
 * An entity definition is invalid (bad duration, bad filter, duplicate name).
 *
 * @since 0.1.0
 * @category errors
 */
export class EmulatorConfigError extends Schema.TaggedError<EmulatorConfigError>(
  "effect-eventually/EmulatorConfigError"
)("EmulatorConfigError", {
  entity: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `The emulator entity "${this.entity}" is invalid: ${this.reason}`
  }
}

/**
 * No queue or subscription has this path.
 *
 * @since 0.1.0
 * @category errors
 */
export class EntityNotFound extends Schema.TaggedError<EntityNotFound>("effect-eventually/EntityNotFound")(
  "EntityNotFound",
  { entityPath: Schema.String }
) {
  override get message(): string {
    return `The emulator has no queue or subscription "${this.entityPath}": create it in the options, the config file or with admin.createQueue.`
  }
}

/**
 * The running emulator, as a service.
 *
 * @since 0.1.0
 * @category services
 */
export class ServiceBusEmulator extends Context.Tag("effect-eventually/emulator/ServiceBusEmulator")<
  ServiceBusEmulator,
  Emulator
>() {}

/**
 * The key name used when none is configured.
 *
 * @since 0.1.0
 * @category models
 */
export const defaultKeyName = "RootManageSharedAccessKey"

/**
 * The key put in the connection string when none is configured (any key is then accepted).
 *
 * @since 0.1.0
 * @category models
 */
export const defaultKey = "SAS_KEY_VALUE"

/**
 * Builds the connection string the official SDK uses for an emulator on `host:port`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const connectionStringFor = (
  host: string,
  port: number,
  keyName: string = defaultKeyName,
  key: string = defaultKey
): Redacted.Redacted<string> =>
  Redacted.make(
    `Endpoint=sb://${host}:${port};SharedAccessKeyName=${keyName};SharedAccessKey=${key};UseDevelopmentEmulator=true`
  )

const configError = (entity: string, error: unknown): EmulatorConfigError =>
  new EmulatorConfigError({
    entity,
    reason: error instanceof BrokerError ? error.description : error instanceof Error ? error.message : String(error)
  })

const addQueue = (server: EmulatorServer, options: QueueOptions): void => {
  server.broker.createQueue(options.name, settingsOf(options, options.name))
}

const addSubscription = (server: EmulatorServer, topic: TopicOptions | string, options: SubscriptionOptions): void => {
  const topicName = typeof topic === "string" ? topic : topic.name
  const path = `${topicName}/Subscriptions/${options.name}`
  const topicEntity = server.broker.topics.get(topicName.toLowerCase())
  const settings = settingsOf(
    {
      ...options,
      maxMessageSizeInKilobytes: topicEntity === undefined
        ? undefined
        : topicEntity.settings.maxMessageSizeBytes / 1024
    },
    path
  )
  server.broker.createSubscription(topicName, options.name, settings, rulesOf(options, path))
}

const addTopic = (server: EmulatorServer, options: TopicOptions): void => {
  server.broker.createTopic(options.name, settingsOf(options, options.name))
  for (const subscription of options.subscriptions ?? []) addSubscription(server, options, subscription)
}

/**
 * A running emulator plus a function that stops it, for code outside Effect (CLI, benchmarks,
 * test setup files).
 *
 * @since 0.1.0
 * @category models
 */
export interface RunningEmulator extends Emulator {
  readonly close: () => Promise<void>
}

/**
 * Starts the emulator with the Promise API.
 *
 * @since 0.1.0
 * @category constructors
 */
export const start = async (options: Options = {}): Promise<RunningEmulator> => {
  const host = options.host ?? "127.0.0.1"
  const keyName = options.sharedAccessKeyName ?? defaultKeyName
  const key = options.sharedAccessKey === undefined
    ? undefined
    : Redacted.isRedacted(options.sharedAccessKey)
    ? Redacted.value(options.sharedAccessKey)
    : options.sharedAccessKey
  const server = new EmulatorServer(
    {
      keys: key === undefined ? new Map() : new Map([[keyName, key]]),
      acceptJwt: options.acceptJwt ?? true
    },
    {
      transactionTimeoutMs: options.transactionTimeout === undefined
        ? 120_000
        : Duration.toMillis(Duration.decode(options.transactionTimeout)),
      maxTransactionOperations: options.maxTransactionOperations ?? 100,
      transactions: options.transactions ?? true
    }
  )
  try {
    for (const queue of options.queues ?? []) {
      try {
        addQueue(server, queue)
      } catch (error) {
        throw configError(queue.name, error)
      }
    }
    for (const topic of options.topics ?? []) {
      try {
        addTopic(server, topic)
      } catch (error) {
        throw configError(topic.name, error)
      }
    }
  } catch (error) {
    server.broker.close()
    throw error
  }
  let port: number
  try {
    port = await server.listen(host, options.port ?? 0)
  } catch (error) {
    server.broker.close()
    throw new EmulatorStartError({ host, port: options.port ?? 0, reason: String(error) })
  }
  const faults: Faults = {
    closeConnections: (o) => Effect.sync(() => server.closeConnections(o?.abrupt ?? false)),
    detachLinks: Effect.sync(() => server.detachLinks()),
    refuseNext: (count, o) =>
      Effect.sync(() => {
        server.faults.refuseRemaining = count
        server.faults.refuseCondition = o?.condition ?? Conditions.serverBusy
      }),
    delay: (duration, o) =>
      Effect.sync(() => {
        server.faults.delayMs = Duration.toMillis(Duration.decode(duration))
        server.faults.delayRemaining = o?.count ?? Number.POSITIVE_INFINITY
      }),
    expireLock: (lockToken) => Effect.sync(() => server.expireLock(lockToken)),
    expireLocks: (entityPath) => Effect.sync(() => server.expireLocks(entityPath)),
    reset: Effect.sync(() => {
      server.faults.refuseRemaining = 0
      server.faults.delayMs = 0
    })
  }
  const admin: Admin = {
    createQueue: (o) => Effect.try({ try: () => addQueue(server, o), catch: (e) => configError(o.name, e) }),
    createTopic: (o) => Effect.try({ try: () => addTopic(server, o), catch: (e) => configError(o.name, e) }),
    createSubscription: (topic, o) =>
      Effect.try({
        try: () => addSubscription(server, topic, o),
        catch: (e) => configError(`${topic}/Subscriptions/${o.name}`, e)
      }),
    counts: (entityPath) =>
      Effect.suspend(() => {
        const store = server.broker.findStore(entityPath)
        if (store === undefined) return Effect.fail(new EntityNotFound({ entityPath }))
        return Effect.succeed({ ...store.counts(), deadLettered: store.dlq?.all.size ?? 0 })
      })
  }
  return {
    connectionString: connectionStringFor(host, port, keyName, key ?? defaultKey),
    endpoint: `sb://${host}:${port}/`,
    host,
    port,
    faults,
    admin,
    close: () => server.close()
  }
}

/**
 * Starts the emulator for the lifetime of the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: Options = {}
): Effect.Effect<Emulator, EmulatorStartError | EmulatorConfigError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => start(options),
      catch: (error) =>
        error instanceof EmulatorStartError || error instanceof EmulatorConfigError
          ? error
          : new EmulatorStartError({
            host: options.host ?? "127.0.0.1",
            port: options.port ?? 0,
            reason: String(error)
          })
    }),
    (running) => Effect.promise(() => running.close())
  ).pipe(
    Effect.map(({ close: _close, ...emulator }) => emulator),
    Effect.withSpan("ServiceBusEmulator.make")
  )

/**
 * A layer that runs the emulator for as long as the layer is alive.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<ServiceBusEmulator, EmulatorStartError | EmulatorConfigError> =>
  Layer.scoped(ServiceBusEmulator, make(options))

/**
 * The Azure Service Bus client as a scoped resource: one AMQP connection to a namespace, shared
 * by the senders and receivers built on it, closed when its scope closes.
 *
 * Configuration: a connection string (`SERVICEBUS_CONNECTION_STRING`, redacted), or a fully
 * qualified namespace (`SERVICEBUS_NAMESPACE`) with a `TokenCredential` (`DefaultAzureCredential`
 * unless given). Secrets stay `Redacted` and never reach a log or an error message.
 *
 * Retries: the SDK's own retries are turned off (`maxRetries: 0`), so that one policy applies,
 * the `Schedule` in {@link ServiceBusClientOptions.retry} ({@link defaultRetry} by default), and
 * only to transient failures (`ServiceBusError.isTransient`). The SDK still enforces the
 * per-attempt `operationTimeout`.
 *
 * @since 0.1.0
 */
import type { TokenCredential } from "@azure/identity"
import type { RetryOptions, ServiceBusClientOptions as SdkClientOptions } from "@azure/service-bus"
import { parseServiceBusConnectionString, ServiceBusClient as SdkClient } from "@azure/service-bus"
import type { ConfigError, Scope } from "effect"
import { Config, Context, Duration, Effect, Layer, Option, Redacted, Schedule } from "effect"
import { closeWithin } from "./internal/closeWithin.js"
import { redact } from "./internal/serviceBusErrors.js"
import type { TransientError } from "./ServiceBusError.js"
import { ServiceBusFailure } from "./ServiceBusError.js"

/**
 * The retry policy for transient failures: exponential backoff from 200 ms, doubling, with
 * jitter, each delay capped at 10 seconds, at most 6 retries (about 20 s in all). Throttling
 * (`ServerBusy`) is covered by the same backoff.
 *
 * @since 0.1.0
 * @category models
 */
export const defaultRetry: Schedule.Schedule<unknown, TransientError> = Schedule.exponential("200 millis", 2).pipe(
  Schedule.either(Schedule.spaced("10 seconds")),
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(6)),
  Schedule.asVoid
)

/**
 * How long one SDK operation attempt may take before it fails with `OperationTimeout`.
 *
 * @since 0.1.0
 * @category models
 */
export const defaultOperationTimeout: Duration.Duration = Duration.seconds(60)

/**
 * Options of the client: a connection string, or a namespace with a credential.
 *
 * @since 0.1.0
 * @category models
 */
export interface ServiceBusClientOptions {
  /** `Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=...;SharedAccessKey=...`. */
  readonly connectionString?: Redacted.Redacted<string>
  /** `<namespace>.servicebus.windows.net` (a bare `<namespace>` gets that suffix), with `credential`. */
  readonly fullyQualifiedNamespace?: string
  /** Used with `fullyQualifiedNamespace`; `DefaultAzureCredential` when absent. */
  readonly credential?: TokenCredential
  /**
   * With `fullyQualifiedNamespace`: connect over plain TCP (no TLS), as to a local emulator. A
   * connection string says this with `UseDevelopmentEmulator=true`.
   */
  readonly useDevelopmentEmulator?: boolean
  /** The retry policy for transient failures of senders and receivers built on this client. */
  readonly retry?: Schedule.Schedule<unknown, TransientError>
  /** The time limit of one attempt of one SDK operation; 60 seconds by default. */
  readonly operationTimeout?: Duration.DurationInput
  /** Names the connection in the SDK's logs. */
  readonly identifier?: string
}

/**
 * A connected client.
 *
 * @since 0.1.0
 * @category models
 */
export interface ServiceBusClient {
  /** The SDK client, for what this library does not cover. */
  readonly sdk: SdkClient
  readonly fullyQualifiedNamespace: string
  readonly retry: Schedule.Schedule<unknown, TransientError>
  readonly operationTimeout: Duration.Duration
}

/**
 * @since 0.1.0
 * @category services
 */
export const ServiceBusClient: Context.Tag<ServiceBusClient, ServiceBusClient> = Context.GenericTag<ServiceBusClient>(
  "effect-eventually/ServiceBusClient"
)

/**
 * The SDK retry options this library runs with: no SDK retries (the library's `Schedule`
 * decides), and the given per-attempt timeout. Pass them to an SDK client given to
 * {@link fromClient}.
 *
 * @since 0.1.0
 * @category constructors
 */
export const sdkRetryOptions = (operationTimeout: Duration.DurationInput = defaultOperationTimeout): RetryOptions => ({
  maxRetries: 0,
  timeoutInMs: Duration.toMillis(operationTimeout)
})

const normalizeNamespace = (namespace: string): string => {
  const trimmed = namespace.trim().replace(/^sb:\/\//, "").replace(/\/+$/, "")
  return trimmed.includes(".") || trimmed.includes(":") ? trimmed : `${trimmed}.servicebus.windows.net`
}

const failure = (reason: string) => new ServiceBusFailure({ operation: "connect", reason })

const loadDefaultCredential = Effect.tryPromise({
  // Loaded only when needed: @azure/identity is large, and most tests and emulator runs do not use it.
  try: async (): Promise<TokenCredential> => new (await import("@azure/identity")).DefaultAzureCredential(),
  catch: (cause) => failure(`DefaultAzureCredential could not be created: ${redact(String(cause))}`)
})

const create = (options: ServiceBusClientOptions): Effect.Effect<SdkClient, ServiceBusFailure> =>
  Effect.gen(function*() {
    const sdkOptions: SdkClientOptions = {
      retryOptions: sdkRetryOptions(options.operationTimeout ?? defaultOperationTimeout)
    }
    if (options.identifier !== undefined) sdkOptions.identifier = options.identifier
    if (options.connectionString !== undefined) {
      if (options.fullyQualifiedNamespace !== undefined) {
        return yield* failure("give either a connection string or a namespace, not both")
      }
      const connectionString = options.connectionString
      return yield* Effect.try({
        try: () => new SdkClient(Redacted.value(connectionString), sdkOptions),
        catch: (cause) => failure(`invalid connection string: ${redact(String(cause))}`)
      })
    }
    if (options.fullyQualifiedNamespace === undefined) {
      return yield* failure(
        "no connection string and no namespace: set SERVICEBUS_CONNECTION_STRING or SERVICEBUS_NAMESPACE"
      )
    }
    const credential = options.credential ?? (yield* loadDefaultCredential)
    const namespace = normalizeNamespace(options.fullyQualifiedNamespace)
    // The SDK builds a connection string from the host it is given (`Endpoint=sb://<host>/;...`);
    // this is the only way to ask it for plain TCP with a token credential.
    const host = options.useDevelopmentEmulator === true
      ? `${namespace};UseDevelopmentEmulator=true;Unused=`
      : namespace
    return yield* Effect.try({
      try: () => new SdkClient(host, credential, sdkOptions),
      catch: (cause) => failure(`invalid namespace "${namespace}": ${redact(String(cause))}`)
    })
  })

const namespaceOf = (options: ServiceBusClientOptions, sdk: SdkClient): string => {
  if (options.connectionString !== undefined) {
    try {
      return parseServiceBusConnectionString(Redacted.value(options.connectionString)).fullyQualifiedNamespace
    } catch {
      return sdk.fullyQualifiedNamespace
    }
  }
  return options.fullyQualifiedNamespace === undefined
    ? sdk.fullyQualifiedNamespace
    : normalizeNamespace(options.fullyQualifiedNamespace)
}

/**
 * Creates a client for the lifetime of the scope; it is closed when the scope closes. The
 * connection opens lazily, on the first send or receive.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: ServiceBusClientOptions
): Effect.Effect<ServiceBusClient, ServiceBusFailure, Scope.Scope> =>
  Effect.acquireRelease(
    create(options),
    (sdk) => closeWithin(Effect.promise(() => sdk.close()), "10 seconds", "A Service Bus client")
  ).pipe(
    Effect.map((sdk): ServiceBusClient => ({
      sdk,
      fullyQualifiedNamespace: namespaceOf(options, sdk),
      retry: options.retry ?? defaultRetry,
      operationTimeout: Duration.decode(options.operationTimeout ?? defaultOperationTimeout)
    })),
    Effect.withSpan("ServiceBusClient.make")
  )

/**
 * Wraps an SDK client the caller owns: it is not closed by this library. Create it with
 * `retryOptions: sdkRetryOptions()` so that the SDK does not retry on top of the library's
 * `Schedule`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromClient = (
  sdk: SdkClient,
  options: {
    readonly retry?: Schedule.Schedule<unknown, TransientError>
    readonly operationTimeout?: Duration.DurationInput
  } = {}
): ServiceBusClient => ({
  sdk,
  fullyQualifiedNamespace: sdk.fullyQualifiedNamespace,
  retry: options.retry ?? defaultRetry,
  operationTimeout: Duration.decode(options.operationTimeout ?? defaultOperationTimeout)
})

/**
 * A layer with a client that lives as long as the layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: ServiceBusClientOptions): Layer.Layer<ServiceBusClient, ServiceBusFailure> =>
  Layer.scoped(ServiceBusClient, make(options))

/**
 * The client options read from the environment:
 *
 * - `SERVICEBUS_CONNECTION_STRING` (redacted), or
 * - `SERVICEBUS_NAMESPACE` (`<name>` or `<name>.servicebus.windows.net`), authenticated with
 *   `DefaultAzureCredential`.
 *
 * @since 0.1.0
 * @category models
 */
export const config: Config.Config<ServiceBusClientOptions> = Config.all({
  connectionString: Config.option(
    Config.redacted("SERVICEBUS_CONNECTION_STRING").pipe(
      Config.withDescription(
        "Service Bus connection string (Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...)"
      )
    )
  ),
  fullyQualifiedNamespace: Config.option(
    Config.string("SERVICEBUS_NAMESPACE").pipe(
      Config.withDescription("Service Bus namespace, used with DefaultAzureCredential when no connection string is set")
    )
  )
}).pipe(
  // A connection string is the more specific setting: when both are set, it wins.
  Config.map(({ connectionString, fullyQualifiedNamespace }): ServiceBusClientOptions =>
    Option.isSome(connectionString)
      ? { connectionString: connectionString.value }
      : Option.isSome(fullyQualifiedNamespace)
      ? { fullyQualifiedNamespace: fullyQualifiedNamespace.value }
      : {}
  )
)

/**
 * A layer with a client configured by `Config` values (each field may be a `Config`); see
 * {@link config} for the environment variables.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config.Wrap<ServiceBusClientOptions>
): Layer.Layer<ServiceBusClient, ServiceBusFailure | ConfigError.ConfigError> =>
  Layer.scoped(
    ServiceBusClient,
    Effect.flatMap(Config.unwrap(options), make)
  )

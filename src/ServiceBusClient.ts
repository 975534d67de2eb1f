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
import { onDisconnected } from "./internal/sdkConnection.js"
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
  /**
   * The SDK client, for what this library does not cover. A client made by {@link make}
   * replaces it when its connection drops (the SDK's own reconnection can wait for the
   * operation timeout): read it when it is needed rather than keeping it.
   */
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

// How to build the SDK client: the options checked and the credential resolved once, so that a
// client can be built again (after a dropped connection) without an effect.
const builder = (options: ServiceBusClientOptions): Effect.Effect<() => SdkClient, ServiceBusFailure> =>
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
      return () => new SdkClient(Redacted.value(connectionString), sdkOptions)
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
    return () => new SdkClient(host, credential, sdkOptions)
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
  Effect.gen(function*() {
    const build = yield* builder(options)
    const closeSdk = (sdk: SdkClient, what: string) =>
      closeWithin(Effect.promise(() => sdk.close()), "10 seconds", what)
    // The first one is built here, so that whatever the SDK refuses fails the effect.
    let current = yield* Effect.try({
      try: build,
      catch: (cause) =>
        failure(
          options.connectionString !== undefined
            ? `invalid connection string: ${redact(String(cause))}`
            : `invalid namespace "${options.fullyQualifiedNamespace}": ${redact(String(cause))}`
        )
    })
    let closed = false
    // Once the connection drops, the next call gets a new SDK client (and a new connection) and
    // the old one is closed in the background: the ports see the change and move their links.
    const watch = (sdk: SdkClient) =>
      onDisconnected(sdk, () => {
        if (closed || current !== sdk) return
        try {
          current = build()
        } catch {
          // Built once already with the same options: not expected. The SDK reconnects then.
          return
        }
        watch(current)
        Effect.runFork(closeSdk(sdk, "A replaced Service Bus client"))
      })
    watch(current)
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        closed = true
        return closeSdk(current, "A Service Bus client")
      })
    )
    const client: ServiceBusClient = {
      get sdk() {
        return current
      },
      fullyQualifiedNamespace: namespaceOf(options, current),
      retry: options.retry ?? defaultRetry,
      operationTimeout: Duration.decode(options.operationTimeout ?? defaultOperationTimeout)
    }
    return client
  }).pipe(Effect.withSpan("ServiceBusClient.make"))

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

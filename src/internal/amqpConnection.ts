// One AMQP connection to a Service Bus namespace, opened with `@azure/core-amqp` (connection
// string parsing, TLS or plain TCP, claims-based security) and handed out as raw rhea objects, so
// that the transaction extension can hook the session it runs on.
//
// Claims-based security: a token is put on `$cbs` for every entity path before a link to it is
// attached, and put again before it expires (SAS tokens from the connection string's key, or
// JWTs from a `TokenCredential` with the `https://servicebus.azure.net/.default` scope).
import {
  ConnectionConfig,
  ConnectionContextBase,
  createSasTokenProvider,
  type SasTokenProvider,
  TokenType,
  translate
} from "@azure/core-amqp"
import type { AccessToken, TokenCredential } from "@azure/identity"
import type { Scope } from "effect"
import { Deferred, Duration, Effect, Either, Redacted } from "effect"
import type { Connection as RheaConnection, EventContext, Session } from "rhea"
import { ConnectionLost, OperationTimeout, ServiceBusFailure } from "../ServiceBusError.js"
import type { ServiceError } from "../ServiceBusError.js"
import { coalesceWrites } from "./amqp/coalesceWrites.js"
import { closeWithin } from "./closeWithin.js"
import { fromSdkError, redact } from "./serviceBusErrors.js"

/** How to reach and authenticate to a namespace. */
export type ConnectionOptions =
  | { readonly connectionString: Redacted.Redacted<string> }
  | {
    /** `<namespace>.servicebus.windows.net`, or `host:port` for an emulator. */
    readonly fullyQualifiedNamespace: string
    readonly credential: TokenCredential
    /** Plain TCP instead of TLS (a local emulator). */
    readonly useDevelopmentEmulator?: boolean
  }

/** The scope of a Service Bus data-plane token for a `TokenCredential`. */
export const serviceBusScope = "https://servicebus.azure.net/.default"

export interface AmqpConnection {
  readonly host: string
  readonly connection: RheaConnection
  /** Puts a token for the entity path on `$cbs` (and keeps it fresh while the connection lives). */
  readonly authorize: (entityPath: string) => Effect.Effect<void, ServiceError>
  /** Begins a new session on the connection; it ends with the scope. */
  readonly openSession: Effect.Effect<Session, ServiceError, Scope.Scope>
  /** Fails with `ConnectionLost` once the connection has dropped or been closed by the peer. */
  readonly lost: Effect.Effect<never, ConnectionLost>
  readonly isLost: () => boolean
  /**
   * Calls `f` once with the error when the connection is lost (at once when it already is);
   * returns a function that stops listening. For waits written as callbacks, with no fiber.
   */
  readonly onLost: (f: (error: ConnectionLost) => void) => () => void
}

interface Credentials {
  readonly config: ConnectionConfig
  readonly getToken: (audience: string) => Promise<AccessToken | null>
  readonly tokenType: TokenType
}

const failure = (reason: string) => new ServiceBusFailure({ operation: "connect", reason })

const splitHostPort = (namespace: string): { readonly host: string; readonly port: number | undefined } => {
  const trimmed = namespace.trim().replace(/^sb:\/\//, "").replace(/\/+$/, "")
  const match = /^(.*):(\d+)$/.exec(trimmed)
  const host = match === null ? trimmed : match[1]
  return {
    host: host.includes(".") || host.includes(":") || host === "localhost" ? host : `${host}.servicebus.windows.net`,
    port: match === null ? undefined : Number(match[2])
  }
}

const credentialsOf = (options: ConnectionOptions): Either.Either<Credentials, ServiceBusFailure> => {
  if ("connectionString" in options) {
    const connectionString = Redacted.value(options.connectionString)
    try {
      const config = ConnectionConfig.create(connectionString)
      ConnectionConfig.validate(config)
      const provider: SasTokenProvider = isSharedAccessSignature(connectionString)
        ? createSasTokenProvider({ sharedAccessSignature: sasOf(connectionString) })
        : createSasTokenProvider({
          sharedAccessKeyName: config.sharedAccessKeyName,
          sharedAccessKey: config.sharedAccessKey
        })
      return Either.right({
        config,
        getToken: (audience) => provider.getToken(audience),
        tokenType: TokenType.CbsTokenTypeSas
      })
    } catch (error) {
      return Either.left(failure(`invalid connection string: ${redact(String(error))}`))
    }
  }
  const { host, port } = splitHostPort(options.fullyQualifiedNamespace)
  // core-amqp validates a key name and key; with a credential they are placeholders that are
  // never used to sign anything (the connection opens with SASL ANONYMOUS).
  const endpoint = `sb://${port === undefined ? host : `${host}:${port}`}/`
  const config: ConnectionConfig = {
    connectionString: `Endpoint=${endpoint};SharedAccessKeyName=credential;SharedAccessKey=unused`,
    endpoint,
    host,
    sharedAccessKeyName: "credential",
    sharedAccessKey: "unused",
    useDevelopmentEmulator: options.useDevelopmentEmulator === true,
    ...(port === undefined ? {} : { port })
  }
  const credential = options.credential
  return Either.right({
    config,
    getToken: () => credential.getToken(serviceBusScope),
    tokenType: TokenType.CbsTokenTypeJwt
  })
}

const isSharedAccessSignature = (connectionString: string): boolean =>
  /(^|;)\s*SharedAccessSignature=/i.test(connectionString)

const sasOf = (connectionString: string): string => /SharedAccessSignature=([^;]+)/.exec(connectionString)?.[1] ?? ""

/** Classifies an AMQP, core-amqp or socket error as a service error. */
export const serviceError = (operation: string, entity?: string) => (cause: unknown): ServiceError => {
  const translated = cause instanceof Error || (typeof cause === "object" && cause !== null)
    ? translate(cause as Error)
    : cause
  const error = fromSdkError(translated, { operation, entity })
  switch (error._tag) {
    case "MessageLockLost":
    case "SessionLockLost":
    case "MessageNotFound":
    case "MessageTooLarge":
      return new ServiceBusFailure({ operation, entity, code: error._tag, reason: error.message })
    default:
      return error
  }
}

/**
 * Runs `effect` until it ends, the connection is lost, or the timeout passes. Both sides run
 * interruptibly in their own fibers, so this works inside uninterruptible regions (a commit, the
 * acquisition of a resource) without making the caller interruptible from outside.
 */
export const guarded = <A, E, R, E2>(
  effect: Effect.Effect<A, E, R>,
  lost: Effect.Effect<never, ConnectionLost>,
  timeout: Duration.Duration,
  onTimeout: () => E2
): Effect.Effect<A, E | E2 | ConnectionLost, R> =>
  Effect.raceFirst(
    Effect.interruptible(Effect.timeoutFail(effect, { duration: timeout, onTimeout })),
    Effect.interruptible(lost)
  )

const awaitSessionOpen = (session: Session) =>
  Effect.async<void, ServiceError>((resume) => {
    if (session.is_remote_open()) return resume(Effect.void)
    const onOpen = () => {
      cleanup()
      resume(Effect.void)
    }
    const onFail = (ctx: EventContext) => {
      cleanup()
      const error = ctx.session?.error
      resume(Effect.fail(
        error === undefined
          ? new ConnectionLost({ operation: "begin session", reason: "the session was refused" })
          : serviceError("begin session")(error)
      ))
    }
    const cleanup = () => {
      session.removeListener("session_open", onOpen)
      session.removeListener("session_close", onFail)
      session.removeListener("session_error", onFail)
    }
    session.on("session_open", onOpen)
    session.on("session_close", onFail)
    session.on("session_error", onFail)
    return Effect.sync(cleanup)
  })

const setNoDelay = (connection: RheaConnection): void => {
  const socket = (connection as unknown as { readonly socket?: { setNoDelay?: (noDelay: boolean) => unknown } }).socket
  if (typeof socket?.setNoDelay === "function") socket.setNoDelay(true)
}

// Refresh a token this long before it expires, as the SDK does.
const refreshMargin = Duration.minutes(5)

type Obj = Record<PropertyKey, unknown>
const isObj = (u: unknown): u is Obj => typeof u === "object" && u !== null

/** Opens the connection (and the CBS links) for the lifetime of the scope. */
export const make = (
  options: ConnectionOptions,
  settings: { readonly operationTimeout: Duration.Duration }
): Effect.Effect<AmqpConnection, ServiceError, Scope.Scope> =>
  Effect.gen(function*() {
    const credentials = yield* credentialsOf(options)
    const timeoutInMs = Duration.toMillis(settings.operationTimeout)
    const context = yield* Effect.try({
      try: () =>
        ConnectionContextBase.create({
          config: credentials.config,
          connectionProperties: {
            product: "effect-eventually",
            version: "0.1.0",
            userAgent: "effect-eventually/0.1.0"
          },
          operationTimeoutInMs: timeoutInMs
        }),
      catch: (error) => failure(redact(String(error)))
    })
    const promiseConnection = context.connection
    yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: (signal) => promiseConnection.open({ abortSignal: signal }),
        catch: serviceError("connect")
      }).pipe(Effect.timeoutFail({
        duration: settings.operationTimeout,
        onTimeout: () => new ConnectionLost({ operation: "connect", reason: "the connection did not open in time" })
      })),
      () =>
        closeWithin(
          Effect.promise(() => context.cbsSession.close().catch(() => undefined)).pipe(
            Effect.zipRight(Effect.promise(() => promiseConnection.close().catch(() => undefined)))
          ),
          "10 seconds",
          "An AMQP connection"
        )
    )
    // rhea-promise keeps rhea's connection in `_connection`; the transaction extension needs the
    // rhea session itself.
    const raw = (promiseConnection as unknown as Obj)._connection
    if (!isObj(raw) || typeof raw.create_session !== "function") {
      return yield* failure("rhea-promise no longer exposes its rhea connection as _connection")
    }
    const connection = raw as unknown as RheaConnection
    // rhea leaves Nagle's algorithm on for client sockets: a transaction's writes (declare,
    // transfers and dispositions, discharge) would wait for the peer's delayed ACKs.
    setNoDelay(connection)
    // The frames written in one tick (a transaction's transfers and dispositions, a discharge
    // and the next declare) go out in one system call instead of one each.
    coalesceWrites(connection)

    const lostSignal = yield* Deferred.make<never, ConnectionLost>()
    let isLost = false
    let lostError: ConnectionLost | undefined
    const lostListeners = new Set<(error: ConnectionLost) => void>()
    const onLost = (reason: string, code?: string) => {
      if (isLost) return
      isLost = true
      const error = new ConnectionLost({ operation: "transaction", reason, ...(code === undefined ? {} : { code }) })
      lostError = error
      Deferred.unsafeDone(lostSignal, Effect.fail(error))
      const listeners = [...lostListeners]
      lostListeners.clear()
      for (const listener of listeners) listener(error)
    }
    const subscribeLost = (f: (error: ConnectionLost) => void): () => void => {
      if (lostError !== undefined) {
        f(lostError)
        return () => undefined
      }
      lostListeners.add(f)
      return () => {
        lostListeners.delete(f)
      }
    }
    const onDisconnected = (ctx: EventContext) => {
      const error = ctx.error as { message?: string; code?: string } | undefined
      onLost(`the connection dropped${error?.message ? ` (${redact(error.message)})` : ""}`, error?.code)
    }
    const onClose = (ctx: EventContext) => {
      const error = ctx.connection?.error as { condition?: string; description?: string } | undefined
      onLost(
        `the namespace closed the connection${error?.description ? ` (${error.description})` : ""}`,
        error?.condition
      )
    }
    connection.on("disconnected", onDisconnected)
    connection.on("connection_close", onClose)
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        connection.removeListener("disconnected", onDisconnected)
        connection.removeListener("connection_close", onClose)
      })
    )
    const lost = Deferred.await(lostSignal)
    // Dropped between the open and the listeners above: nothing would tell otherwise.
    if (!connection.is_open()) onLost("the connection dropped while it opened")

    // The claims-based security link and the claims go over this connection: a drop must fail
    // them at once (the caller starts again on a new connection), not after the timeout.
    const whileConnected = <A, E>(effect: Effect.Effect<A, E>, operation: string, entityPath?: string) =>
      guarded(effect, lost, settings.operationTimeout, () =>
        new OperationTimeout({
          operation,
          ...(entityPath === undefined ? {} : { entity: entityPath }),
          reason: `no answer within ${Duration.format(settings.operationTimeout)}`
        }))

    yield* whileConnected(
      Effect.tryPromise({
        try: (signal) => context.cbsSession.init({ abortSignal: signal, timeoutInMs }),
        catch: serviceError("connect")
      }),
      "connect"
    )

    const putToken = (entityPath: string) =>
      Effect.gen(function*() {
        const audience = `${credentials.config.endpoint}${entityPath}`
        const token = yield* Effect.tryPromise({
          try: () => credentials.getToken(audience),
          catch: (error) => failure(`the credential gave no token: ${redact(String(error))}`)
        })
        if (token === null) return yield* failure("the credential gave no token")
        yield* whileConnected(
          Effect.tryPromise({
            try: (signal) =>
              context.cbsSession.negotiateClaim(audience, token.token, credentials.tokenType, {
                abortSignal: signal,
                timeoutInMs
              }),
            catch: serviceError("authorize", entityPath)
          }),
          "authorize",
          entityPath
        )
        // core-amqp's SAS tokens give their expiry in seconds, credentials in milliseconds; a
        // shared access signature from the connection string gives 0 (it cannot be renewed).
        const expires = token.expiresOnTimestamp
        return expires <= 0 ? undefined : expires < 1e12 ? expires * 1000 : expires
      }).pipe(Effect.withSpan("AmqpConnection.putToken", { attributes: { entityPath } }))

    const scope = yield* Effect.scope
    const authorized = new Set<string>()
    const authorize = (entityPath: string): Effect.Effect<void, ServiceError> =>
      Effect.suspend(() => {
        if (authorized.has(entityPath)) return Effect.void
        return putToken(entityPath).pipe(
          Effect.tap((expiresOn) => {
            authorized.add(entityPath)
            const refresh = (expires: number | undefined): Effect.Effect<void> =>
              expires === undefined ?
                Effect.void :
                Effect.sleep(
                  Duration.millis(Math.max(1_000, expires - Date.now() - Duration.toMillis(refreshMargin)))
                ).pipe(
                  Effect.zipRight(putToken(entityPath)),
                  Effect.flatMap(refresh),
                  Effect.catchAllCause((cause) => Effect.logWarning("Service Bus token refresh failed", cause))
                )
            // Explicitly interruptible: an entity is often first authorized inside an
            // uninterruptible region (a commit's first send to a destination), and a fiber forked
            // there inherits it, so closing the scope would wait for the refresh's sleep (hours).
            return Effect.forkIn(Effect.interruptible(refresh(expiresOn)), scope)
          }),
          Effect.asVoid
        )
      })

    const openSession: Effect.Effect<Session, ServiceError, Scope.Scope> = Effect.acquireRelease(
      Effect.sync(() => {
        const session = connection.create_session()
        session.begin()
        return session
      }),
      (session) =>
        Effect.sync(() => {
          // Errors after this point are the connection's; swallow them so rhea does not escalate.
          session.on("session_error", () => undefined)
          session.on("session_close", () => undefined)
          if (!isLost && session.is_open()) session.close()
        })
    ).pipe(
      Effect.tap((session) =>
        guarded(
          awaitSessionOpen(session),
          lost,
          settings.operationTimeout,
          () => new ConnectionLost({ operation: "begin session", reason: "the session did not open in time" })
        )
      )
    )

    return {
      host: credentials.config.host,
      connection,
      authorize,
      openSession,
      lost,
      isLost: () => isLost,
      onLost: subscribeLost
    }
  })

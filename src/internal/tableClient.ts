// What the Azure Table adapters (event store, projection store) share: building the SDK client,
// classifying its failures, and sending requests with a timeout per attempt and transient
// failures retried under a `Schedule`. Definite answers from the service (404, 409, 412, 403,
// ...) are values, not errors, so each operation decides what they mean.
import type { TableServiceClientOptions } from "@azure/data-tables"
import { TableClient } from "@azure/data-tables"
import type { TokenCredential } from "@azure/identity"
import type { Redacted } from "effect"
import { Config, ConfigError, Duration, Effect, Either, Option, Redacted as R, Schedule } from "effect"

/**
 * Both adapters' policy: exponential backoff from 100 ms with jitter, no wait over 2 seconds, at
 * most 5 retries. The schedule never looks at its input.
 */
export const defaultRetrySchedule: Schedule.Schedule<unknown, unknown> = Schedule.exponential("100 millis", 2).pipe(
  Schedule.jittered,
  // `union` keeps the shorter delay: no wait is ever longer than 2 seconds.
  Schedule.union(Schedule.spaced("2 seconds")),
  Schedule.intersect(Schedule.recurs(5))
)

// Client construction

export interface ClientOptions {
  readonly tableName: string
  readonly connectionString?: Redacted.Redacted<string> | undefined
  readonly accountUrl?: string | undefined
  readonly credential?: TokenCredential | undefined
}

// Table names: 3 to 63 letters and digits, starting with a letter.
const tableNamePattern = /^[A-Za-z][A-Za-z0-9]{2,62}$/

const settingsOf = (connectionString: string): Map<string, string> => {
  const settings = new Map<string, string>()
  for (const part of connectionString.split(";")) {
    const index = part.indexOf("=")
    if (index > 0) settings.set(part.slice(0, index).trim().toLowerCase(), part.slice(index + 1).trim())
  }
  return settings
}

// Plain HTTP is only used by emulators (Azurite); the SDK refuses it unless told otherwise.
const isInsecureConnectionString = (connectionString: string): boolean => {
  const settings = settingsOf(connectionString)
  const endpoint = settings.get("tableendpoint")
  if (endpoint !== undefined) return endpoint.toLowerCase().startsWith("http:")
  return settings.get("usedevelopmentstorage")?.toLowerCase() === "true" ||
    settings.get("defaultendpointsprotocol")?.toLowerCase() === "http"
}

// The SDK's own retries are turned off: the adapter's `Schedule` is the single retry policy, so
// attempts, delays and which failures are retried are decided in one place.
const sdkOptions = (allowInsecureConnection: boolean): TableServiceClientOptions => ({
  allowInsecureConnection,
  retryOptions: { maxRetries: 0 }
})

type PipelinePolicy = Parameters<TableClient["pipeline"]["addPolicy"]>[0]

// Every request of a client built here carries the timeout; the SDK's HTTP client aborts it.
const timeoutPolicy = (timeoutMillis: number): PipelinePolicy => ({
  name: "effectEventuallyTimeout",
  sendRequest: (request, next) => {
    request.timeout = timeoutMillis
    return next(request)
  }
})

/**
 * A client for the table, with the timeout on every request; fails with the reason of a bad
 * configuration (never quoting a secret).
 */
export const makeClient = (options: ClientOptions, timeout: Duration.Duration): Effect.Effect<TableClient, string> =>
  Effect.map(
    Effect.gen(function*() {
      const tableName = options.tableName
      if (!tableNamePattern.test(tableName)) {
        return yield* Effect.fail(
          `table name ${JSON.stringify(tableName)} is invalid: use 3 to 63 letters and digits, starting with a letter`
        )
      }
      if (options.connectionString !== undefined) {
        const connectionString = R.value(options.connectionString)
        return yield* Effect.try({
          try: () =>
            TableClient.fromConnectionString(
              connectionString,
              tableName,
              sdkOptions(isInsecureConnectionString(connectionString))
            ),
          // The SDK's message could quote the secret: keep a fixed one.
          catch: () => "the connection string is malformed"
        })
      }
      if (options.accountUrl !== undefined) {
        const accountUrl = options.accountUrl
        let url: URL
        try {
          url = new URL(accountUrl)
        } catch {
          return yield* Effect.fail(`the account URL ${JSON.stringify(accountUrl)} is malformed`)
        }
        const credential = options.credential ?? (yield* Effect.tryPromise({
          // Loaded on demand: @azure/identity is large, and connection strings do not need it.
          try: () => import("@azure/identity").then(({ DefaultAzureCredential }) => new DefaultAzureCredential()),
          catch: (cause) => `DefaultAzureCredential could not be created: ${String(cause)}`
        }))
        return new TableClient(accountUrl, tableName, credential, sdkOptions(url.protocol === "http:"))
      }
      return yield* Effect.fail("set either connectionString or accountUrl")
    }),
    (client) => {
      client.pipeline.addPolicy(timeoutPolicy(Duration.toMillis(timeout)))
      return client
    }
  )

// Failures

export interface Rejection {
  readonly status: number | undefined
  readonly code: string | undefined
  readonly message: string
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null

export type SignalOptions = { readonly abortSignal?: AbortSignal }

const isAbortError = (cause: unknown): boolean => isRecord(cause) && cause.name === "AbortError"

// Azurite and some SDK paths put the service's error code in `details` or only in the header.
const errorCode = (error: Record<string, unknown>): string | undefined => {
  if (typeof error.code === "string") return error.code
  const details = error.details
  if (isRecord(details)) {
    if (typeof details.errorCode === "string") return details.errorCode
    if (isRecord(details.odataError) && typeof details.odataError.code === "string") return details.odataError.code
  }
  const response = error.response
  if (isRecord(response) && isRecord(response.headers) && typeof response.headers.get === "function") {
    const header: unknown = (response.headers.get as (name: string) => unknown)("x-ms-error-code")
    if (typeof header === "string") return header
  }
  return undefined
}

const transientStatuses: ReadonlySet<number> = new Set([408, 429, 500, 502, 503, 504])

const transientCodes: ReadonlySet<string> = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "ETIMEDOUT",
  "EPIPE",
  "EAI_AGAIN",
  "ENETUNREACH",
  "EHOSTUNREACH",
  "REQUEST_SEND_ERROR"
])

const firstLine = (text: string): string => {
  const index = text.indexOf("\n")
  return (index === -1 ? text : text.slice(0, index)).trim()
}

// Some answers reach the SDK's error as the raw OData error body: take its code and message out.
const fromODataBody = (message: string): { readonly code?: string; readonly message: string } => {
  if (!message.startsWith("{")) return { message }
  try {
    const body: unknown = JSON.parse(message)
    const error = isRecord(body) ? body["odata.error"] : undefined
    if (!isRecord(error)) return { message }
    const text = isRecord(error.message) && typeof error.message.value === "string" ? error.message.value : message
    return typeof error.code === "string" ? { code: error.code, message: text } : { message: text }
  } catch {
    return { message }
  }
}

export const classify = (cause: unknown): Rejection & { readonly transient: boolean } => {
  const error = isRecord(cause) ? cause : {}
  const status = typeof error.statusCode === "number" ? error.statusCode : undefined
  const body = fromODataBody(typeof error.message === "string" ? error.message : String(cause))
  const code = errorCode(error) ?? body.code
  const message = firstLine(body.message)
  const transient = status === undefined
    ? (code !== undefined && transientCodes.has(code)) || /socket hang up/i.test(message)
    : transientStatuses.has(status)
  return { transient, status, code, message }
}

export const codeOf = (rejection: Pick<Rejection, "status" | "code">): string | undefined =>
  rejection.code ?? (rejection.status === undefined ? undefined : String(rejection.status))

export const isTableMissing = (rejection: Rejection): boolean => rejection.code === "TableNotFound"

// A 404 that is not about the table is about the entity.
export const isEntityMissing = (rejection: Rejection): boolean => rejection.status === 404 && !isTableMissing(rejection)

// Requests

/** A request's outcome: the SDK's answer or a definite rejection; `E` when transient failures outlast the schedule. */
export type Answer<A, E> = Effect.Effect<Either.Either<A, Rejection>, E>

export type Request<C, E> = <A>(
  operation: string,
  context: C,
  send: (options: SignalOptions) => Promise<A>
) => Answer<A, E>

export interface RequestOptions<C, E> {
  readonly timeout: Duration.Duration
  /** The client carries the timeout in its pipeline (built by `makeClient`); otherwise a signal aborts requests. */
  readonly pipelineTimeout: boolean
  readonly schedule: Schedule.Schedule<unknown, E>
  /** The error of a transient failure: `code` is `"Timeout"` when no answer came in time. */
  readonly unavailable: (operation: string, context: C, code: string | undefined, reason: string) => E
  /** Logged at debug level with each transient failure that is retried. */
  readonly retryMessage: string
}

const sendSafely = <A>(send: (options: SignalOptions) => Promise<A>, options: SignalOptions): Promise<A> => {
  try {
    return send(options)
  } catch (cause) {
    return Promise.reject(cause)
  }
}

/**
 * Every SDK call goes through the `request` made here: a timeout per attempt, failures classified
 * once, transient ones retried under the schedule with the semantics of `Effect.retry`.
 */
export const makeRequest = <C, E extends { readonly message: string }>(
  options: RequestOptions<C, E>
): Request<C, E> => {
  const { pipelineTimeout, retryMessage, schedule, unavailable } = options
  const timeoutMillis = Duration.toMillis(options.timeout)
  const timeoutReason = `no answer within ${Duration.format(options.timeout)}`

  // A failed attempt: a definite answer becomes a value; a transient failure goes to `retry`.
  const failed = <A>(
    operation: string,
    context: C,
    timedOut: boolean,
    cause: unknown,
    retry: (error: E) => Answer<A, E>
  ): Answer<A, E> => {
    if (timedOut) return retry(unavailable(operation, context, "Timeout", timeoutReason))
    const error = classify(cause)
    return error.transient
      ? retry(unavailable(operation, context, codeOf(error), error.message))
      : Effect.succeed(Either.left(error))
  }

  // One attempt. On a client built by `makeClient`, the HTTP pipeline enforces the timeout while
  // the request waits for an answer (see `timeoutPolicy`), and a timer here covers the rest (a
  // body that stalls): the request needs no abort signal and the effect no canceller, which keeps
  // the common path lean. An interrupted attempt then ends on its own within the timeout, its
  // answer dropped. On a caller's client, a timer aborts the request through a signal, and
  // interruption aborts it too.
  const attempt = <A>(
    operation: string,
    context: C,
    send: (options: SignalOptions) => Promise<A>,
    retry: (error: E) => Answer<A, E>
  ): Answer<A, E> =>
    pipelineTimeout
      ? Effect.async<Either.Either<A, Rejection>, E>((resume) => {
        let done = false
        const timer = setTimeout(() => {
          done = true
          resume(retry(unavailable(operation, context, "Timeout", timeoutReason)))
        }, timeoutMillis)
        timer.unref()
        sendSafely(send, {}).then(
          (value) => {
            if (done) return
            clearTimeout(timer)
            resume(Effect.succeed(Either.right(value)))
          },
          (cause: unknown) => {
            if (done) return
            clearTimeout(timer)
            resume(failed(operation, context, isAbortError(cause), cause, retry))
          }
        )
      })
      : Effect.async<Either.Either<A, Rejection>, E>((resume) => {
        const controller = new AbortController()
        let timedOut = false
        const timer = setTimeout(() => {
          timedOut = true
          controller.abort()
        }, timeoutMillis)
        sendSafely(send, { abortSignal: controller.signal }).then(
          (value) => {
            clearTimeout(timer)
            resume(Effect.succeed(Either.right(value)))
          },
          (cause: unknown) => {
            clearTimeout(timer)
            resume(failed(operation, context, timedOut, cause, retry))
          }
        )
        return Effect.sync(() => {
          clearTimeout(timer)
          controller.abort()
        })
      })

  // The schedule is only started on a first transient failure, from inside the failed attempt,
  // so an attempt that succeeds pays for nothing more.
  const request = <A>(operation: string, context: C, send: (options: SignalOptions) => Promise<A>): Answer<A, E> =>
    attempt(operation, context, send, (first) =>
      Effect.flatMap(Schedule.driver(schedule), (driver) => {
        const retry = (error: E): Answer<A, E> =>
          Effect.logDebug(retryMessage, error.message).pipe(
            Effect.zipRight(driver.next(error)),
            Effect.matchEffect({
              onFailure: () => Effect.fail(error),
              onSuccess: () => attempt(operation, context, send, retry)
            })
          )
        return retry(first)
      }))
  return request
}

// Configuration

export interface ConfiguredAccount {
  readonly connectionString?: Redacted.Redacted<string>
  readonly accountUrl?: string
  readonly tableName: string
}

/**
 * Where the account is, from the variables both stores share (`AZURE_STORAGE_CONNECTION_STRING`,
 * `AZURE_STORAGE_ACCOUNT_URL`), and the store's own table variable.
 */
export const accountConfig = (table: {
  readonly variable: string
  readonly defaultName: string
  readonly description: string
  /** "event store", "projection store": who needs the account, in the error. */
  readonly store: string
}): Config.Config<ConfiguredAccount> =>
  Config.all({
    connectionString: Config.redacted("AZURE_STORAGE_CONNECTION_STRING").pipe(
      Config.withDescription("Connection string of the storage account (takes precedence over the account URL)."),
      Config.option
    ),
    accountUrl: Config.string("AZURE_STORAGE_ACCOUNT_URL").pipe(
      Config.withDescription(
        "Table endpoint of the storage account, https://<account>.table.core.windows.net, used with DefaultAzureCredential."
      ),
      Config.option
    ),
    tableName: Config.string(table.variable).pipe(
      Config.withDefault(table.defaultName),
      Config.withDescription(table.description)
    )
  }).pipe(
    Config.mapOrFail(({ accountUrl, connectionString, tableName }): Either.Either<
      ConfiguredAccount,
      ConfigError.ConfigError
    > => {
      if (Option.isSome(connectionString)) return Either.right({ connectionString: connectionString.value, tableName })
      if (Option.isSome(accountUrl)) return Either.right({ accountUrl: accountUrl.value, tableName })
      return Either.left(
        ConfigError.MissingData(
          [],
          `The ${table.store} needs AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL`
        )
      )
    })
  )

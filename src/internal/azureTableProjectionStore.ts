import type { TableClient } from "@azure/data-tables"
import { Config, ConfigError, Duration, Effect, Either, Option, Schedule } from "effect"
import type * as EventStoreApi from "../AzureTableEventStore.js"
import type * as Api from "../AzureTableProjectionStore.js"
import { DocumentConflict, ProjectionStoreFailure, ProjectionStoreUnavailable } from "../ProjectionError.js"
import type { GetError, ProjectionStoreService, PutError, StoredDocument } from "../ProjectionStore.js"
import { Revision } from "../ProjectionStore.js"
import type { Rejection } from "./azureTableEventStore.js"
import {
  classify,
  codeOf,
  defaultRetrySchedule as eventStoreRetry,
  isEntityMissing,
  makeClient
} from "./azureTableEventStore.js"
import * as Layout from "./projectionLayout.js"
import type { StoredRow } from "./tableLayout.js"

export const defaultTableName = "projections"
export const defaultTimeout: Duration.Duration = Duration.seconds(30)

// The event store's policy: both talk to the same service with the same limits. Its input type
// is the event store's error, which the schedule never looks at.
export const defaultRetrySchedule: Schedule.Schedule<unknown, ProjectionStoreUnavailable> =
  eventStoreRetry as Schedule.Schedule<unknown, unknown>

export const config: Config.Config<Api.Options> = Config.all({
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
  tableName: Config.string("PROJECTION_TABLE").pipe(
    Config.withDefault(defaultTableName),
    Config.withDescription("Name of the table holding the projection documents.")
  )
}).pipe(
  Config.mapOrFail(({ accountUrl, connectionString, tableName }): Either.Either<
    Api.Options,
    ConfigError.ConfigError
  > => {
    if (Option.isSome(connectionString)) return Either.right({ connectionString: connectionString.value, tableName })
    if (Option.isSome(accountUrl)) return Either.right({ accountUrl: accountUrl.value, tableName })
    return Either.left(
      ConfigError.MissingData(
        [],
        "The projection store needs AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL"
      )
    )
  })
)

type SignalOptions = { readonly abortSignal?: AbortSignal }

const isAbortError = (cause: unknown): boolean =>
  typeof cause === "object" && cause !== null && (cause as { readonly name?: unknown }).name === "AbortError"

type PipelinePolicy = Parameters<TableClient["pipeline"]["addPolicy"]>[0]

// Every request of a client built here carries the timeout; the SDK's HTTP client aborts it.
const timeoutPolicy = (timeoutMillis: number): PipelinePolicy => ({
  name: "effectEventuallyProjectionTimeout",
  sendRequest: (request, next) => {
    request.timeout = timeoutMillis
    return next(request)
  }
})

export const fromClient = (
  client: TableClient,
  options: Api.StoreOptions = {}
): Effect.Effect<ProjectionStoreService, ProjectionStoreFailure | ProjectionStoreUnavailable> =>
  makeService(client, options, false)

const makeService = (
  client: TableClient,
  options: Api.StoreOptions,
  pipelineTimeout: boolean
): Effect.Effect<ProjectionStoreService, ProjectionStoreFailure | ProjectionStoreUnavailable> =>
  Effect.gen(function*() {
    const timeout = Duration.decode(options.timeout ?? defaultTimeout)
    const timeoutMillis = Duration.toMillis(timeout)
    const schedule = options.retry ?? defaultRetrySchedule

    const unavailable = (
      operation: string,
      projection: string | undefined,
      documentId: string | undefined,
      code: string | undefined,
      reason: string
    ) => new ProjectionStoreUnavailable({ operation, projection, documentId, code, reason })

    const toFailure = (
      operation: string,
      projection: string | undefined,
      documentId: string | undefined,
      rejection: Rejection
    ) =>
      new ProjectionStoreFailure({
        operation,
        projection,
        documentId,
        code: codeOf(rejection),
        reason: rejection.message
      })

    type Answer<A> = Effect.Effect<Either.Either<A, Rejection>, ProjectionStoreUnavailable>

    const timeoutError = (operation: string, projection: string | undefined, documentId: string | undefined) =>
      unavailable(operation, projection, documentId, "Timeout", `no answer within ${Duration.format(timeout)}`)

    // A failed attempt: a definite answer from the service (404, 409, 412, 403, ...) is a value,
    // so each operation decides what it means; a transient failure is an error, to be retried.
    const failed = <A>(
      operation: string,
      projection: string | undefined,
      documentId: string | undefined,
      timedOut: boolean,
      cause: unknown
    ): Answer<A> => {
      if (timedOut) return Effect.fail(timeoutError(operation, projection, documentId))
      const rejection = classify(cause)
      return rejection.transient
        ? Effect.fail(unavailable(operation, projection, documentId, codeOf(rejection), rejection.message))
        : Effect.succeed(Either.left(rejection))
    }

    const sendSafely = <A>(send: (options: SignalOptions) => Promise<A>, options: SignalOptions): Promise<A> => {
      try {
        return send(options)
      } catch (cause) {
        return Promise.reject(cause)
      }
    }

    // One attempt. On a client this module built, the HTTP pipeline enforces the timeout (see
    // `timeoutPolicy`) and an unref'd timer covers a body that stalls: no abort signal, which the
    // SDK would wire through every layer of every request. On a caller's client, a timer aborts the
    // request through a signal, and interruption aborts it too.
    const attempt = <A>(
      operation: string,
      projection: string | undefined,
      documentId: string | undefined,
      send: (options: SignalOptions) => Promise<A>
    ): Answer<A> =>
      pipelineTimeout
        ? Effect.async<Either.Either<A, Rejection>, ProjectionStoreUnavailable>((resume) => {
          let done = false
          const timer = setTimeout(() => {
            done = true
            resume(Effect.fail(timeoutError(operation, projection, documentId)))
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
              resume(failed(operation, projection, documentId, isAbortError(cause), cause))
            }
          )
        })
        : Effect.async<Either.Either<A, Rejection>, ProjectionStoreUnavailable>((resume) => {
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
              resume(failed(operation, projection, documentId, timedOut, cause))
            }
          )
          return Effect.sync(() => {
            clearTimeout(timer)
            controller.abort()
          })
        })

    // Attempts under the retry schedule, with the semantics of `Effect.retry`; the schedule is
    // only started on a first transient failure, so an attempt that succeeds pays for nothing more.
    const request = <A>(
      operation: string,
      projection: string | undefined,
      documentId: string | undefined,
      send: (options: SignalOptions) => Promise<A>
    ): Answer<A> =>
      Effect.catchAll(
        attempt(operation, projection, documentId, send),
        (first) =>
          Effect.flatMap(Schedule.driver(schedule), (driver) => {
            const retry = (error: ProjectionStoreUnavailable): Answer<A> =>
              Effect.logDebug("Transient projection store failure", error.message).pipe(
                Effect.zipRight(driver.next(error)),
                Effect.matchEffect({
                  onFailure: () => Effect.fail(error),
                  onSuccess: () => Effect.catchAll(attempt(operation, projection, documentId, send), retry)
                })
              )
            return retry(first)
          })
      )

    const get: ProjectionStoreService["get"] = (projection, documentId) =>
      Effect.suspend((): Effect.Effect<Option.Option<StoredDocument>, GetError> => {
        const key = Layout.partitionKey(projection, documentId)
        if (Either.isLeft(key)) return Effect.fail(key.left)
        return request(
          "get",
          projection,
          documentId,
          (signal) => client.getEntity<Record<string, unknown>>(key.right, Layout.rowKey, signal)
        ).pipe(
          Effect.flatMap(Either.match({
            onLeft: (rejection): Effect.Effect<Option.Option<StoredDocument>, GetError> =>
              isEntityMissing(rejection)
                ? Effect.succeed(Option.none())
                : Effect.fail(toFailure("get", projection, documentId, rejection)),
            onRight: (row) => {
              const stored: StoredRow = row
              if (typeof stored.etag !== "string") {
                return Effect.fail(
                  new ProjectionStoreFailure({
                    operation: "get",
                    projection,
                    documentId,
                    reason: "the entity came back without an ETag"
                  })
                )
              }
              return Effect.map(Layout.decode(projection, documentId, stored, Revision(stored.etag)), Option.some)
            }
          }))
        )
      }).pipe(
        Effect.withSpan("AzureTableProjectionStore.get", {
          captureStackTrace: false,
          attributes: { projection, documentId }
        })
      )

    const put: ProjectionStoreService["put"] = (projection, documentId, document, expected) =>
      Effect.suspend((): Effect.Effect<Revision, PutError> => {
        const key = Layout.partitionKey(projection, documentId)
        if (Either.isLeft(key)) return Effect.fail(key.left)
        const entity = Layout.encode(projection, documentId, key.right, document)
        if (Either.isLeft(entity)) return Effect.fail(entity.left)
        // Insert for a new document (409 when it exists), otherwise replace with `If-Match`
        // (412 when it changed, 404 when it is gone): one conditional write either way. Replace,
        // not merge, so that the chunks of a longer previous state disappear.
        return request("put", projection, documentId, (signal) =>
          expected === "new"
            ? client.createEntity(entity.right, signal)
            : client.updateEntity(entity.right, "Replace", { ...signal, etag: expected })).pipe(
            Effect.flatMap(Either.match({
              onLeft: (rejection): Effect.Effect<Revision, PutError> =>
                rejection.status === 409 || rejection.status === 412 || isEntityMissing(rejection)
                  ? Effect.fail(new DocumentConflict({ projection, documentId, expected }))
                  : Effect.fail(toFailure("put", projection, documentId, rejection)),
              onRight: (headers) =>
                typeof headers.etag === "string"
                  ? Effect.succeed(Revision(headers.etag))
                  : Effect.fail(
                    new ProjectionStoreFailure({
                      operation: "put",
                      projection,
                      documentId,
                      reason: "the write was answered without an ETag"
                    })
                  )
            }))
          )
      }).pipe(
        Effect.withSpan("AzureTableProjectionStore.put", {
          captureStackTrace: false,
          attributes: { projection, documentId, new: expected === "new" }
        })
      )

    if (options.createTable !== false) {
      yield* request("createTable", undefined, undefined, (signal) => client.createTable(signal)).pipe(
        Effect.flatMap(Either.match({
          onLeft: (rejection) =>
            // Created meanwhile by another process: fine.
            rejection.status === 409
              ? Effect.void
              : Effect.fail(toFailure("createTable", undefined, undefined, rejection)),
          onRight: () => Effect.void
        })),
        Effect.withSpan("AzureTableProjectionStore.createTable", { attributes: { table: client.tableName } })
      )
    }

    return { get, put }
  })

export const make = (
  options: Api.Options
): Effect.Effect<ProjectionStoreService, ProjectionStoreFailure | ProjectionStoreUnavailable> => {
  // The client is built as the event store builds its own (same validation, same SDK settings:
  // its retries off, plain HTTP only for emulators).
  const clientOptions: EventStoreApi.Options = {
    tableName: options.tableName ?? defaultTableName,
    ...(options.connectionString === undefined ? {} : { connectionString: options.connectionString }),
    ...(options.accountUrl === undefined ? {} : { accountUrl: options.accountUrl }),
    ...(options.credential === undefined ? {} : { credential: options.credential })
  }
  return makeClient(clientOptions).pipe(
    Effect.mapError((error) => new ProjectionStoreFailure({ operation: "configure", reason: error.reason })),
    Effect.flatMap((client) => {
      client.pipeline.addPolicy(timeoutPolicy(Duration.toMillis(Duration.decode(options.timeout ?? defaultTimeout))))
      return makeService(client, options, true)
    })
  )
}

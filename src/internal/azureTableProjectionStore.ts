import type { TableClient } from "@azure/data-tables"
import type { Config, Schedule } from "effect"
import { Duration, Effect, Either, Option } from "effect"
import type * as Api from "../AzureTableProjectionStore.js"
import { DocumentConflict, ProjectionStoreFailure, ProjectionStoreUnavailable } from "../ProjectionError.js"
import type { GetError, ProjectionStoreService, PutError, StoredDocument } from "../ProjectionStore.js"
import { Revision } from "../ProjectionStore.js"
import * as Layout from "./projectionLayout.js"
import type { Rejection } from "./tableClient.js"
import * as Table from "./tableClient.js"
import { codeOf, isEntityMissing } from "./tableClient.js"
import type { StoredRow } from "./tableLayout.js"

export const defaultTableName = "projections"
export const defaultTimeout: Duration.Duration = Duration.seconds(30)

// The event store's policy: both talk to the same service with the same limits. The schedule
// never looks at its input.
export const defaultRetrySchedule: Schedule.Schedule<unknown, ProjectionStoreUnavailable> = Table.defaultRetrySchedule

export const config: Config.Config<Api.Options> = Table.accountConfig({
  variable: "PROJECTION_TABLE",
  defaultName: defaultTableName,
  description: "Name of the table holding the projection documents.",
  store: "projection store"
})

// What a request is about, for its errors.
interface Subject {
  readonly projection: string | undefined
  readonly documentId: string | undefined
}

const noSubject: Subject = { projection: undefined, documentId: undefined }

const timeoutOf = (options: Api.StoreOptions): Duration.Duration => Duration.decode(options.timeout ?? defaultTimeout)

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
    const toFailure = (operation: string, subject: Subject, rejection: Rejection) =>
      new ProjectionStoreFailure({
        operation,
        projection: subject.projection,
        documentId: subject.documentId,
        code: codeOf(rejection),
        reason: rejection.message
      })

    const request = Table.makeRequest<Subject, ProjectionStoreUnavailable>({
      timeout: timeoutOf(options),
      pipelineTimeout,
      schedule: options.retry ?? defaultRetrySchedule,
      unavailable: (operation, subject, code, reason) =>
        new ProjectionStoreUnavailable({
          operation,
          projection: subject.projection,
          documentId: subject.documentId,
          code,
          reason
        }),
      retryMessage: "Transient projection store failure"
    })

    // No span of their own: `Projector.project` runs them inside its `Projection.apply` span.
    const get: ProjectionStoreService["get"] = (projection, documentId) =>
      Effect.suspend((): Effect.Effect<Option.Option<StoredDocument>, GetError> => {
        const key = Layout.partitionKey(projection, documentId)
        if (Either.isLeft(key)) return Effect.fail(key.left)
        const subject: Subject = { projection, documentId }
        return Effect.flatMap(
          request("get", subject, (signal) => client.getEntity<StoredRow>(key.right, Layout.rowKey, signal)),
          Either.match({
            onLeft: (rejection): Effect.Effect<Option.Option<StoredDocument>, GetError> =>
              isEntityMissing(rejection)
                ? Effect.succeed(Option.none())
                : Effect.fail(toFailure("get", subject, rejection)),
            onRight: (stored) => {
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
          })
        )
      })

    const put: ProjectionStoreService["put"] = (projection, documentId, document, expected) =>
      Effect.suspend((): Effect.Effect<Revision, PutError> => {
        const key = Layout.partitionKey(projection, documentId)
        if (Either.isLeft(key)) return Effect.fail(key.left)
        const entity = Layout.encode(projection, documentId, key.right, document)
        if (Either.isLeft(entity)) return Effect.fail(entity.left)
        const subject: Subject = { projection, documentId }
        // Insert for a new document (409 when it exists), otherwise replace with `If-Match`
        // (412 when it changed, 404 when it is gone): one conditional write either way. Replace,
        // not merge, so that the chunks of a longer previous state disappear.
        return Effect.flatMap(
          request("put", subject, (signal) =>
            expected === "new"
              ? client.createEntity(entity.right, signal)
              : client.updateEntity(entity.right, "Replace", { ...signal, etag: expected })),
          Either.match({
            onLeft: (rejection): Effect.Effect<Revision, PutError> =>
              rejection.status === 409 || rejection.status === 412 || isEntityMissing(rejection)
                ? Effect.fail(new DocumentConflict({ projection, documentId, expected }))
                : Effect.fail(toFailure("put", subject, rejection)),
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
          })
        )
      })

    if (options.createTable !== false) {
      yield* request("createTable", noSubject, (signal) => client.createTable(signal)).pipe(
        Effect.flatMap(Either.match({
          onLeft: (rejection) =>
            // Created meanwhile by another process: fine.
            rejection.status === 409
              ? Effect.void
              : Effect.fail(toFailure("createTable", noSubject, rejection)),
          onRight: () => Effect.void
        })),
        Effect.withSpan("AzureTableProjectionStore.createTable", { attributes: { table: client.tableName } })
      )
    }

    return { get, put }
  })

export const make = (
  options: Api.Options
): Effect.Effect<ProjectionStoreService, ProjectionStoreFailure | ProjectionStoreUnavailable> =>
  // The client is built as the event store builds its own (same validation, same SDK settings:
  // its retries off, plain HTTP only for emulators, the timeout in its pipeline).
  Table.makeClient({ ...options, tableName: options.tableName ?? defaultTableName }, timeoutOf(options)).pipe(
    Effect.mapError((reason) => new ProjectionStoreFailure({ operation: "configure", reason })),
    Effect.flatMap((client) => makeService(client, options, true))
  )

// The in-memory projection store. Documents are kept as the entities the Azure adapter would
// write (same encoding, same key and size checks) and decoded on every read, so a test on this
// store refuses and returns exactly what Table Storage would.
import { Effect, Either, Option } from "effect"
import { DocumentConflict } from "../ProjectionError.js"
import type { GetError, ProjectionStoreService, PutError, Revision, StoredDocument } from "../ProjectionStore.js"
import { Revision as makeRevision } from "../ProjectionStore.js"
import * as Layout from "./projectionLayout.js"
import type { TableRow } from "./tableLayout.js"

interface Entry {
  readonly row: TableRow
  readonly revision: Revision
}

export const make: Effect.Effect<ProjectionStoreService> = Effect.sync(() => {
  // Plain maps: every access below is synchronous, so no interleaving can split a check from
  // its write, which is what makes `put` conditional.
  const documents = new Map<string, Entry>()
  let revisions = 0

  const get: ProjectionStoreService["get"] = (projection, documentId) =>
    Effect.suspend((): Effect.Effect<Option.Option<StoredDocument>, GetError> => {
      const key = Layout.partitionKey(projection, documentId)
      if (Either.isLeft(key)) return Effect.fail(key.left)
      const entry = documents.get(key.right)
      if (entry === undefined) return Effect.succeed(Option.none())
      return Effect.map(Layout.decode(projection, documentId, entry.row, entry.revision), Option.some)
    })

  const put: ProjectionStoreService["put"] = (projection, documentId, document, expected) =>
    Effect.suspend((): Effect.Effect<Revision, PutError> => {
      const key = Layout.partitionKey(projection, documentId)
      if (Either.isLeft(key)) return Effect.fail(key.left)
      const row = Layout.encode(projection, documentId, key.right, document)
      if (Either.isLeft(row)) return Effect.fail(row.left)
      const current = documents.get(key.right)
      const matches = expected === "new" ? current === undefined : current?.revision === expected
      if (!matches) return Effect.fail(new DocumentConflict({ projection, documentId, expected }))
      const revision = makeRevision(`m${++revisions}`)
      documents.set(key.right, { row: row.right, revision })
      return Effect.succeed(revision)
    })

  return { get, put }
})

// How projection documents are laid out in Azure Table Storage, as pure functions shared by the
// Azure adapter and the memory store (so both refuse exactly the same keys and sizes). The
// layout is documented for users in docs/projections.md.
import { Either } from "effect"
import { isValidName } from "../Projection.js"
import type { Positions } from "../Projection.js"
import { DocumentDecodeError, DocumentTooLarge, InvalidDocumentId } from "../ProjectionError.js"
import type { DocumentData, Revision, StoredDocument } from "../ProjectionStore.js"
import * as StreamId from "../StreamId.js"
import * as Table from "./tableLayout.js"

/** The largest entity Table Storage stores. */
export const maxDocumentBytes = 1024 * 1024

/** Longest `PartitionKey`, in UTF-8 bytes. */
export const maxKeyBytes = 1024

/**
 * Between the projection name and the document id. Names cannot contain it, so the first one
 * ends the name, and document ids may contain any number of them.
 */
export const separator = ":"

/** Every document is alone in its partition, on this row. */
export const rowKey = "doc"

export const column = {
  state: "State",
  positions: "Positions"
} as const

export const select: ReadonlyArray<string> = [
  ...Array.from({ length: Table.maxChunks }, (_, index) => Table.chunkColumn(column.state, index)),
  ...Array.from({ length: Table.maxChunks }, (_, index) => Table.chunkColumn(column.positions, index))
]

const invalid = (projection: string, documentId: string, reason: string) =>
  Either.left(new InvalidDocumentId({ projection, documentId, reason }))

/**
 * The partition key of a document, or why it cannot be stored: the projection name must be
 * valid (`Projection.isValidName`), the document id valid as a stream id (not empty, no `/`,
 * `\`, `#`, `?` or control characters), and the whole key at most 1 KiB in UTF-8.
 */
export const partitionKey = (projection: string, documentId: string): Either.Either<string, InvalidDocumentId> => {
  if (!isValidName(projection)) {
    return invalid(
      projection,
      documentId,
      `the projection name must be 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit`
    )
  }
  const valid = StreamId.validate(documentId)
  if (Either.isLeft(valid)) return invalid(projection, documentId, valid.left.reason)
  const key = `${projection}${separator}${documentId}`
  const bytes = Buffer.byteLength(key, "utf8")
  if (bytes > maxKeyBytes) {
    return invalid(
      projection,
      documentId,
      `the key "<projection>:<document id>" is ${bytes} bytes in UTF-8, over the limit of ${maxKeyBytes}`
    )
  }
  return Either.right(key)
}

const putChunks = (row: Record<string, string | number>, base: string, value: string): void => {
  const chunks = Table.splitString(value)
  for (let index = 0; index < chunks.length; index++) row[Table.chunkColumn(base, index)] = chunks[index]
}

// `JSON.stringify(undefined)` is `undefined`: store it as `null`, the closest JSON value.
const toJson = (value: unknown): string => JSON.stringify(value) ?? "null"

/** The entity of a document, refused when it is over the entity size limit. */
export const encode = (
  projection: string,
  documentId: string,
  key: string,
  document: DocumentData
): Either.Either<Table.TableRow, DocumentTooLarge> => {
  const row: Record<string, string | number> = { partitionKey: key, rowKey }
  putChunks(row, column.state, toJson(document.state))
  putChunks(row, column.positions, toJson(document.positions))
  const entity = row as Table.TableRow
  const bytes = Table.entityBytes(entity)
  return bytes > maxDocumentBytes
    ? Either.left(new DocumentTooLarge({ projection, documentId, bytes, maxBytes: maxDocumentBytes }))
    : Either.right(entity)
}

const isPositions = (value: unknown): value is Positions => {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false
  for (const version of Object.values(value)) {
    if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 0) return false
  }
  return true
}

const parse = (text: string): Either.Either<unknown, string> => {
  try {
    return Either.right(JSON.parse(text))
  } catch (cause) {
    return Either.left(`invalid JSON: ${cause instanceof Error ? cause.message : String(cause)}`)
  }
}

/** A stored entity back to a document. Rows come from the network: every column is checked. */
export const decode = (
  projection: string,
  documentId: string,
  row: Table.StoredRow,
  revision: Revision
): Either.Either<StoredDocument, DocumentDecodeError> => {
  const fail = (reason: string) => Either.left(new DocumentDecodeError({ projection, documentId, reason }))
  const stateText = Table.joinChunks(row, column.state)
  if (stateText === undefined) return fail(`column ${column.state} is missing`)
  const positionsText = Table.joinChunks(row, column.positions)
  if (positionsText === undefined) return fail(`column ${column.positions} is missing`)
  const state = parse(stateText)
  if (Either.isLeft(state)) return fail(`${column.state}: ${state.left}`)
  const positions = parse(positionsText)
  if (Either.isLeft(positions)) return fail(`${column.positions}: ${positions.left}`)
  if (!isPositions(positions.right)) {
    return fail(`${column.positions} is not an object of stream versions`)
  }
  return Either.right({ projection, documentId, state: state.right, positions: positions.right, revision })
}

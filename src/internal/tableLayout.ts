// How streams are laid out in Azure Table Storage, as pure functions shared by the Azure adapter
// and the size limits (so the memory store refuses exactly what the adapter would refuse).
// The layout is documented for users in docs/event-store.md.
import { Either, Option } from "effect"
import type { EventData, EventMetadata, RecordedEvent, Snapshot } from "../EventStore.js"
import { DecodeError, InvalidStreamId } from "../EventStoreError.js"
import * as StreamId from "../StreamId.js"

/** Digits of an event row key. Ten digits keep key order equal to version order up to 9,999,999,999. */
export const versionDigits = 10

/** The largest version an event row key can hold. */
export const maxVersion = 9_999_999_999

/**
 * The stream head row. `~` sorts after every digit, so the head is the last row of its partition:
 * an open-ended range query over events (`RowKey ge '0000000042'`) also returns the head, which
 * gives a read the current version and ETag for free, while a bounded one excludes it.
 */
export const headRowKey = "~head"

/**
 * The outbox's dispatched position: a separate row, so that recording progress never changes the
 * head's ETag and never makes an append fail its `If-Match`. It sorts after the head, so one
 * open-ended range query returns the events, the head and the position. Every row key starting
 * with `~` is reserved for stream-level rows.
 */
export const outboxRowKey = "~outbox"

/**
 * Partition keys starting with `~` are reserved for the store's own partitions (the pending
 * index, the sweep's mark): a stream id may not start with it.
 */
export const reservedPrefix = "~"

/** A stream id as `StreamId.validate` checks it, and not in the reserved range. */
export const validateStreamId = (streamId: string): Either.Either<string, InvalidStreamId> =>
  streamId.startsWith(reservedPrefix)
    ? Either.left(new InvalidStreamId({ streamId, reason: `ids starting with "${reservedPrefix}" are reserved` }))
    : StreamId.validate(streamId)

/**
 * The pending index: partition `~pending-<bucket start, ISO 8601>`, one row per stream appended
 * to in that bucket (`RowKey` = stream id, no other column). ISO 8601 in UTC has a fixed width
 * until the year 9999, so key order is time order and a range of buckets is a range of keys.
 */
export const pendingPrefix = "~pending-"

export const pendingPartition = (bucket: number): string => `${pendingPrefix}${new Date(bucket).toISOString()}`

export const bucketOfPartition = (partitionKey: string): number => Date.parse(partitionKey.slice(pendingPrefix.length))

/** The sweep's low-water mark: one row, `Bucket` = the first bucket start that may have entries. */
export const sweepPartition = "~outbox-sweep"
export const sweepRowKey = "mark"

export const eventRowKey = (version: number): string => version.toString().padStart(versionDigits, "0")

const eventRowKeyPattern = /^[0-9]{10}$/

export const isEventRowKey = (rowKey: string): boolean => eventRowKeyPattern.test(rowKey)

/** Column names. Short and stable: they are part of the stored format. */
export const column = {
  eventId: "EventId",
  type: "Type",
  schemaVersion: "SchemaVersion",
  data: "Data",
  metadata: "Metadata",
  version: "Version",
  snapshotVersion: "SnapshotVersion",
  snapshotSchemaVersion: "SnapshotSchemaVersion",
  snapshot: "Snapshot",
  dispatched: "Dispatched",
  bucket: "Bucket"
} as const

/** Largest string property: 64 KiB, i.e. 32K UTF-16 code units. */
export const maxStringChars = 32 * 1024

/** A 1 MiB entity cannot hold more than 16 full 64 KiB chunks, so no column is ever split further. */
export const maxChunks = 16

/** `Data`, `Data_1`, `Data_2`, ...: the first chunk keeps the plain name, so small values stay readable. */
export const chunkColumn = (base: string, index: number): string => index === 0 ? base : `${base}_${index}`

const chunkColumns = (base: string): Array<string> =>
  Array.from({ length: maxChunks }, (_, index) => chunkColumn(base, index))

/**
 * The columns a query selects when it may meet the head row: everything an event row has, plus
 * the head's version. The snapshot columns are left out, so reading events never transfers a
 * snapshot nobody asked for.
 */
export const eventSelect: ReadonlyArray<string> = [
  "RowKey",
  column.eventId,
  column.type,
  column.schemaVersion,
  ...chunkColumns(column.data),
  ...chunkColumns(column.metadata),
  column.version
]

/** The columns of an outbox progress read: events, the head's version and the dispatched position. */
export const progressSelect: ReadonlyArray<string> = [...eventSelect, column.dispatched]

/** The columns an append needs from the head: its version (the ETag comes with every entity). */
export const headVersionSelect: ReadonlyArray<string> = [column.version]

/** The columns needed to recognise events already stored (idempotent retries). */
export const eventIdSelect: ReadonlyArray<string> = ["RowKey", column.eventId]

const isHighSurrogate = (code: number): boolean => code >= 0xd800 && code <= 0xdbff

/**
 * Splits a string into chunks a string property can hold. A cut never falls inside a surrogate
 * pair: a lone half would be replaced on the wire and corrupt the JSON.
 */
export const splitString = (value: string): Array<string> => {
  if (value.length <= maxStringChars) return [value]
  const chunks: Array<string> = []
  let start = 0
  while (start < value.length) {
    let end = Math.min(start + maxStringChars, value.length)
    if (end < value.length && isHighSurrogate(value.charCodeAt(end - 1))) end--
    chunks.push(value.slice(start, end))
    start = end
  }
  return chunks
}

/** A row as sent to `@azure/data-tables`. */
export type TableRow = { readonly partitionKey: string; readonly rowKey: string } & Record<string, string | number>

/** A row as read back: Azure returns `null` for selected columns an entity does not have. */
export type StoredRow = { readonly rowKey?: string; readonly etag?: string } & Record<string, unknown>

const putChunks = (row: Record<string, string | number>, base: string, value: string): void => {
  const chunks = splitString(value)
  for (let index = 0; index < chunks.length; index++) row[chunkColumn(base, index)] = chunks[index]
}

/** Joins a split column back; `undefined` when the column is absent. */
export const joinChunks = (row: StoredRow, base: string): string | undefined => {
  const first = row[base]
  if (typeof first !== "string") return undefined
  let value = first
  for (let index = 1; index < maxChunks; index++) {
    const chunk = row[chunkColumn(base, index)]
    if (typeof chunk !== "string") break
    value += chunk
  }
  return value
}

// `JSON.stringify(undefined)` is `undefined`: store it as `null`, the closest JSON value.
const toJson = (value: unknown): string => JSON.stringify(value) ?? "null"

export const encodeEvent = (streamId: string, version: number, event: EventData): TableRow => {
  const row: Record<string, string | number> = {
    partitionKey: streamId,
    rowKey: eventRowKey(version),
    [column.eventId]: event.eventId,
    [column.type]: event.type,
    [column.schemaVersion]: event.schemaVersion
  }
  putChunks(row, column.data, toJson(event.data))
  putChunks(row, column.metadata, toJson(event.metadata))
  return row as TableRow
}

export const encodeHead = (streamId: string, version: number, snapshot: Snapshot | undefined): TableRow => {
  const row: Record<string, string | number> = {
    partitionKey: streamId,
    rowKey: headRowKey,
    [column.version]: version
  }
  if (snapshot !== undefined) {
    row[column.snapshotVersion] = snapshot.version
    row[column.snapshotSchemaVersion] = snapshot.schemaVersion
    putChunks(row, column.snapshot, toJson(snapshot.state))
  }
  return row as TableRow
}

// Sizes. Table Storage counts an entity as 4 bytes, plus 2 bytes per key character, plus for each
// property 8 bytes, 2 bytes per name character and its value: a string 4 + 2 per UTF-16 unit, an
// Int32 4, a Double 8. The Timestamp the service adds counts too. The limit is 1 MiB.

const timestampBytes = 8 + 2 * "Timestamp".length + 8

const valueBytes = (value: string | number): number =>
  typeof value === "string" ? 4 + 2 * value.length : Number.isInteger(value) && Math.abs(value) < 2 ** 31 ? 4 : 8

/** The size Table Storage accounts for an entity, checked against the 1 MiB entity limit. */
export const entityBytes = (row: TableRow): number => {
  let bytes = 4 + 2 * (row.partitionKey.length + row.rowKey.length) + timestampBytes
  for (const name in row) {
    if (name === "partitionKey" || name === "rowKey") continue
    bytes += 8 + 2 * name.length + valueBytes(row[name])
  }
  return bytes
}

/**
 * Bytes of one operation in a batch request, checked against the 4 MiB payload limit: the JSON
 * body as the SDK sends it (`partitionKey` and `PartitionKey` have the same length), plus a fixed
 * budget for the multipart headers, the table URL and the `If-Match` ETag, plus the partition key
 * percent-encoded in the head operation's URL.
 */
export const operationOverheadBytes = 1024

/** The multipart envelope of the whole batch. */
export const batchOverheadBytes = 1024

const urlKeyBytes = (row: TableRow): number =>
  row.rowKey === headRowKey ? 3 * Buffer.byteLength(row.partitionKey, "utf8") : 0

export const operationBytes = (row: TableRow): number =>
  Buffer.byteLength(JSON.stringify(row), "utf8") + operationOverheadBytes + urlKeyBytes(row)

/**
 * An upper bound of {@link operationBytes} without serializing: JSON writes a UTF-16 unit in at
 * most 6 bytes (`\u0000`), a number in at most 24, plus quotes, colon and comma per property.
 */
export const operationBytesBound = (row: TableRow): number => {
  let bytes = 2 + operationOverheadBytes + urlKeyBytes(row)
  for (const name in row) {
    const value = row[name]
    bytes += 6 * name.length + 4 + (typeof value === "string" ? 6 * value.length + 2 : 24)
  }
  return bytes
}

// Decoding. Stored rows come from the network: every field is checked, and a row that does not
// decode is a `DecodeError` naming the stream and version, never a defect.

const parseJson = (text: string): { readonly value: unknown } | { readonly error: string } => {
  try {
    return { value: JSON.parse(text) }
  } catch (cause) {
    return { error: `invalid JSON: ${cause instanceof Error ? cause.message : String(cause)}` }
  }
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

export const versionOfRowKey = (rowKey: string): number => Number(rowKey)

// Written without generators: every event of every read goes through here.
export const decodeEvent = (streamId: string, row: StoredRow): Either.Either<RecordedEvent, DecodeError> => {
  const version = versionOfRowKey(row.rowKey ?? "")
  const typeColumn = row[column.type]
  const type = typeof typeColumn === "string" ? typeColumn : "$unknown"
  const fail = (reason: string) => Either.left(new DecodeError({ streamId, version, type, reason }))
  const eventId = row[column.eventId]
  if (typeof eventId !== "string") return fail(`column ${column.eventId} is missing`)
  if (typeof typeColumn !== "string") return fail(`column ${column.type} is missing`)
  const schemaVersion = row[column.schemaVersion]
  if (typeof schemaVersion !== "number") return fail(`column ${column.schemaVersion} is not a number`)
  const dataText = joinChunks(row, column.data)
  if (dataText === undefined) return fail(`column ${column.data} is missing`)
  const metadataText = joinChunks(row, column.metadata)
  if (metadataText === undefined) return fail(`column ${column.metadata} is missing`)
  const data = parseJson(dataText)
  if ("error" in data) return fail(`${column.data}: ${data.error}`)
  const metadata = parseJson(metadataText)
  if ("error" in metadata) return fail(`${column.metadata}: ${metadata.error}`)
  if (!isRecord(metadata.value) || typeof metadata.value.timestamp !== "string") {
    return fail(`${column.metadata} is not an object with a timestamp`)
  }
  return Either.right({
    streamId,
    version,
    eventId,
    type,
    schemaVersion,
    data: data.value,
    metadata: metadata.value as unknown as EventMetadata
  })
}

/** What the head row says about a stream. */
export interface Head {
  readonly version: number
  readonly etag: string
}

export const decodeHead = (streamId: string, row: StoredRow): Either.Either<Head, DecodeError> => {
  const version = row[column.version]
  if (typeof version !== "number" || !Number.isInteger(version) || version < 0) {
    return Either.left(
      new DecodeError({ streamId, version: -1, type: "$head", reason: `column ${column.version} is not a version` })
    )
  }
  if (typeof row.etag !== "string") {
    return Either.left(new DecodeError({ streamId, version, type: "$head", reason: "the row has no ETag" }))
  }
  return Either.right({ version, etag: row.etag })
}

/** The head's snapshot, when it has one with the wanted schema version. */
export const decodeSnapshot = (
  streamId: string,
  row: StoredRow,
  schemaVersion: number
): Either.Either<Option.Option<Snapshot>, DecodeError> => {
  const version = row[column.snapshotVersion]
  if (typeof version !== "number" || row[column.snapshotSchemaVersion] !== schemaVersion) {
    return Either.right(Option.none())
  }
  const text = joinChunks(row, column.snapshot)
  if (text === undefined) {
    return Either.left(
      new DecodeError({ streamId, version, type: "$snapshot", reason: `column ${column.snapshot} is missing` })
    )
  }
  const state = parseJson(text)
  if ("error" in state) {
    return Either.left(
      new DecodeError({ streamId, version, type: "$snapshot", reason: `${column.snapshot}: ${state.error}` })
    )
  }
  return Either.right(Option.some({ version, schemaVersion, state: state.value }))
}

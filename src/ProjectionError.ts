/**
 * The typed failures of projections and projection stores. Transient failures
 * (`ProjectionStoreUnavailable`, `DocumentConflict`, `ProjectionGap`) and permanent ones are
 * different tags, so a retry policy, or a message processor deciding between abandoning and
 * dead-lettering a message, can tell them apart with {@link isTransient}.
 *
 * @since 0.1.0
 */
import { Predicate, Schema } from "effect"

/**
 * Another writer stored the document since it was read: the expected revision is stale (or the
 * document was expected to be new and exists). Nothing was written. Read it again, apply the
 * event again, and retry.
 *
 * @since 0.1.0
 * @category errors
 */
export class DocumentConflict extends Schema.TaggedError<DocumentConflict>("effect-eventually/DocumentConflict")(
  "DocumentConflict",
  {
    projection: Schema.String,
    documentId: Schema.String,
    /** The revision the write expected, or `"new"`. */
    expected: Schema.String
  }
) {
  override get message(): string {
    return `Document "${this.documentId}" of projection "${this.projection}" was expected ${
      this.expected === "new" ? "not to exist" : `at revision ${this.expected}`
    } but another writer changed it: read it again and retry.`
  }
}

/**
 * A document (its encoded state and positions) is larger than one Table Storage entity may be.
 * Nothing was written.
 *
 * @since 0.1.0
 * @category errors
 */
export class DocumentTooLarge extends Schema.TaggedError<DocumentTooLarge>("effect-eventually/DocumentTooLarge")(
  "DocumentTooLarge",
  {
    projection: Schema.String,
    documentId: Schema.String,
    bytes: Schema.Number,
    maxBytes: Schema.Number
  }
) {
  override get message(): string {
    return `Document "${this.documentId}" of projection "${this.projection}" is ${this.bytes} bytes once encoded, over the limit of ${this.maxBytes} bytes: nothing was written. Keep less in one document (split it by a finer document id), or store large values elsewhere and reference them.`
  }
}

/**
 * A projection name or document id that cannot be stored: see `ProjectionStore.validateKey`.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidDocumentId extends Schema.TaggedError<InvalidDocumentId>("effect-eventually/InvalidDocumentId")(
  "InvalidDocumentId",
  {
    projection: Schema.String,
    documentId: Schema.String,
    reason: Schema.String
  }
) {
  override get message(): string {
    return `Invalid document id ${JSON.stringify(this.documentId.slice(0, 100))} in projection ${
      JSON.stringify(this.projection.slice(0, 100))
    }: ${this.reason}.`
  }
}

/**
 * The store could not be reached or refused for a moment (HTTP 503 / 500, timeouts, resets,
 * throttling). Transient: the adapter has already retried under its schedule; a write that
 * failed this way wrote either everything or nothing.
 *
 * @since 0.1.0
 * @category errors
 */
export class ProjectionStoreUnavailable extends Schema.TaggedError<ProjectionStoreUnavailable>(
  "effect-eventually/ProjectionStoreUnavailable"
)("ProjectionStoreUnavailable", {
  operation: Schema.String,
  projection: Schema.optional(Schema.String),
  documentId: Schema.optional(Schema.String),
  /** HTTP status or error code, when there was one. */
  code: Schema.optional(Schema.String),
  reason: Schema.String
}) {
  override get message(): string {
    return `Projection store unavailable during ${this.operation}${where(this)}${
      this.code === undefined ? "" : ` (${this.code})`
    }: ${this.reason}. This is transient; retry later.`
  }
}

/**
 * The store answered with something the adapter cannot use: a permanent failure such as a
 * refused credential, a missing table, or a malformed request. Not retried.
 *
 * @since 0.1.0
 * @category errors
 */
export class ProjectionStoreFailure extends Schema.TaggedError<ProjectionStoreFailure>(
  "effect-eventually/ProjectionStoreFailure"
)("ProjectionStoreFailure", {
  operation: Schema.String,
  projection: Schema.optional(Schema.String),
  documentId: Schema.optional(Schema.String),
  code: Schema.optional(Schema.String),
  reason: Schema.String
}) {
  override get message(): string {
    return `Projection store failed during ${this.operation}${where(this)}${
      this.code === undefined ? "" : ` (${this.code})`
    }: ${this.reason}.`
  }
}

/**
 * A stored document could not be decoded: its columns are damaged, or its state does not match
 * the projection's state schema (the schema changed without a rebuild).
 *
 * @since 0.1.0
 * @category errors
 */
export class DocumentDecodeError extends Schema.TaggedError<DocumentDecodeError>(
  "effect-eventually/DocumentDecodeError"
)("DocumentDecodeError", {
  projection: Schema.String,
  documentId: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `Cannot decode document "${this.documentId}" of projection "${this.projection}": ${this.reason}. If the state's schema changed, rebuild the projection into a new table.`
  }
}

/**
 * An event arrived before an earlier event of its stream was applied to its document: the
 * document has applied version `lastApplied` of the stream, and this event is `version`.
 * Transient: retry the event later (abandon its message), so that the earlier one lands first.
 * Raised only under the `"fail"` gap policy (the default).
 *
 * @since 0.1.0
 * @category errors
 */
export class ProjectionGap extends Schema.TaggedError<ProjectionGap>("effect-eventually/ProjectionGap")(
  "ProjectionGap",
  {
    projection: Schema.String,
    documentId: Schema.String,
    streamId: Schema.String,
    version: Schema.Number,
    lastApplied: Schema.Number
  }
) {
  override get message(): string {
    return `Event ${this.version} of stream "${this.streamId}" arrived at document "${this.documentId}" of projection "${this.projection}" before version ${
      this.lastApplied + 1
    } was applied: retry it later, once the earlier events have landed.`
  }
}

const where = (
  error: { readonly projection?: string | undefined; readonly documentId?: string | undefined }
): string =>
  error.projection === undefined
    ? ""
    : ` on ${
      error.documentId === undefined ? "" : `document "${error.documentId}" of `
    }projection "${error.projection}"`

/**
 * Any failure a projection store may report.
 *
 * @since 0.1.0
 * @category errors
 */
export type ProjectionStoreError =
  | DocumentConflict
  | DocumentTooLarge
  | InvalidDocumentId
  | ProjectionStoreUnavailable
  | ProjectionStoreFailure
  | DocumentDecodeError

/**
 * True for failures worth retrying as they are (the same event may be applied later): the store
 * was unavailable, a conflict outlasted the retry schedule, or an earlier event is missing.
 *
 * @since 0.1.0
 * @category errors
 */
export const isTransient = (
  error: unknown
): error is ProjectionStoreUnavailable | DocumentConflict | ProjectionGap =>
  Predicate.isTagged(error, "ProjectionStoreUnavailable") || Predicate.isTagged(error, "DocumentConflict") ||
  Predicate.isTagged(error, "ProjectionGap")

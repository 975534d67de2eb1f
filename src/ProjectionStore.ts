/**
 * The projection store port. It keeps documents in their encoded form (the state as a JSON value)
 * with the positions they have applied, one document per projection and document id; `Projector`
 * turns events into documents through it.
 *
 * Guarantees every implementation gives (checked by the conformance suite):
 *
 * - A `put` is atomic: the state and the positions are stored together, or not at all.
 * - Optimistic concurrency: a `put` succeeds only when the document is at the expected revision
 *   (or does not exist yet, for `"new"`); of concurrent puts with the same expectation exactly
 *   one wins, the others fail with `DocumentConflict`.
 * - Every successful `put` returns a new revision, which `get` returns until the next put.
 * - Keys and sizes are checked before writing: `InvalidDocumentId`, `DocumentTooLarge`.
 *
 * @since 0.1.0
 */
import type { Option } from "effect"
import { Brand, Context, Effect, Layer } from "effect"
import * as Layout from "./internal/projectionLayout.js"
import * as internalMemory from "./internal/projectionMemory.js"
import type { Positions } from "./Projection.js"
import type {
  DocumentConflict,
  DocumentDecodeError,
  DocumentTooLarge,
  InvalidDocumentId,
  ProjectionStoreFailure,
  ProjectionStoreUnavailable
} from "./ProjectionError.js"

/**
 * An opaque token for one stored version of a document (the entity's ETag on Azure).
 *
 * @since 0.1.0
 * @category models
 */
export type Revision = string & Brand.Brand<"effect-eventually/ProjectionStore/Revision">

/**
 * Makes a revision from a store's token; for implementations of the port.
 *
 * @since 0.1.0
 * @category constructors
 */
export const Revision: Brand.Brand.Constructor<Revision> = Brand.nominal<Revision>()

/**
 * What a `put` expects to replace: a revision read before, or `"new"` for a document that must not
 * exist yet.
 *
 * @since 0.1.0
 * @category models
 */
export type ExpectedRevision = Revision | "new"

/**
 * A document as the store keeps it.
 *
 * @since 0.1.0
 * @category models
 */
export interface DocumentData {
  /** The encoded state, a JSON value. */
  readonly state: unknown
  /** For each source stream, the version of its last event applied. */
  readonly positions: Positions
}

/**
 * A document as read, with its revision.
 *
 * @since 0.1.0
 * @category models
 */
export interface StoredDocument extends DocumentData {
  readonly projection: string
  readonly documentId: string
  readonly revision: Revision
}

/**
 * Failures of reads.
 *
 * @since 0.1.0
 * @category errors
 */
export type GetError = InvalidDocumentId | DocumentDecodeError | ProjectionStoreUnavailable | ProjectionStoreFailure

/**
 * Failures of writes.
 *
 * @since 0.1.0
 * @category errors
 */
export type PutError =
  | DocumentConflict
  | DocumentTooLarge
  | InvalidDocumentId
  | ProjectionStoreUnavailable
  | ProjectionStoreFailure

/**
 * The projection store service.
 *
 * @since 0.1.0
 * @category models
 */
export interface ProjectionStoreService {
  /** Reads a document; none when it was never stored. */
  readonly get: (projection: string, documentId: string) => Effect.Effect<Option.Option<StoredDocument>, GetError>
  /**
   * Stores a document in one atomic, conditional write, if it is at `expected` (or absent, for
   * `"new"`). Returns the new revision.
   */
  readonly put: (
    projection: string,
    documentId: string,
    document: DocumentData,
    expected: ExpectedRevision
  ) => Effect.Effect<Revision, PutError>
}

/**
 * The projection store port.
 *
 * @since 0.1.0
 * @category services
 */
export class ProjectionStore extends Context.Tag("effect-eventually/ProjectionStore")<
  ProjectionStore,
  ProjectionStoreService
>() {}

/**
 * The limits every implementation enforces, those of one Azure Table Storage entity.
 *
 * @since 0.1.0
 * @category models
 */
export const limits = {
  /** Bytes per document: its encoded state and positions, as Table Storage counts an entity. */
  maxDocumentBytes: Layout.maxDocumentBytes,
  /** UTF-8 bytes of `"<projection>:<document id>"`. */
  maxKeyBytes: Layout.maxKeyBytes
} as const

/**
 * Checks a projection name and a document id the way every store does, without writing.
 *
 * @since 0.1.0
 * @category constructors
 */
export const validateKey = (projection: string, documentId: string): Effect.Effect<void, InvalidDocumentId> =>
  Effect.asVoid(Layout.partitionKey(projection, documentId))

/**
 * A projection store kept in memory, with the same guarantees and limits as the Azure adapter.
 * Each call makes an empty store.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<ProjectionStoreService> = internalMemory.make

/**
 * A layer with an empty in-memory projection store.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<ProjectionStore> = Layer.effect(ProjectionStore, makeMemory)

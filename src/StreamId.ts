/**
 * Stream ids name one consistency boundary (one aggregate instance). They are stored as the
 * Table Storage `PartitionKey` as they are, so they are validated rather than encoded: a valid id
 * is readable in the Azure portal and in queries, and an invalid one is refused with
 * `InvalidStreamId` before anything is written.
 *
 * @since 0.1.0
 */
import type { Effect } from "effect"
import { Either } from "effect"
import { InvalidStreamId } from "./EventStoreError.js"

/**
 * The longest stream id accepted, in UTF-8 bytes (the Table Storage key limit).
 *
 * @since 0.1.0
 * @category models
 */
export const maxBytes = 1024

// Table Storage forbids / \ # ? and the control characters U+0000-U+001F and U+007F-U+009F in keys.

const forbidden = /[/\\#?\u0000-\u001f\u007f-\u009f]/

/**
 * Checks a stream id, returning the reason it is invalid, if any.
 *
 * @since 0.1.0
 * @category constructors
 */
export const validate = (streamId: string): Either.Either<string, InvalidStreamId> => {
  if (streamId.length === 0) {
    return Either.left(new InvalidStreamId({ streamId, reason: "it is empty" }))
  }
  const bytes = Buffer.byteLength(streamId, "utf8")
  if (bytes > maxBytes) {
    return Either.left(
      new InvalidStreamId({ streamId, reason: `it is ${bytes} bytes in UTF-8, over the limit of ${maxBytes}` })
    )
  }
  const match = forbidden.exec(streamId)
  if (match !== null) {
    const char = match[0]
    const shown = char.charCodeAt(0) < 0x20 || char.charCodeAt(0) >= 0x7f
      ? `U+${char.charCodeAt(0).toString(16).padStart(4, "0").toUpperCase()}`
      : `"${char}"`
    return Either.left(
      new InvalidStreamId({
        streamId,
        reason:
          `it contains ${shown} at index ${match.index}; "/", "\\", "#", "?" and control characters are not allowed`
      })
    )
  }
  return Either.right(streamId)
}

/**
 * Checks a stream id as an Effect.
 *
 * @since 0.1.0
 * @category constructors
 */
export const check = (streamId: string): Effect.Effect<string, InvalidStreamId> => validate(streamId)

/**
 * Joins a category and an id into a stream id, `"category-id"`, the convention that lets the
 * outbox route by category.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (category: string, id: string): string => `${category}-${id}`

/**
 * The category of a stream id: the part before the first `-` (the whole id when there is none).
 *
 * @since 0.1.0
 * @category constructors
 */
export const category = (streamId: string): string => {
  const index = streamId.indexOf("-")
  return index === -1 ? streamId : streamId.slice(0, index)
}

import { Either, ParseResult, Predicate, Schema, SchemaAST as AST } from "effect"
import type { EventCodec, Options, SnapshotCodec, Upcaster } from "../EventCodec.js"
import type { EventData, RecordedEvent, Snapshot } from "../EventStore.js"
import { DecodeError } from "../EventStoreError.js"

/** The `type` a snapshot's decode errors carry. */
export const snapshotType = "$snapshot"

const parseOptions: AST.ParseOptions = { errors: "all", onExcessProperty: "ignore" }

const formatParseError = (issue: ParseResult.ParseIssue): string => ParseResult.TreeFormatter.formatIssueSync(issue)

const isRecord = (u: unknown): u is Readonly<Record<string, unknown>> =>
  Predicate.isObject(u) && !Array.isArray(u) && !Predicate.isFunction(u)

interface Member {
  readonly decode: (u: unknown) => Either.Either<unknown, ParseResult.ParseIssue>
  readonly encode: (a: unknown) => Either.Either<unknown, ParseResult.ParseIssue>
  readonly schemaVersion: number
  readonly upcasters: { readonly [fromVersion: number]: Upcaster }
}

// The members of a union of tagged schemas, by tag. Each member gets its own decoder, so the
// stored `type` selects the schema directly and an error names that schema only.
const taggedMembers = (ast: AST.AST): Array<readonly [string, AST.AST]> => {
  if (AST.isUnion(ast)) return ast.types.flatMap(taggedMembers)
  if (AST.isSuspend(ast)) return taggedMembers(ast.f())
  const tag = AST.getPropertySignatures(ast).find((signature) => signature.name === "_tag")
  if (tag === undefined || !AST.isLiteral(tag.type) || !Predicate.isString(tag.type.literal)) {
    throw new TypeError(
      `EventCodec.make needs a union of tagged schemas (Schema.TaggedClass or Schema.TaggedStruct); this member has no literal string _tag: ${
        String(ast)
      }`
    )
  }
  return [[tag.type.literal, ast]]
}

const checkVersion = (version: number, what: string): number => {
  if (!Number.isSafeInteger(version) || version < 1) {
    throw new RangeError(`${what} must be a positive integer, got ${version}`)
  }
  return version
}

export const make = <Event extends { readonly _tag: string }, Encoded>(
  schema: Schema.Schema<Event, Encoded>,
  options: Options<Event["_tag"]> = {}
): EventCodec<Event> => {
  const members = new Map<string, Member>()
  const schemaVersions: Readonly<Record<string, number | undefined>> = options.schemaVersions ?? {}
  const upcasters: Readonly<Record<string, { readonly [fromVersion: number]: Upcaster } | undefined>> =
    options.upcasters ?? {}
  for (const [tag, ast] of taggedMembers(schema.ast)) {
    if (members.has(tag)) throw new TypeError(`EventCodec.make: two event schemas have the tag "${tag}"`)
    const member = Schema.make<unknown, unknown, never>(ast)
    members.set(tag, {
      decode: ParseResult.decodeUnknownEither(member, parseOptions),
      encode: ParseResult.encodeEither(member, parseOptions),
      schemaVersion: checkVersion(schemaVersions[tag] ?? 1, `The schema version of "${tag}"`),
      upcasters: upcasters[tag] ?? {}
    })
  }
  for (const tag of [...Object.keys(schemaVersions), ...Object.keys(upcasters)]) {
    if (!members.has(tag)) throw new TypeError(`EventCodec.make: options name "${tag}", which is not an event type`)
  }
  const types = [...members.keys()] as ReadonlyArray<Event["_tag"]>

  const encode = (
    event: Event,
    encodeOptions: { readonly eventId: string; readonly metadata: EventData["metadata"] }
  ) => {
    const member = members.get(event._tag)
    if (member === undefined) {
      throw new TypeError(`EventCodec: cannot encode an event of unknown type "${event._tag}"`)
    }
    const encoded = member.encode(event)
    if (Either.isLeft(encoded)) {
      throw new TypeError(
        `EventCodec: the "${event._tag}" event does not match its schema: ${formatParseError(encoded.left)}`
      )
    }
    // The tag is stored once, as the type.
    const { _tag: _, ...data } = encoded.right as Record<string, unknown>
    const eventData: EventData = {
      eventId: encodeOptions.eventId,
      type: event._tag,
      schemaVersion: member.schemaVersion,
      data,
      metadata: encodeOptions.metadata
    }
    return eventData
  }

  const decodeEither = (recorded: RecordedEvent): Either.Either<Event, DecodeError> => {
    const fail = (reason: string) =>
      Either.left(
        new DecodeError({ streamId: recorded.streamId, version: recorded.version, type: recorded.type, reason })
      )
    const member = members.get(recorded.type)
    if (member === undefined) {
      return fail(`unknown event type; this codec knows ${types.map((type) => `"${type}"`).join(", ")}`)
    }
    if (!isRecord(recorded.data)) {
      return fail(`the payload is not an object: ${JSON.stringify(recorded.data) ?? String(recorded.data)}`)
    }
    let data = recorded.data
    let version = recorded.schemaVersion
    if (version > member.schemaVersion) {
      return fail(
        `schema version ${version} is newer than the ${member.schemaVersion} this code reads; deploy the code that wrote it`
      )
    }
    for (; version < member.schemaVersion; version++) {
      const upcast = member.upcasters[version]
      if (upcast === undefined) {
        return fail(`no upcaster from schema version ${version} to ${version + 1}`)
      }
      try {
        data = upcast(data)
      } catch (cause) {
        return fail(`the upcaster from schema version ${version} threw: ${String(cause)}`)
      }
      if (!isRecord(data)) return fail(`the upcaster from schema version ${version} did not return an object`)
    }
    const decoded = member.decode({ ...data, _tag: recorded.type })
    return Either.isLeft(decoded) ? fail(formatParseError(decoded.left)) : Either.right(decoded.right as Event)
  }

  return {
    types,
    schemaVersionOf: (type) => members.get(type)?.schemaVersion ?? 1,
    encode,
    decode: decodeEither,
    decodeEither
  }
}

export const makeSnapshot = <State, Encoded>(
  schema: Schema.Schema<State, Encoded>,
  options: { readonly schemaVersion: number }
): SnapshotCodec<State> => {
  const schemaVersion = checkVersion(options.schemaVersion, "The snapshot schema version")
  const encodeState = ParseResult.encodeEither(schema, parseOptions)
  const decodeState = ParseResult.decodeUnknownEither(schema, parseOptions)

  const decodeEither = (snapshot: Snapshot, streamId: string): Either.Either<State, DecodeError> => {
    const fail = (reason: string) =>
      Either.left(new DecodeError({ streamId, version: snapshot.version, type: snapshotType, reason }))
    if (snapshot.schemaVersion !== schemaVersion) {
      return fail(`the snapshot has schema version ${snapshot.schemaVersion}, this codec reads ${schemaVersion}`)
    }
    const decoded = decodeState(snapshot.state)
    return Either.isLeft(decoded) ? fail(formatParseError(decoded.left)) : Either.right(decoded.right)
  }

  return {
    schemaVersion,
    encode: (state, version) => {
      const encoded = encodeState(state)
      if (Either.isLeft(encoded)) {
        throw new TypeError(`EventCodec: the state does not match its schema: ${formatParseError(encoded.left)}`)
      }
      return { version, schemaVersion, state: encoded.right }
    },
    decode: decodeEither,
    decodeEither
  }
}

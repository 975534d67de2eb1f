// Turns the emulator's options (from code or from a JSON file) into broker settings.
import { Duration, Either, Schema } from "effect"
import type { EntitySettings, Rule } from "./broker.js"
import type { FilterConfig } from "./filter.js"
import { compile } from "./filter.js"

/** A duration in a config file: milliseconds, an ISO 8601 duration (`PT1M`), or `"30 seconds"`. */
export const DurationField = Schema.Union(Schema.Number, Schema.String)

const CorrelationSchema = Schema.Struct({
  correlationId: Schema.optional(Schema.String),
  messageId: Schema.optional(Schema.String),
  to: Schema.optional(Schema.String),
  replyTo: Schema.optional(Schema.String),
  subject: Schema.optional(Schema.String),
  label: Schema.optional(Schema.String),
  sessionId: Schema.optional(Schema.String),
  replyToSessionId: Schema.optional(Schema.String),
  contentType: Schema.optional(Schema.String),
  applicationProperties: Schema.optional(
    Schema.Record({ key: Schema.String, value: Schema.Union(Schema.String, Schema.Number, Schema.Boolean) })
  )
})

export const FilterSchema = Schema.Union(
  Schema.Boolean,
  Schema.Struct({ sql: Schema.String }),
  Schema.Struct({ correlation: CorrelationSchema })
)

export const RuleSchema = Schema.Struct({
  name: Schema.String,
  filter: FilterSchema
})

const common = {
  lockDuration: Schema.optional(DurationField),
  maxDeliveryCount: Schema.optional(Schema.Int.pipe(Schema.positive())),
  defaultMessageTimeToLive: Schema.optional(DurationField),
  deadLetteringOnMessageExpiration: Schema.optional(Schema.Boolean)
}

export const SubscriptionSchema = Schema.Struct({
  name: Schema.String,
  ...common,
  /** Shorthand for one rule named `$Default`. */
  filter: Schema.optional(FilterSchema),
  rules: Schema.optional(Schema.Array(RuleSchema))
})

const sendSide = {
  requiresDuplicateDetection: Schema.optional(Schema.Boolean),
  duplicateDetectionHistoryTimeWindow: Schema.optional(DurationField),
  maxMessageSizeInKilobytes: Schema.optional(Schema.Int.pipe(Schema.positive()))
}

export const QueueSchema = Schema.Struct({
  name: Schema.String,
  ...common,
  ...sendSide
})

export const TopicSchema = Schema.Struct({
  name: Schema.String,
  defaultMessageTimeToLive: Schema.optional(DurationField),
  ...sendSide,
  subscriptions: Schema.optional(Schema.Array(SubscriptionSchema))
})

/** The JSON file the CLI reads (and `entitiesFromJson` decodes). */
export const ConfigFileSchema = Schema.Struct({
  host: Schema.optional(Schema.String),
  port: Schema.optional(Schema.Int),
  sharedAccessKeyName: Schema.optional(Schema.String),
  sharedAccessKey: Schema.optional(Schema.String),
  acceptJwt: Schema.optional(Schema.Boolean),
  queues: Schema.optional(Schema.Array(QueueSchema)),
  topics: Schema.optional(Schema.Array(TopicSchema))
})

export type ConfigFile = typeof ConfigFileSchema.Type

/** A duration given as a number of milliseconds, ISO 8601, or an Effect duration. */
export type DurationLike = Duration.DurationInput | string

const ISO = /^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$/i

/** Milliseconds of a duration; throws a readable error when it cannot be read. */
export const toMillis = (value: DurationLike, field: string): number => {
  if (typeof value === "number") return value
  if (typeof value === "string") {
    const iso = ISO.exec(value.trim())
    if (iso !== null && value.trim().length > 1) {
      const [, d, h, m, s] = iso
      return (Number(d ?? 0) * 86400 + Number(h ?? 0) * 3600 + Number(m ?? 0) * 60 + Number(s ?? 0)) * 1000
    }
  }
  const decoded = Duration.decodeUnknown(value)
  if (decoded._tag === "None") {
    throw new Error(`"${field}" is not a duration: ${String(value)} (use milliseconds, "PT30S" or "30 seconds").`)
  }
  return Duration.toMillis(decoded.value)
}

export const defaults = {
  lockDurationMs: 60_000,
  maxDeliveryCount: 10,
  defaultTtlMs: Number.POSITIVE_INFINITY,
  duplicateDetectionWindowMs: 600_000,
  maxMessageSizeBytes: 256 * 1024
} as const

interface SettingsInput {
  readonly lockDuration?: DurationLike | undefined
  readonly maxDeliveryCount?: number | undefined
  readonly defaultMessageTimeToLive?: DurationLike | undefined
  readonly deadLetteringOnMessageExpiration?: boolean | undefined
  readonly requiresDuplicateDetection?: boolean | undefined
  readonly duplicateDetectionHistoryTimeWindow?: DurationLike | undefined
  readonly maxMessageSizeInKilobytes?: number | undefined
}

/** Broker settings from entity options, with Service Bus defaults. */
export const settingsOf = (input: SettingsInput, name: string): EntitySettings => {
  const lockDurationMs = input.lockDuration === undefined
    ? defaults.lockDurationMs
    : toMillis(input.lockDuration, `${name}.lockDuration`)
  if (lockDurationMs <= 0 || lockDurationMs > 300_000) {
    throw new Error(`"${name}.lockDuration" must be more than 0 and at most 5 minutes, as on Service Bus.`)
  }
  const windowMs = input.duplicateDetectionHistoryTimeWindow === undefined
    ? defaults.duplicateDetectionWindowMs
    : toMillis(input.duplicateDetectionHistoryTimeWindow, `${name}.duplicateDetectionHistoryTimeWindow`)
  const detect = input.requiresDuplicateDetection ?? input.duplicateDetectionHistoryTimeWindow !== undefined
  return {
    lockDurationMs,
    maxDeliveryCount: input.maxDeliveryCount ?? defaults.maxDeliveryCount,
    defaultTtlMs: input.defaultMessageTimeToLive === undefined
      ? defaults.defaultTtlMs
      : toMillis(input.defaultMessageTimeToLive, `${name}.defaultMessageTimeToLive`),
    deadLetterOnExpiry: input.deadLetteringOnMessageExpiration ?? false,
    duplicateDetectionWindowMs: detect ? windowMs : 0,
    maxMessageSizeBytes: (input.maxMessageSizeInKilobytes ?? 256) * 1024
  }
}

/** Compiled rules of a subscription; without any, the subscription takes every message. */
export const rulesOf = (
  input: {
    readonly filter?: FilterConfig | undefined
    readonly rules?: ReadonlyArray<{ readonly name: string; readonly filter: FilterConfig }> | undefined
  },
  name: string
): Array<Rule> => {
  const configured = input.rules ?? (input.filter === undefined ? [] : [{ name: "$Default", filter: input.filter }])
  const rules = configured.length === 0 ? [{ name: "$Default", filter: true as FilterConfig }] : configured
  return rules.map((rule) => {
    try {
      return { name: rule.name, predicate: compile(rule.filter) }
    } catch (error) {
      throw new Error(
        `Rule "${rule.name}" of subscription "${name}": ${error instanceof Error ? error.message : String(error)}`
      )
    }
  })
}

/** Decodes a config file's JSON text. */
export const decodeConfigFile = (text: string): Either.Either<ConfigFile, string> => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (error) {
    return Either.left(`The config file is not valid JSON: ${String(error)}`)
  }
  return Schema.decodeUnknownEither(ConfigFileSchema)(json).pipe(
    Either.mapLeft((error) => `The config file does not match the expected shape: ${error.message}`)
  )
}

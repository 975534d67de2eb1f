/**
 * Request/response over an entity's `$management` node on one rhea session: a sender whose
 * target is `<entity>/$management` and a receiver whose source is that node and whose target is
 * the reply address. Requests are AMQP messages with `operation` (and `associated-link-name`) in
 * their application properties and a map body; answers are matched by `correlation-id` and carry
 * `statusCode`, `statusDescription` and `errorCondition`. A request may be enlisted in a
 * transaction (its transfer carries `transactional-state`); Service Bus then answers the transfer
 * with a plain `accepted` and the outcome is in the response.
 */
import { Either } from "effect"
import type { Delivery, EventContext, Message, Receiver, Sender } from "rhea"
import rhea from "rhea"
import { sendTransactional } from "./transactionalTransfer.js"

/** Operation names of the `$management` node. */
export const Operations = {
  renewLock: "com.microsoft:renew-lock",
  updateDisposition: "com.microsoft:update-disposition"
} as const

/** A `$management` answer. Status codes 200 and 204 are successes. */
export interface ManagementResponse {
  readonly statusCode: number
  readonly description: string | undefined
  readonly condition: string | undefined
  readonly body: unknown
}

/** Why a request got no answer: the links closed, or the request transfer was refused. */
export interface ManagementFailure {
  readonly _tag: "LinkClosed" | "Refused" | "Unsupported"
  readonly reason: string
  readonly condition?: string | undefined
}

export interface ManagementRequest {
  readonly operation: string
  /** The request's map body (rhea wraps plain objects as maps with string keys). */
  readonly body: Record<string, unknown>
  /** When given, the request is enlisted in this transaction. */
  readonly txnId?: Uint8Array | undefined
}

export interface ManagementChannel {
  readonly sender: Sender
  readonly receiver: Receiver
  /**
   * Writes a request and calls `onAnswer` once with the response (or why there is none).
   * Returns a function that stops listening; no timeout (callers set one).
   */
  readonly request: (
    request: ManagementRequest,
    onAnswer: (answer: Either.Either<ManagementResponse, ManagementFailure>) => void
  ) => () => void
}

export const isSuccess = (response: ManagementResponse): boolean =>
  response.statusCode === 200 || response.statusCode === 204

const str = (value: unknown): string | undefined => typeof value === "string" ? value : undefined

const num = (value: unknown): number | undefined =>
  typeof value === "number" ? value : typeof value === "bigint" ? Number(value) : undefined

/** Reads a response; status properties are camelCase on Service Bus, kebab-case on some brokers. */
export const readResponse = (message: Message): ManagementResponse => {
  const properties = (message.application_properties ?? {}) as Record<string, unknown>
  const statusCode = num(properties.statusCode) ?? num(properties["status-code"]) ?? 0
  const condition = properties.errorCondition ?? properties["error-condition"]
  return {
    statusCode,
    description: str(properties.statusDescription) ?? str(properties["status-description"]),
    condition: typeof condition === "string"
      ? condition
      : condition === undefined || condition === null
      ? undefined
      : String(condition),
    body: message.body
  }
}

/** The lock token (a GUID string) as the `uuid` the node expects. */
export const lockTokenValue = (lockToken: string): unknown => rhea.string_to_uuid(lockToken)

/** `lock-tokens`: an array of uuids. */
export const lockTokensArray = (lockTokens: ReadonlyArray<string>): unknown =>
  rhea.types.wrap_array(lockTokens.map(lockTokenValue), 0x98, undefined)

/** The `expirations` of a `renew-lock` answer, as dates. */
export const expirationsOf = (body: unknown): ReadonlyArray<Date> => {
  const map = typeof body === "object" && body !== null ? body as Record<string, unknown> : {}
  const list = map.expirations
  if (!Array.isArray(list)) return []
  return list.map((value: unknown) => value instanceof Date ? value : new Date(num(value) ?? Number.NaN))
}

interface Waiter {
  readonly onAnswer: (answer: Either.Either<ManagementResponse, ManagementFailure>) => void
  delivery: Delivery | undefined
}

/**
 * A channel over already attached links. `replyTo` is the receiver's target address;
 * `associatedLinkName` (the receive link whose messages are settled or renewed) is sent with
 * every request, as the SDKs do.
 */
export const make = (options: {
  readonly sender: Sender
  readonly receiver: Receiver
  readonly replyTo: string
  readonly associatedLinkName?: string | undefined
}): ManagementChannel => {
  const { associatedLinkName, receiver, replyTo, sender } = options
  const waiters = new Map<string, Waiter>()
  const byDelivery = new Map<Delivery, string>()
  const prefix = crypto.randomUUID()
  let next = 0

  receiver.on("message", (ctx: EventContext) => {
    const message = ctx.message
    if (message === undefined) return
    const id = message.correlation_id
    const key = typeof id === "string" ? id : id === undefined ? undefined : String(id)
    if (key === undefined) return
    const waiter = waiters.get(key)
    if (waiter === undefined) return
    waiters.delete(key)
    if (waiter.delivery !== undefined) byDelivery.delete(waiter.delivery)
    waiter.onAnswer(Either.right(readResponse(message)))
  })
  const onRefused = (ctx: EventContext) => {
    const delivery = ctx.delivery
    if (delivery === undefined) return
    const key = byDelivery.get(delivery)
    if (key === undefined) return
    byDelivery.delete(delivery)
    const waiter = waiters.get(key)
    if (waiter === undefined) return
    waiters.delete(key)
    const error = (delivery.remote_state as { error?: { condition?: unknown; description?: unknown } } | undefined)
      ?.error
    waiter.onAnswer(Either.left({
      _tag: "Refused",
      reason: str(error?.description) ?? "the management request was refused",
      condition: str(error?.condition)
    }))
  }
  const onAccepted = (ctx: EventContext) => {
    if (ctx.delivery !== undefined) byDelivery.delete(ctx.delivery)
  }
  sender.on("rejected", onRefused)
  sender.on("released", onRefused)
  sender.on("modified", onRefused)
  sender.on("accepted", onAccepted)
  const onClose = () => {
    const all = [...waiters.values()]
    waiters.clear()
    byDelivery.clear()
    for (const waiter of all) waiter.onAnswer(Either.left({ _tag: "LinkClosed", reason: "the management link closed" }))
  }
  for (const e of ["sender_close", "sender_error"]) sender.on(e, onClose)
  for (const e of ["receiver_close", "receiver_error"]) receiver.on(e, onClose)

  const request = (
    req: ManagementRequest,
    onAnswer: (answer: Either.Either<ManagementResponse, ManagementFailure>) => void
  ): () => void => {
    const id = `${prefix}-${next++}`
    const applicationProperties: Record<string, unknown> = { operation: req.operation }
    if (associatedLinkName !== undefined) applicationProperties["associated-link-name"] = associatedLinkName
    const message: Message = {
      message_id: id,
      reply_to: replyTo,
      application_properties: applicationProperties,
      body: req.body
    }
    const waiter: Waiter = { onAnswer, delivery: undefined }
    waiters.set(id, waiter)
    if (req.txnId === undefined) {
      waiter.delivery = sender.send(message)
    } else {
      const sent = sendTransactional(sender, message, req.txnId)
      if (Either.isLeft(sent)) {
        waiters.delete(id)
        onAnswer(Either.left({ _tag: "Unsupported", reason: sent.left.message }))
        return () => undefined
      }
      waiter.delivery = sent.right
    }
    byDelivery.set(waiter.delivery, id)
    return () => {
      if (waiters.get(id) === waiter) {
        waiters.delete(id)
        if (waiter.delivery !== undefined) byDelivery.delete(waiter.delivery)
      }
    }
  }

  return { sender, receiver, request }
}

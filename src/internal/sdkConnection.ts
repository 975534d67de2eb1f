// The SDK client's AMQP connection, reached through an internal of the SDK. The SDK reconnects by
// itself, but not always in time: a link whose claim went out on the dropped connection holds
// the lock its reconnection waits for, and every call on the client then waits for the
// operation timeout. Knowing when the connection drops lets a call in flight on it end at once,
// and a client made by `ServiceBusClient.make` replace its SDK client. Without the internal
// (another SDK version), the loss is only seen in the errors of calls, as before.
import type { ServiceBusClient as SdkClient } from "@azure/service-bus"

/** The loss of one connection of an SDK client (the SDK makes a new one when it reconnects). */
export interface ConnectionLoss {
  readonly isLost: () => boolean
  /** Calls `f` once when the connection drops (at once if it has); returns how to stop listening. */
  readonly onLost: (f: () => void) => () => void
}

const watches = new WeakMap<object, ConnectionLoss>()

const connectionOf = (
  sdk: SdkClient
): { readonly once: (event: string, listener: () => void) => unknown } | undefined => {
  const context = (sdk as unknown as { readonly _connectionContext?: { readonly connection?: unknown } })
    ._connectionContext
  const connection = context?.connection as { readonly once?: unknown } | undefined
  return typeof connection?.once === "function"
    ? connection as { readonly once: (event: string, listener: () => void) => unknown }
    : undefined
}

/** The loss of the SDK client's current connection; undefined when the SDK does not show it. */
export const connectionLoss = (sdk: SdkClient): ConnectionLoss | undefined => {
  const connection = connectionOf(sdk)
  if (connection === undefined) return undefined
  const existing = watches.get(connection)
  if (existing !== undefined) return existing
  let lost = false
  const listeners = new Set<() => void>()
  const drop = () => {
    if (lost) return
    lost = true
    const all = [...listeners]
    listeners.clear()
    for (const listener of all) listener()
  }
  connection.once("disconnected", drop)
  connection.once("connection_close", drop)
  const watch: ConnectionLoss = {
    isLost: () => lost,
    onLost: (f) => {
      if (lost) {
        f()
        return () => undefined
      }
      listeners.add(f)
      return () => listeners.delete(f)
    }
  }
  watches.set(connection, watch)
  return watch
}

/** Calls `f` once, when the SDK client's current connection drops or is closed by the server. */
export const onDisconnected = (sdk: SdkClient, f: () => void): void => {
  connectionLoss(sdk)?.onLost(f)
}

// The SDK client each sender or receiver was made from: a client made by `ServiceBusClient.make`
// replaces its SDK client after a dropped connection, and the links of the old one are replaced
// on their next call.
const madeFrom = new WeakMap<object, SdkClient>()

/** Records that `link` (an SDK sender or receiver) was made from `sdk`. */
export const rememberClient = (link: object, sdk: SdkClient): void => {
  madeFrom.set(link, sdk)
}

/** Whether `link` was made from `sdk` (the client's current SDK client). */
export const madeBy = (link: object, sdk: SdkClient): boolean => madeFrom.get(link) === sdk

/**
 * The `onLost` of a callback wait on `link`'s connection: the wait ends with `error()` once that
 * connection drops. Empty when the connection cannot be watched.
 */
export const failOnLoss = <E>(
  link: object,
  error: () => E
): { readonly isLost: boolean; readonly onLost?: (f: (error: E) => void) => () => void } => {
  const sdk = madeFrom.get(link)
  const loss = sdk === undefined ? undefined : connectionLoss(sdk)
  if (loss === undefined) return { isLost: false }
  return { isLost: loss.isLost(), onLost: (lost) => loss.onLost(() => lost(error())) }
}

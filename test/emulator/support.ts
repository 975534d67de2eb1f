// Shared helpers for the emulator tests: an emulator and an official SDK client in a scope.
import type { ServiceBusReceivedMessage } from "@azure/service-bus"
import { ServiceBusClient } from "@azure/service-bus"
import type { Scope } from "effect"
import { Effect, Redacted } from "effect"
import { ServiceBusEmulator } from "../../src/emulator/index.js"

/** Starts an emulator for the scope. */
export const emulator = (options: ServiceBusEmulator.Options) => ServiceBusEmulator.make(options).pipe(Effect.orDie)

/** An official SDK client for the emulator, closed with the scope. Retries are short. */
export const client = (
  emu: ServiceBusEmulator.Emulator,
  options: { readonly maxRetries?: number; readonly connectionString?: string } = {}
): Effect.Effect<ServiceBusClient, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() =>
      new ServiceBusClient(options.connectionString ?? Redacted.value(emu.connectionString), {
        retryOptions: {
          maxRetries: options.maxRetries ?? 2,
          retryDelayInMs: 50,
          maxRetryDelayInMs: 200,
          timeoutInMs: 10_000
        }
      })
    ),
    (c) => Effect.promise(() => c.close())
  )

/** Runs a promise; a rejection fails the test as a defect. */
export const run = <A>(f: () => Promise<A>): Effect.Effect<A> => Effect.promise(f)

/** Runs a promise and keeps its rejection as the error, for `Effect.flip`. */
export const attempt = <A>(
  f: () => Promise<A>
): Effect.Effect<A, { readonly code?: string; readonly message: string }> =>
  Effect.tryPromise({ try: f, catch: (e) => e as { readonly code?: string; readonly message: string } })

/** Bodies of received messages. */
export const bodies = (messages: ReadonlyArray<ServiceBusReceivedMessage>): Array<unknown> =>
  messages.map((m) => m.body)

/** Receives until `count` messages arrived or `maxWaitTimeInMs` passed without one. */
export const receiveAll = (
  receive: (max: number) => Promise<Array<ServiceBusReceivedMessage>>,
  count: number
): Effect.Effect<Array<ServiceBusReceivedMessage>> =>
  Effect.promise(async () => {
    const out: Array<ServiceBusReceivedMessage> = []
    while (out.length < count) {
      const batch = await receive(count - out.length)
      if (batch.length === 0) break
      out.push(...batch)
    }
    return out
  })

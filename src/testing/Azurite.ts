/**
 * Azurite's Table service started in process, with in-memory persistence, on a free loopback
 * port: the embedded default for tests and examples, no Azure account needed.
 *
 * `azurite` is an optional peer dependency (pinned to 3.35.0, the last release that runs on
 * Node 20); it is loaded only when one of these functions runs.
 *
 * @since 0.1.0
 */
// eslint-disable-next-line @typescript-eslint/triple-slash-reference -- Azurite ships no types; these declarations travel with this module
/// <reference path="../internal/azurite.d.ts" />
import type { Scope } from "effect"
import { Context, Effect, Layer, Redacted } from "effect"

/**
 * The account name and key every Azurite instance accepts (public, documented by Microsoft).
 *
 * @since 0.1.0
 * @category models
 */
export const developmentAccount = {
  name: "devstoreaccount1",
  key: Redacted.make("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
} as const

/**
 * A running Table service.
 *
 * @since 0.1.0
 * @category models
 */
export interface AzuriteTables {
  /** `http://127.0.0.1:PORT/devstoreaccount1`. */
  readonly tableEndpoint: string
  /** A connection string for `@azure/data-tables` or `AzureTableEventStore.layer`. */
  readonly connectionString: Redacted.Redacted<string>
  /** The TCP port the service listens on. */
  readonly port: number
}

/**
 * Error raised when Azurite cannot be loaded or started.
 *
 * @since 0.1.0
 * @category errors
 */
export class AzuriteStartError extends Error {
  readonly _tag = "AzuriteStartError"
}

/**
 * Builds the connection string of an Azurite Table endpoint.
 *
 * @since 0.1.0
 * @category constructors
 */
export const connectionStringFor = (tableEndpoint: string): Redacted.Redacted<string> =>
  Redacted.make(
    `DefaultEndpointsProtocol=http;AccountName=${developmentAccount.name};AccountKey=${
      Redacted.value(developmentAccount.key)
    };TableEndpoint=${tableEndpoint};`
  )

/**
 * Starts the Table service with the Promise API, for tools such as Vitest's global setup.
 * Resolves to the running service and a function that stops it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const startTables = async (
  options: { readonly host?: string; readonly port?: number } = {}
): Promise<AzuriteTables & { readonly close: () => Promise<void> }> => {
  const [{ default: TableServer }, { default: TableConfiguration }] = await Promise.all([
    import("azurite/dist/src/table/TableServer.js"),
    import("azurite/dist/src/table/TableConfiguration.js")
  ])
  const host = options.host ?? "127.0.0.1"
  const configuration = new TableConfiguration(
    host,
    options.port ?? 0,
    undefined,
    `__azurite_db_table_${process.pid}_${Date.now()}__.json`,
    false,
    false,
    undefined,
    undefined,
    false,
    true,
    "",
    "",
    "",
    undefined,
    false,
    true
  )
  const server = new TableServer(configuration)
  await server.start()
  const address = new URL(server.getHttpServerAddress())
  const port = Number(address.port)
  const tableEndpoint = `http://${host}:${port}/${developmentAccount.name}`
  return {
    tableEndpoint,
    port,
    connectionString: connectionStringFor(tableEndpoint),
    close: async () => {
      await server.close()
      await server.clean()
    }
  }
}

/**
 * The running Table service, as a service.
 *
 * @since 0.1.0
 * @category services
 */
export class Azurite extends Context.Tag("effect-eventually/testing/Azurite")<Azurite, AzuriteTables>() {}

/**
 * Starts Azurite's Table service for the lifetime of the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: { readonly host?: string; readonly port?: number } = {}
): Effect.Effect<AzuriteTables, AzuriteStartError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => startTables(options),
      catch: (cause) =>
        new AzuriteStartError(
          `Azurite could not start (is the optional dependency azurite@3.35.0 installed?): ${String(cause)}`,
          { cause }
        )
    }),
    (running) => Effect.promise(() => running.close())
  ).pipe(Effect.map(({ close: _close, ...tables }) => tables))

/**
 * A layer that runs Azurite's Table service in process for as long as the layer is alive.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: { readonly host?: string; readonly port?: number } = {}): Layer.Layer<
  Azurite,
  AzuriteStartError
> => Layer.scoped(Azurite, make(options))

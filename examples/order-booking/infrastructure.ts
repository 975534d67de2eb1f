/**
 * Where the app's storage and Service Bus namespace are. From the environment when it names
 * them, otherwise embedded: Azurite and the Service Bus emulator started in process, on free
 * ports, for as long as the app runs.
 *
 * - `AZURE_STORAGE_CONNECTION_STRING`, or `AZURE_STORAGE_ACCOUNT_URL` with `DefaultAzureCredential`;
 * - `SERVICEBUS_CONNECTION_STRING`, or `SERVICEBUS_NAMESPACE` with `DefaultAzureCredential`.
 */
import type { TokenCredential } from "@azure/identity"
import { DefaultAzureCredential } from "@azure/identity"
import type { ConfigError, Scope } from "effect"
import { Config, Effect, Option, Redacted } from "effect"
import { ServiceBusEmulator } from "../../src/emulator/index.js"
import type * as ServiceBusClient from "../../src/ServiceBusClient.js"
import type * as ServiceBusTransaction from "../../src/ServiceBusTransaction.js"
import * as Azurite from "../../src/testing/Azurite.js"
import { entities } from "./entities.js"

export type Storage =
  | { readonly connectionString: Redacted.Redacted<string> }
  | { readonly accountUrl: string; readonly credential: TokenCredential }

export interface Infrastructure {
  readonly storage: Storage
  /** For the senders and receivers of `ServiceBusClient`. */
  readonly serviceBus: ServiceBusClient.ServiceBusClientOptions
  /** For the processors' AMQP connections (transactions). */
  readonly connection: ServiceBusTransaction.Connection
  /** Where things are, without secrets, to print at start. */
  readonly description: ReadonlyArray<string>
}

const namespaceHost = (namespace: string): string =>
  namespace.includes(".") ? namespace : `${namespace}.servicebus.windows.net`

// The host part of an account URL or a Service Bus endpoint, never the key.
const storageAccountOf = (connectionString: string): string => {
  const account = /AccountName=([^;]+)/i.exec(connectionString)?.[1]
  return account === undefined ? "the account in AZURE_STORAGE_CONNECTION_STRING" : `account ${account}`
}
const serviceBusEndpointOf = (connectionString: string): string =>
  /Endpoint=sb:\/\/([^/;]+)/i.exec(connectionString)?.[1] ?? "the namespace in SERVICEBUS_CONNECTION_STRING"

const settings = Config.all({
  storageConnectionString: Config.option(Config.redacted("AZURE_STORAGE_CONNECTION_STRING")),
  storageAccountUrl: Config.option(Config.string("AZURE_STORAGE_ACCOUNT_URL")),
  serviceBusConnectionString: Config.option(Config.redacted("SERVICEBUS_CONNECTION_STRING")),
  serviceBusNamespace: Config.option(Config.string("SERVICEBUS_NAMESPACE"))
})

export const make = Effect.fn("OrderBooking.infrastructure")(function*(): Effect.fn.Return<
  Infrastructure,
  | Azurite.AzuriteStartError
  | ServiceBusEmulator.EmulatorStartError
  | ServiceBusEmulator.EmulatorConfigError
  | ConfigError.ConfigError,
  Scope.Scope
> {
  const env = yield* settings
  // One credential for both services: it caches its tokens.
  let credential: TokenCredential | undefined
  const azureCredential = () => (credential ??= new DefaultAzureCredential())

  const description: Array<string> = []
  let storage: Storage
  if (Option.isSome(env.storageConnectionString)) {
    storage = { connectionString: env.storageConnectionString.value }
    description.push(`Table Storage: ${storageAccountOf(Redacted.value(env.storageConnectionString.value))}`)
  } else if (Option.isSome(env.storageAccountUrl)) {
    storage = { accountUrl: env.storageAccountUrl.value, credential: azureCredential() }
    description.push(`Table Storage: ${env.storageAccountUrl.value} (DefaultAzureCredential)`)
  } else {
    const azurite = yield* Azurite.make()
    storage = { connectionString: azurite.connectionString }
    description.push(`Table Storage: Azurite, in process at ${azurite.tableEndpoint}`)
  }

  let serviceBus: ServiceBusClient.ServiceBusClientOptions
  let connection: ServiceBusTransaction.Connection
  if (Option.isSome(env.serviceBusConnectionString)) {
    const connectionString = env.serviceBusConnectionString.value
    serviceBus = { connectionString }
    connection = { connectionString }
    description.push(`Service Bus: ${serviceBusEndpointOf(Redacted.value(connectionString))}`)
  } else if (Option.isSome(env.serviceBusNamespace)) {
    const fullyQualifiedNamespace = namespaceHost(env.serviceBusNamespace.value)
    serviceBus = { fullyQualifiedNamespace, credential: azureCredential() }
    connection = { fullyQualifiedNamespace, credential: azureCredential() }
    description.push(`Service Bus: ${fullyQualifiedNamespace} (DefaultAzureCredential)`)
  } else {
    const emulator = yield* ServiceBusEmulator.make(entities)
    serviceBus = { connectionString: emulator.connectionString }
    connection = { connectionString: emulator.connectionString }
    description.push(`Service Bus: emulator, in process at ${emulator.endpoint}`)
  }
  return { storage, serviceBus, connection, description }
})

// Starts Azurite's Table service once for the whole test run (in process, in memory, loopback,
// free port) and hands its connection string to the tests through `inject("azurite")`.
import { Redacted } from "effect"
import type {} from "vitest"
import type { TestProject } from "vitest/node"
import { startTables } from "../../src/testing/Azurite.js"

declare module "vitest" {
  export interface ProvidedContext {
    azurite: { readonly connectionString: string; readonly tableEndpoint: string }
  }
}

export default async function setup(project: TestProject) {
  const tables = await startTables()
  project.provide("azurite", {
    connectionString: Redacted.value(tables.connectionString),
    tableEndpoint: tables.tableEndpoint
  })
  return async () => {
    await tables.close()
  }
}

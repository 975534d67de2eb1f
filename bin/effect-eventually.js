#!/usr/bin/env node
// The operations command line: effect-eventually stream read <streamId>, outbox lag, dlq peek ...
// Runs the compiled module when the package is built, and the TypeScript source through tsx
// otherwise.
import { existsSync } from "node:fs"
import { fileURLToPath } from "node:url"

const built = new URL("../dist/cli/main.js", import.meta.url)
let cli
if (existsSync(fileURLToPath(built))) {
  cli = await import(built.href)
} else {
  const { register } = await import("tsx/esm/api")
  register()
  cli = await import(new URL("../src/cli/main.ts", import.meta.url).href)
}
process.exitCode = await cli.main(process.argv.slice(2))

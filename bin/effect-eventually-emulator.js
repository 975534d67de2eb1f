#!/usr/bin/env node
// Starts the Service Bus emulator: effect-eventually-emulator --port 5672 --config entities.json
// Runs the compiled module when the package is built, and the TypeScript source through tsx
// otherwise.
import { existsSync } from "node:fs"
import { fileURLToPath } from "node:url"

const built = new URL("../dist/emulator/internal/cli.js", import.meta.url)
let cli
if (existsSync(fileURLToPath(built))) {
  cli = await import(built.href)
} else {
  const { register } = await import("tsx/esm/api")
  register()
  cli = await import(new URL("../src/emulator/internal/cli.ts", import.meta.url).href)
}
process.exitCode = await cli.main(process.argv.slice(2))

#!/usr/bin/env node
// Starts the Service Bus emulator: effect-eventually-emulator --port 5672 --config entities.json
import { run } from "./run.js"

await run("emulator/internal/cli")

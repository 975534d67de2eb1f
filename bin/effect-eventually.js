#!/usr/bin/env node
// The operations command line: effect-eventually stream read <streamId>, outbox lag, dlq peek ...
import { run } from "./run.js"

await run("cli/main")

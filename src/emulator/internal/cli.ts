// The command line: `effect-eventually-emulator --port 5672 --config entities.json`.
import { Either, Redacted } from "effect"
import { readFileSync } from "node:fs"
import { parseArgs } from "node:util"
import type { Options } from "../ServiceBusEmulator.js"
import { start } from "../ServiceBusEmulator.js"
import { decodeConfigFile } from "./config.js"

const usage = `Usage: effect-eventually-emulator [options]

Runs a local Azure Service Bus emulator (AMQP 1.0, plain TCP) for the official SDKs.

Options:
  --port <n>          TCP port (default 5672; 0 picks a free port)
  --host <address>    interface to listen on (default 127.0.0.1)
  --config <file>     JSON file with queues, topics and subscriptions (see docs/emulator.md)
  --key <key>         shared access key that clients must use (default: any key is accepted)
  --key-name <name>   shared access key name (default RootManageSharedAccessKey)
  --help              show this help
`

/** Runs the CLI; resolves with the process exit code once the emulator is stopped. */
export const main = async (argv: ReadonlyArray<string>): Promise<number> => {
  let args: ReturnType<typeof parse>
  try {
    args = parse(argv)
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n\n${usage}`)
    return 2
  }
  if (args.values.help === true) {
    process.stdout.write(usage)
    return 0
  }
  let options: Options = {}
  if (args.values.config !== undefined) {
    let text: string
    try {
      text = readFileSync(args.values.config, "utf8")
    } catch (error) {
      process.stderr.write(`Cannot read the config file ${args.values.config}: ${String(error)}\n`)
      return 2
    }
    const decoded = decodeConfigFile(text)
    if (Either.isLeft(decoded)) {
      process.stderr.write(`${args.values.config}: ${decoded.left}\n`)
      return 2
    }
    options = decoded.right
  }
  const port = args.values.port === undefined ? options.port ?? 5672 : Number(args.values.port)
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`--port must be a TCP port number, got ${String(args.values.port)}\n`)
    return 2
  }
  let emulator: Awaited<ReturnType<typeof start>>
  try {
    emulator = await start({
      ...options,
      port,
      host: args.values.host ?? options.host ?? "127.0.0.1",
      sharedAccessKey: args.values.key ?? options.sharedAccessKey,
      sharedAccessKeyName: args.values["key-name"] ?? options.sharedAccessKeyName
    })
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`)
    return 1
  }
  process.stdout.write(
    `Service Bus emulator listening on ${emulator.host}:${emulator.port}\n` +
      `Connection string: ${Redacted.value(emulator.connectionString)}\n`
  )
  await new Promise<void>((resolve) => {
    const stop = () => resolve()
    process.once("SIGINT", stop)
    process.once("SIGTERM", stop)
  })
  await emulator.close()
  return 0
}

const parse = (argv: ReadonlyArray<string>) =>
  parseArgs({
    args: [...argv],
    options: {
      port: { type: "string" },
      host: { type: "string" },
      config: { type: "string" },
      key: { type: "string" },
      "key-name": { type: "string" },
      help: { type: "boolean" }
    },
    strict: true
  })

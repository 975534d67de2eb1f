// A small argv parser for the operations CLI: commands of one to three words, positional
// arguments, and `--name value` / `--name=value` options typed as string, integer or flag.
// Parsing is pure and returns a value, so every rule is unit-tested without running a command.
import { Either } from "effect"
import type { CommandSpec, OptionSpec, OptionValues } from "../Cli.js"

export type Parsed<C extends CommandSpec> =
  | { readonly _tag: "Help"; readonly command: C | undefined; readonly prefix: ReadonlyArray<string> }
  | {
    readonly _tag: "Run"
    readonly command: C
    readonly args: ReadonlyArray<string>
    readonly options: OptionValues
  }

export interface UsageError {
  readonly _tag: "UsageError"
  readonly message: string
  /** The command the error is about, for its usage line. */
  readonly command: CommandSpec | undefined
  readonly prefix: ReadonlyArray<string>
}

const usageError = (
  message: string,
  command: CommandSpec | undefined,
  prefix: ReadonlyArray<string> = []
): UsageError => ({ _tag: "UsageError", message, command, prefix })

const isHelp = (token: string) => token === "--help" || token === "-h"

const startsWith = (path: ReadonlyArray<string>, prefix: ReadonlyArray<string>) =>
  prefix.length <= path.length && prefix.every((word, index) => path[index] === word)

export const parse = <C extends CommandSpec>(
  commands: ReadonlyArray<C>,
  argv: ReadonlyArray<string>
): Either.Either<Parsed<C>, UsageError> => {
  const end = argv.indexOf("--")
  const help = (end === -1 ? argv : argv.slice(0, end)).some(isHelp)
  // The command is the longest run of leading words that names one (or a group of them).
  const words: Array<string> = []
  for (const token of argv) {
    if (token.startsWith("-")) break
    const next = [...words, token]
    if (!commands.some((command) => startsWith(command.path, next))) break
    words.push(token)
  }
  const command = commands.find((candidate) =>
    candidate.path.length === words.length && startsWith(candidate.path, words)
  )
  if (command === undefined) {
    if (help || argv.length === 0) return Either.right({ _tag: "Help", command: undefined, prefix: words })
    const unknown = argv[words.length]
    return Either.left(
      usageError(
        unknown === undefined
          ? `'${words.join(" ")}' needs a subcommand`
          : unknown.startsWith("-")
          ? `unknown option '${unknown}'${words.length === 0 ? "" : ` for '${words.join(" ")}'`}`
          : `unknown command '${[...words, unknown].join(" ")}'`,
        undefined,
        words
      )
    )
  }
  if (help) return Either.right({ _tag: "Help", command, prefix: words })

  const args: Array<string> = []
  const values: Record<string, string | number | boolean | undefined> = {}
  const rest = argv.slice(words.length)
  for (let index = 0; index < rest.length; index++) {
    const token = rest[index]
    if (token === "--") {
      args.push(...rest.slice(index + 1))
      break
    }
    if (!token.startsWith("--") || token === "-") {
      if (token.startsWith("-") && token !== "-") return Either.left(usageError(`unknown option '${token}'`, command))
      args.push(token)
      continue
    }
    const equals = token.indexOf("=")
    const name = token.slice(2, equals === -1 ? undefined : equals)
    const spec = command.options.find((option) => option.name === name)
    if (spec === undefined) return Either.left(usageError(`unknown option '--${name}'`, command))
    if (spec.kind === "flag") {
      if (equals !== -1) return Either.left(usageError(`'--${name}' takes no value`, command))
      values[name] = true
      continue
    }
    let raw: string
    if (equals !== -1) {
      raw = token.slice(equals + 1)
    } else {
      const next = rest[index + 1]
      if (next === undefined || next.startsWith("--")) {
        return Either.left(usageError(`'--${name}' needs a value (${spec.placeholder ?? "value"})`, command))
      }
      raw = next
      index++
    }
    if (spec.kind === "integer") {
      const value = /^\d+$/.test(raw) ? Number(raw) : Number.NaN
      if (!Number.isSafeInteger(value)) {
        return Either.left(usageError(`'--${name}' needs a whole number of 0 or more, not '${raw}'`, command))
      }
      values[name] = value
    } else {
      if (raw === "") {
        return Either.left(usageError(`'--${name}' needs a value (${spec.placeholder ?? "value"})`, command))
      }
      values[name] = raw
    }
  }
  for (const option of command.options) {
    if (values[option.name] !== undefined) continue
    if (option.kind === "flag") values[option.name] = false
    else if (option.default !== undefined) values[option.name] = option.default
    else if (option.required === true) {
      return Either.left(usageError(`missing option '--${option.name} ${option.placeholder ?? "value"}'`, command))
    }
  }
  if (args.length < command.args.length) {
    return Either.left(usageError(`missing argument <${command.args[args.length].name}>`, command))
  }
  if (args.length > command.args.length) {
    return Either.left(usageError(`unexpected argument '${args[command.args.length]}'`, command))
  }
  return Either.right({ _tag: "Run", command, args, options: values })
}

const optionLabel = (option: OptionSpec) =>
  option.kind === "flag" ? `--${option.name}` : `--${option.name} ${option.placeholder ?? "value"}`

export const usage = (program: string, command: CommandSpec): string => {
  const options = command.options.map((option) =>
    option.required === true ? optionLabel(option) : `[${optionLabel(option)}]`
  )
  return [program, ...command.path, ...command.args.map((arg) => `<${arg.name}>`), ...options].join(" ")
}

const table = (rows: ReadonlyArray<readonly [string, string]>): Array<string> => {
  const width = Math.max(0, ...rows.map(([left]) => left.length))
  return rows.map(([left, right]) => `  ${left.padEnd(width)}  ${right}`)
}

export const commandHelp = (program: string, command: CommandSpec): string => {
  const lines = [`Usage: ${usage(program, command)}`, "", command.summary]
  if (command.details !== undefined) lines.push("", command.details)
  if (command.args.length > 0) {
    lines.push("", "Arguments:", ...table(command.args.map((arg) => [`<${arg.name}>`, arg.description] as const)))
  }
  const options = [
    ...command.options.map((option) =>
      [
        optionLabel(option),
        option.default === undefined ? option.description : `${option.description} (default: ${option.default})`
      ] as const
    ),
    ["--help", "show this help"] as const
  ]
  lines.push("", "Options:", ...table(options))
  return lines.join("\n") + "\n"
}

export const overview = (
  program: string,
  commands: ReadonlyArray<CommandSpec>,
  prefix: ReadonlyArray<string>,
  footer: string
): string => {
  const shown = commands.filter((command) => startsWith(command.path, prefix))
  const lines = [
    `Usage: ${program} ${prefix.length > 0 ? prefix.join(" ") + " " : ""}<command> [options]`,
    "",
    "Commands:",
    ...table(shown.map((command) => [command.path.join(" "), command.summary] as const)),
    "",
    `Run '${program} <command> --help' for the arguments and options of a command.`
  ]
  if (footer !== "") lines.push("", footer)
  return lines.join("\n") + "\n"
}

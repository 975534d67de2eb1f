import { assert, describe, it } from "@effect/vitest"
import { Either } from "effect"
import type { CommandSpec } from "../../src/cli/Cli.js"
import { commandHelp, overview, parse, usage } from "../../src/cli/internal/argv.js"

const read: CommandSpec = {
  path: ["stream", "read"],
  summary: "print the events of a stream",
  args: [{ name: "streamId", description: "the stream" }],
  options: [
    { name: "from", kind: "integer", placeholder: "N", default: 1, description: "first version" },
    { name: "table", kind: "string", placeholder: "NAME", description: "table" },
    { name: "json", kind: "flag", description: "JSON lines" }
  ]
}
const lag: CommandSpec = { path: ["outbox", "lag"], summary: "lag", args: [], options: [] }
const rebuild: CommandSpec = {
  path: ["projection", "rebuild", "rooms"],
  summary: "rebuild rooms",
  args: [],
  options: [{ name: "streams", kind: "string", placeholder: "FILE", required: true, description: "streams" }]
}
const commands = [read, lag, rebuild]

const run = (argv: ReadonlyArray<string>) => {
  const parsed = parse(commands, argv)
  if (Either.isLeft(parsed)) throw new Error(parsed.left.message)
  if (parsed.right._tag !== "Run") throw new Error("expected a command")
  return parsed.right
}
const error = (argv: ReadonlyArray<string>) => {
  const parsed = parse(commands, argv)
  if (Either.isRight(parsed)) throw new Error("expected a usage error")
  return parsed.left.message
}

describe("argv parsing", () => {
  it("parses a command, its argument and its defaults", () => {
    const parsed = run(["stream", "read", "booking-1"])
    assert.strictEqual(parsed.command, read)
    assert.deepStrictEqual(parsed.args, ["booking-1"])
    assert.deepStrictEqual(parsed.options, { from: 1, json: false })
  })

  it("reads options before and after arguments, with a space or an equals sign", () => {
    assert.deepStrictEqual(run(["stream", "read", "--from", "3", "s", "--table=events2", "--json"]).options, {
      from: 3,
      table: "events2",
      json: true
    })
    assert.deepStrictEqual(run(["stream", "read", "s", "--from=0"]).options.from, 0)
  })

  it("takes everything after -- as arguments", () => {
    assert.deepStrictEqual(run(["stream", "read", "--", "--odd-stream"]).args, ["--odd-stream"])
  })

  it("parses commands of three words and required options", () => {
    assert.deepStrictEqual(run(["projection", "rebuild", "rooms", "--streams", "s.txt"]).options, {
      streams: "s.txt"
    })
    assert.strictEqual(error(["projection", "rebuild", "rooms"]), "missing option '--streams FILE'")
  })

  it("refuses bad integers, unknown options, missing values and extra arguments", () => {
    assert.strictEqual(
      error(["stream", "read", "s", "--from", "-1"]),
      "'--from' needs a whole number of 0 or more, not '-1'"
    )
    assert.strictEqual(
      error(["stream", "read", "s", "--from", "x"]),
      "'--from' needs a whole number of 0 or more, not 'x'"
    )
    assert.strictEqual(
      error(["stream", "read", "s", "--from=1.5"]),
      "'--from' needs a whole number of 0 or more, not '1.5'"
    )
    assert.strictEqual(error(["stream", "read", "s", "--from"]), "'--from' needs a value (N)")
    assert.strictEqual(error(["stream", "read", "s", "--table="]), "'--table' needs a value (NAME)")
    assert.strictEqual(error(["stream", "read", "s", "--nope"]), "unknown option '--nope'")
    assert.strictEqual(error(["stream", "read", "s", "-x"]), "unknown option '-x'")
    assert.strictEqual(error(["stream", "read", "s", "--json=yes"]), "'--json' takes no value")
    assert.strictEqual(error(["stream", "read"]), "missing argument <streamId>")
    assert.strictEqual(error(["stream", "read", "a", "b"]), "unexpected argument 'b'")
    assert.strictEqual(error(["outbox", "lag", "x"]), "unexpected argument 'x'")
  })

  it("names unknown commands and incomplete ones", () => {
    assert.strictEqual(error(["stream", "write"]), "unknown command 'stream write'")
    assert.strictEqual(error(["nope"]), "unknown command 'nope'")
    assert.strictEqual(error(["stream"]), "'stream' needs a subcommand")
    assert.strictEqual(error(["--version"]), "unknown option '--version'")
  })

  it("answers --help and -h anywhere before --, for a command, a group or everything", () => {
    const help = (argv: ReadonlyArray<string>) => {
      const parsed = parse(commands, argv)
      if (Either.isLeft(parsed) || parsed.right._tag !== "Help") throw new Error("expected help")
      return parsed.right
    }
    assert.strictEqual(help(["stream", "read", "--help"]).command, read)
    assert.strictEqual(help(["stream", "read", "s", "--from", "x", "-h"]).command, read)
    assert.deepStrictEqual(help(["stream", "--help"]), { _tag: "Help", command: undefined, prefix: ["stream"] })
    assert.deepStrictEqual(help([]), { _tag: "Help", command: undefined, prefix: [] })
    assert.strictEqual(run(["stream", "read", "--", "--help"]).args[0], "--help")
  })

  it("prints usage and help from the spec", () => {
    assert.strictEqual(usage("ee", read), "ee stream read <streamId> [--from N] [--table NAME] [--json]")
    assert.strictEqual(usage("ee", rebuild), "ee projection rebuild rooms --streams FILE")
    const text = commandHelp("ee", read)
    assert.include(text, "<streamId>  the stream")
    assert.include(text, "--from N      first version (default: 1)")
    assert.include(text, "--help")
    const all = overview("ee", commands, ["stream"], "")
    assert.include(all, "stream read  print the events of a stream")
    assert.notInclude(all, "outbox lag")
  })
})

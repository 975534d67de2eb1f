// The entry point of bin/effect-eventually.js: the command line with the process's streams and
// environment.
import { main as run } from "./Cli.js"

export const main = (argv: ReadonlyArray<string>): Promise<number> => run(argv)

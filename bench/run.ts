// Runs every benchmark in bench/ (files named *.bench.ts), one child process each so that one
// benchmark's servers and garbage do not disturb the next. Pass names to run only some:
// `npm run bench -- append fold`. The library is built first, and the benchmarks run on the
// compiled code (see compiled.ts), as an application would.
import { spawnSync } from "node:child_process"
import { readdirSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const here = dirname(fileURLToPath(import.meta.url))
const wanted = process.argv.slice(2)
const files = readdirSync(here)
  .filter((file) => file.endsWith(".bench.ts"))
  .filter((file) => wanted.length === 0 || wanted.some((name) => file.startsWith(name)))
  .sort()

const root = join(here, "..")
const build = spawnSync(process.execPath, [
  join(root, "node_modules", "typescript", "bin", "tsc"),
  "-p",
  "tsconfig.build.json"
], {
  cwd: root,
  stdio: "inherit"
})
if (build.status !== 0) {
  console.log("# the build failed")
  process.exit(1)
}

let failed = 0
for (const file of files) {
  console.log(`# ${file}`)
  const result = spawnSync(process.execPath, [
    "--import",
    "tsx",
    "--import",
    join(here, "compiled.ts"),
    join(here, file)
  ], { stdio: "inherit" })
  if (result.status !== 0) {
    failed++
    console.log(`# ${file} failed with exit code ${result.status}`)
  }
}
process.exit(failed === 0 ? 0 : 1)

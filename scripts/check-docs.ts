// Type-checks every TypeScript code block in README.md, docs/*.md and the `@example` blocks of the
// JSDoc in src/. Blocks fenced as ```ts or ```typescript are checked; fence a fragment as
// ```ts no-check to leave it out.
// Imports of "effect-eventually" resolve to the sources, through tsconfig.docs.json.
import { spawnSync } from "node:child_process"
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { dirname, join, relative } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const out = join(root, ".tmp", "docs-snippets")
rmSync(out, { recursive: true, force: true })
mkdirSync(out, { recursive: true })

const markdown = [
  join(root, "README.md"),
  ...readdirSync(join(root, "docs"), { recursive: true })
    .map(String)
    .filter((file) => file.endsWith(".md"))
    .map((file) => join(root, "docs", file))
]

const jsdoc = readdirSync(join(root, "src"), { recursive: true })
  .map(String)
  .filter((file) => file.endsWith(".ts") && !file.endsWith(".d.ts"))
  .map((file) => join(root, "src", file))

// Inside a JSDoc comment a block's lines start with " * ": strip that to get the code.
const fromJsdoc = (text: string): string => text.replace(/^[ \t]*\* ?/gm, "")

let count = 0
const sources: Array<string> = []
for (const file of [...markdown, ...jsdoc]) {
  const raw = readFileSync(file, "utf8")
  const text = file.endsWith(".ts") ? fromJsdoc(raw) : raw
  const fence = /^```(ts|typescript)([^\n]*)\n([\s\S]*?)^```/gm
  for (const match of text.matchAll(fence)) {
    if (match[2].includes("no-check")) continue
    const line = text.slice(0, match.index).split("\n").length
    const name = `${relative(root, file).replace(/[^A-Za-z0-9]+/g, "_")}_L${line}.ts`
    // A block is a module of its own, so names don't clash between blocks.
    writeFileSync(join(out, name), `// ${relative(root, file)}:${line}\n${match[3]}\nexport {}\n`)
    sources.push(join(out, name))
    count++
  }
}

if (count === 0) {
  console.log("docs: no TypeScript blocks to check")
  process.exit(0)
}
const result = spawnSync(
  process.execPath,
  [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", join(root, "tsconfig.docs.json")],
  { stdio: "inherit", cwd: root }
)
if (result.status === 0) console.log(`docs: ${count} TypeScript blocks type-check`)
process.exit(result.status ?? 1)

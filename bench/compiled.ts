// Runs a benchmark on the library as it is published: every import that resolves to a file of
// `src/` is served from its compiled twin in `dist/`, which `bench/run.ts` builds before the
// benchmarks start. The raw SDK they are compared with is compiled JavaScript too; through `tsx`
// our side would also pay for the transform's helpers (a `__name` call for every closure made).
import { register } from "node:module"
import { dirname, join, sep } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")

const hooks = `
  import { existsSync } from "node:fs"
  import { fileURLToPath, pathToFileURL } from "node:url"
  const src = ${JSON.stringify(join(root, "src") + sep)}
  const dist = ${JSON.stringify(join(root, "dist") + sep)}
  export async function resolve(specifier, context, next) {
    const resolved = await next(specifier, context)
    if (!resolved.url.startsWith("file:")) return resolved
    const path = fileURLToPath(resolved.url)
    if (!path.startsWith(src) || !path.endsWith(".ts")) return resolved
    const compiled = dist + path.slice(src.length, -3) + ".js"
    return existsSync(compiled) ? { ...resolved, url: pathToFileURL(compiled).href, format: "module" } : resolved
  }
`
register(`data:text/javascript,${encodeURIComponent(hooks)}`)

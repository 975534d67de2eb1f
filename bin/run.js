// Shared by the package's commands: runs the compiled module when the package is built, and the
// TypeScript source through tsx otherwise (a checkout without a build).
import { existsSync } from "node:fs"
import { fileURLToPath } from "node:url"

/** Loads `dist/<path>.js` or `src/<path>.ts` and runs its `main` with the command's arguments. */
export const run = async (path) => {
  const built = new URL(`../dist/${path}.js`, import.meta.url)
  let module
  if (existsSync(fileURLToPath(built))) {
    module = await import(built.href)
  } else {
    const { register } = await import("tsx/esm/api")
    register()
    module = await import(new URL(`../src/${path}.ts`, import.meta.url).href)
  }
  process.exitCode = await module.main(process.argv.slice(2))
}

// Runs the pending regression tests of the chaos run (files named *.pending.ts, which the main
// configuration leaves out): `npx vitest run -c test/chaos/regressions/vitest.config.ts`.
import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/chaos/regressions/**/*.pending.ts"],
    testTimeout: 60_000,
    pool: "forks"
  }
})

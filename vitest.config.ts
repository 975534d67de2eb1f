import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["./test/setup/azurite.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Two cores: more workers only add contention against the in-process servers.
    pool: "forks",
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    // In CI a JSON report is kept too, so .ci/run can print one closing summary line.
    reporters: process.env.CI ? ["default", "json"] : ["default"],
    outputFile: { json: ".tmp/vitest-report.json" }
  }
})

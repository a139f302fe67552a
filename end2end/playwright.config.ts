import { defineConfig } from "@playwright/test";

/**
 * Browser tests for the Imprint console.
 *
 * `./dev test` starts a debug server on a free port and runs these with
 * IMPRINT_BASE_URL and IMPRINT_TOKEN set. By hand: start a server
 * (`./dev run`, with IMPRINT_BOOTSTRAP_TOKEN set) and run
 * `IMPRINT_BASE_URL=http://127.0.0.1:3000 IMPRINT_TOKEN=… npx playwright test`.
 *
 * The browser is the system Chromium (`apt-get install chromium`): never run
 * `npx playwright install`, it downloads a browser.
 */
const baseURL = process.env.IMPRINT_BASE_URL ?? "http://127.0.0.1:3000";

export default defineConfig({
  testDir: "./tests",
  globalSetup: "./global-setup.ts",
  outputDir: "./test-results",
  timeout: 60_000,
  expect: { timeout: 10_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  forbidOnly: !!process.env.CI,
  reporter: "list",
  use: {
    baseURL,
    screenshot: "only-on-failure",
    trace: "retain-on-failure",
    launchOptions: {
      executablePath: "/usr/bin/chromium",
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    },
  },
  projects: [
    { name: "hydrated", use: { javaScriptEnabled: true } },
    { name: "no-js", use: { javaScriptEnabled: false } },
  ],
});

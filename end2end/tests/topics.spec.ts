import * as path from "node:path";
import { expect, test } from "@playwright/test";
import { auth, token } from "./kit";

/**
 * A topic created and published through the API shows up in the console's
 * topic list (`/`) with its latest version — server-rendered (project
 * "no-js") and hydrated without errors (project "hydrated").
 */

const screenshotDir = path.join(__dirname, "..", "screenshots");

function randomSuffix(): string {
  return `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

test("a published topic is listed on the console's topic page", async ({
  page,
  request,
}, testInfo) => {
  expect(token, "IMPRINT_TOKEN must hold an admin API token").not.toBe("");
    const name = `e2e.${randomSuffix()}`;
  const hydrated = testInfo.project.name === "hydrated";

  // --- API: create the topic and publish version 1 -------------------------
  const created = await request.post("/api/v1/topics", {
    headers: auth,
    data: { name, description: "created by the end-to-end tests", owner: "e2e" },
  });
  expect(created.status(), await created.text()).toBe(201);
  expect((await created.json()).name).toBe(name);

  const published = await request.post(
    `/api/v1/topics/${encodeURIComponent(name)}/versions`,
    { headers: auth, data: { data: '{"hello":1}', message: "first" } },
  );
  expect(published.status(), await published.text()).toBe(201);
  expect((await published.json()).version).toBe(1);

  // --- console: the topic list ----------------------------------------------
  const errors: string[] = [];
  page.on("console", (msg) => {
    if (msg.type() === "error") errors.push(`console: ${msg.text()}`);
  });
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  const wasm = hydrated
    ? page.waitForResponse((r) => new URL(r.url()).pathname.endsWith(".wasm"), {
        timeout: 30_000,
      })
    : null;

  // The console needs a signed-in user.
  await page.goto("/login");
  if (hydrated) await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
  await page.getByLabel("Username").fill("admin");
  await page.getByLabel("Password").fill(process.env.IMPRINT_ADMIN_PASSWORD ?? "e2e-admin-password");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Topics" })).toBeVisible();
  await page.goto("/");

  const row = page.locator("table tbody tr", { hasText: name });
  await expect(row).toHaveCount(1);
  await expect(row).toBeVisible();

  await expect(row.locator("td.latest")).toHaveText("1");
  if (!hydrated) {
    // Everything above came from the server-rendered HTML alone.
    await expect(page.locator("body")).not.toHaveAttribute("data-hydrated", "true");
  }
  await expect(row).toContainText("e2e");

  if (wasm) {
    const response = await wasm;
    expect(response.status(), `${response.url()}`).toBe(200);
    await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
    // let hydration run: a panic or a failed import shows up as an error
    await page.waitForLoadState("networkidle", { timeout: 10_000 }).catch(() => {});
    expect(errors, "browser console errors").toEqual([]);
  }

  await page.screenshot({
    path: path.join(screenshotDir, `${testInfo.project.name}-topics.png`),
    fullPage: true,
  });
});

import * as path from "node:path";
import { expect, Page, test } from "@playwright/test";

/**
 * Several regions (docs/regions.md) as an operator sees them: the e2e server runs with two
 * object stores (`eu`, the home, and `us`), so a payload past the inline limit is copied to
 * both before it commits, and its version page lists the copies (region, state, attempts,
 * last error); a node's reported region shows on the consumers tab. Hydrated and without
 * JavaScript; a screenshot of the version page.
 */

test.describe.configure({ mode: "serial" });

const token = process.env.IMPRINT_TOKEN ?? "";
const adminPassword = process.env.IMPRINT_ADMIN_PASSWORD ?? "e2e-admin-password";
const auth = { Authorization: `Bearer ${token}` };
const shots = path.join(__dirname, "..", "screenshots");

async function ready(page: Page) {
  if (test.info().project.name === "hydrated") {
    await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
  }
}

test("a version's page lists its copy in every region", async ({ page, request }) => {
  const topic = `regions.${test.info().project.name.replace(/[^a-z]/g, "")}${Date.now().toString(36)}`;
  const created = await request.post("/api/v1/topics", {
    headers: auth,
    data: { name: topic, owner: "e2e", inline_limit_bytes: 1024 },
  });
  expect(created.status(), await created.text()).toBe(201);
  // The raw-body publish: past the inline limit the payload goes to the object stores.
  const published = await request.post(`/api/v1/topics/${topic}/versions`, {
    headers: { ...auth, "content-type": "application/octet-stream" },
    data: Buffer.from(JSON.stringify({ weights: "w".repeat(5000) })),
  });
  expect(published.status(), await published.text()).toBe(201);
  const listed = await request.get(`/api/v1/topics/${topic}/versions/1/regions`, { headers: auth });
  expect(listed.status()).toBe(200);
  expect((await listed.json()).copies.map((c: { region: string; state: string }) => `${c.region}:${c.state}`)).toEqual([
    "eu:done",
    "us:done",
  ]);

  await page.goto("/login");
  await ready(page);
  await page.getByLabel("Username").fill("admin");
  await page.getByLabel("Password").fill(adminPassword);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).not.toHaveURL(/\/login/);

  await page.goto(`/topics/${topic}/versions/1`);
  await ready(page);
  const card = page.getByRole("region", { name: "Copies" });
  await expect(card).toBeVisible();
  await expect(card).toContainText("Held by 2 of 2 regions");
  const eu = card.locator('tr[data-region="eu"]');
  await expect(eu).toContainText("home");
  await expect(eu.locator(".badge.copy-done")).toHaveText("done");
  await expect(card.locator('tr[data-region="us"] .badge.copy-done')).toHaveText("done");
  await expect(card.locator("thead")).toContainText("Attempts");
  await expect(card.locator("thead")).toContainText("Last error");
  await page.screenshot({ path: path.join(shots, `${test.info().project.name}-version-copies.png`), fullPage: true });

  // A node that reports which region served its download: the consumers tab says so.
  const instance = `e2e-region-${test.info().project.name}`;
  const polled = await request.post("/api/v1/poll", {
    headers: auth,
    data: {
      consumer: { instance, labels: { region: "us" } },
      topics: { [topic]: 1 },
      applied: { [topic]: { version: 1, ok: true, region: "us" } },
    },
  });
  expect(polled.status(), await polled.text()).toBe(200);
  await expect
    .poll(async () => {
      const r = await request.get(`/api/v1/topics/${topic}/consumers`, { headers: auth });
      return (await r.json()).consumers.map((c: { instance: string; served_region: string | null }) => `${c.instance}:${c.served_region}`);
    })
    .toEqual([`${instance}:us`]);
  await page.goto(`/topics/${topic}/consumers`);
  await ready(page);
  await expect(page.locator("table.consumers tr", { hasText: instance }).locator(".badge.region")).toHaveText("from us");

  // An inline payload has no copies: no card.
  expect((await request.post(`/api/v1/topics/${topic}/versions`, { headers: auth, data: { data: "{}" } })).status()).toBe(201);
  await page.goto(`/topics/${topic}/versions/2`);
  await ready(page);
  await expect(page.getByRole("heading", { name: "Version 2" })).toBeVisible();
  await expect(page.getByRole("region", { name: "Copies" })).toHaveCount(0);
});

import * as path from "node:path";
import { expect, Page, test } from "@playwright/test";

/**
 * A topic encrypted at rest (docs/encryption.md, "At rest") as its admin sees it: published
 * and read (a poll and a download with the admin token, the console's version view), its
 * consumers tab lists the plaintext-read audit — reader, version, reads, first and last.
 * `./dev test e2e` gives its server (two regions) a keyring with the key `e2e`.
 * Hydrated and without JavaScript; a screenshot of the consumers tab.
 */

test.describe.configure({ mode: "serial" });

const base = process.env.IMPRINT_BASE_URL ?? "http://127.0.0.1:3000";
const token = process.env.IMPRINT_TOKEN ?? "";
const adminPassword = process.env.IMPRINT_ADMIN_PASSWORD ?? "e2e-admin-password";
const auth = { Authorization: `Bearer ${token}` };
const shots = path.join(__dirname, "..", "screenshots");

async function ready(page: Page) {
  if (test.info().project.name === "hydrated") {
    await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
  }
}

test("an at-rest topic's consumers tab lists who read its plaintext", async ({ page, request }) => {
  const topic = `sealed.${test.info().project.name.replace(/[^a-z]/g, "")}${Date.now().toString(36)}`;
  const created = await request.post(`${base}/api/v1/topics`, {
    headers: auth,
    data: { name: topic, encryption: { mode: "at_rest", key: "e2e" } },
  });
  expect(created.status(), await created.text()).toBe(201);
  const published = await request.post(`${base}/api/v1/topics/${topic}/versions`, {
    headers: auth,
    data: { data: JSON.stringify({ password: "hunter2" }) },
  });
  expect(published.status(), await published.text()).toBe(201);
  // Two plaintext reads with the admin token: a poll answered with the payload, a download.
  const polled = await request.post(`${base}/api/v1/poll`, {
    headers: auth,
    data: { consumer: { instance: "e2e-at-rest", labels: {} }, topics: { [topic]: null } },
  });
  expect(polled.status(), await polled.text()).toBe(200);
  expect((await polled.json()).updates[topic].data_base64).toBeTruthy();
  const downloaded = await request.get(`${base}/api/v1/topics/${topic}/versions/1/data`, { headers: auth });
  expect(await downloaded.text()).toContain("hunter2");

  await page.goto(`${base}/login`);
  await ready(page);
  await page.getByLabel("Username").fill("admin");
  await page.getByLabel("Password").fill(adminPassword);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).not.toHaveURL(/\/login/);
  // The console's view of the payload is a read too (user:admin).
  await page.goto(`${base}/topics/${topic}/versions/1`);
  await ready(page);
  await expect(page.getByText("this view is counted in the plaintext-read audit")).toBeVisible();

  await page.goto(`${base}/topics/${topic}/consumers`);
  await ready(page);
  const card = page.getByRole("region", { name: "Plaintext reads" });
  await expect(card).toBeVisible();
  await expect(card.locator("thead")).toContainText("Reader");
  await expect(card.locator("thead")).toContainText("First");
  const byToken = card.locator('tr.plaintext-read[data-reader^="token:"][data-version="1"]');
  await expect(byToken).toHaveCount(1);
  await expect(byToken.locator("td.reads")).toHaveText("2");
  await expect(card.locator('tr.plaintext-read[data-reader="user:admin"] td.reads')).not.toHaveText("");
  await page.screenshot({ path: path.join(shots, `${test.info().project.name}-at-rest-plaintext-reads.png`), fullPage: true });

  // A topic that is not at rest has no such card.
  const plain = `${topic}-plain`;
  expect((await request.post(`${base}/api/v1/topics`, { headers: auth, data: { name: plain } })).status()).toBe(201);
  await page.goto(`${base}/topics/${plain}/consumers`);
  await ready(page);
  await expect(page.getByRole("heading", { name: "Versions held" })).toBeVisible();
  await expect(page.getByRole("region", { name: "Plaintext reads" })).toHaveCount(0);
});

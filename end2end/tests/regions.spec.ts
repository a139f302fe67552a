import * as fs from "node:fs";
import * as path from "node:path";
import { expect, test } from "@playwright/test";
import { auth, ready, shot, signIn } from "./kit";

/**
 * Several regions (docs/regions.md) as an operator sees them: the e2e server runs with two
 * object stores (`eu`, the home, and `us`), so a payload past the inline limit is copied to
 * both before it commits, and its version page lists the copies (region, state, attempts,
 * last error); a node's reported region shows on the consumers tab; a registered object
 * named per region shows each region's URL. Hydrated and without JavaScript; screenshots of
 * the version pages. IMPRINT_E2E_HOME is the server's home (its stores are `objects-eu` and
 * `objects-us` there).
 */

test.describe.configure({ mode: "serial" });

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

  await signIn(page);

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
  await shot(page, "version-copies");

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

test("a registered object's page shows the URL it named in each region", async ({ page, request }) => {
  const home = process.env.IMPRINT_E2E_HOME ?? "";
  test.skip(!home && !process.env.CI, "IMPRINT_E2E_HOME is not set (./dev test e2e sets it)");
  expect(home, "CI runs this spec: IMPRINT_E2E_HOME is not set").toBeTruthy();
  const topic = `registered.${test.info().project.name.replace(/[^a-z]/g, "")}${Date.now().toString(36)}`;
  expect((await request.post("/api/v1/topics", { headers: auth, data: { name: topic, owner: "e2e" } })).status()).toBe(201);
  // The publisher's own object, written into each region's store (the registration area,
  // the owner team's folder).
  const bytes = Buffer.from(JSON.stringify({ model: "m".repeat(3000) }));
  const urls: Record<string, string> = {};
  for (const region of ["eu", "us"]) {
    const file = path.join(home, `objects-${region}`, "external", "e2e", `${topic}.bin`);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, bytes);
    urls[region] = `file://${file}`;
  }
  const published = await request.post(`/api/v1/topics/${topic}/versions`, {
    headers: auth,
    data: { object: { url: urls.eu, locations: { us: urls.us } } },
  });
  expect(published.status(), await published.text()).toBe(201);

  await signIn(page);
  await page.goto(`/topics/${topic}/versions/1`);
  await ready(page);
  const card = page.getByRole("region", { name: "Copies" });
  await expect(card).toContainText("Held by 2 of 2 regions");
  await expect(card).toContainText("registered object is the publisher's");
  await expect(card.locator('tr[data-region="eu"] .copy-url')).toHaveText(urls.eu);
  await expect(card.locator('tr[data-region="us"] .copy-url')).toHaveText(urls.us);
  await shot(page, "registered-copies");
});

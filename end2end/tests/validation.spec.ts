import * as path from "node:path";
import { expect, Page, test } from "@playwright/test";

/**
 * Automatic accept or reject (docs/validation.md) as an operator sees it: a version whose
 * record count halved is refused (422 validation_failed), published with force, and its
 * page shows every check's result and who forced it; a canary that reports failures rolls
 * its rollout back on its own, and the rollout says why. Runs hydrated and without
 * JavaScript; screenshots of both pages.
 */

test.describe.configure({ mode: "serial" });

const token = process.env.IMPRINT_TOKEN ?? "";
const adminPassword = process.env.IMPRINT_ADMIN_PASSWORD ?? "e2e-admin-password";
const auth = { Authorization: `Bearer ${token}` };
const shots = path.join(__dirname, "..", "screenshots");

async function shot(page: Page, name: string) {
  await page.screenshot({ path: path.join(shots, `${test.info().project.name}-${name}.png`), fullPage: true });
}

async function ready(page: Page) {
  if (test.info().project.name === "hydrated") {
    await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
  }
}

async function signIn(page: Page) {
  await page.goto("/login");
  await ready(page);
  await page.getByLabel("Username").fill("admin");
  await page.getByLabel("Password").fill(adminPassword);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).not.toHaveURL(/\/login/);
}

let topic = "";

test.beforeAll(async ({}, testInfo) => {
  topic = `checks.${testInfo.project.name.replace(/[^a-z]/g, "")}${Date.now().toString(36)}`;
});

test("a rejected version, forced, shows its checks", async ({ page, request }) => {
  const created = await request.post("/api/v1/topics", {
    headers: auth,
    data: {
      name: topic,
      owner: "e2e",
      anonymous_reports: true,
      on_failure: "rollback",
      checks: [{ type: "record_count_change_pct", max_pct: 30 }, { type: "not_empty" }],
    },
  });
  expect(created.status(), await created.text()).toBe(201);
  const versions = `/api/v1/topics/${topic}/versions`;
  expect((await request.post(versions, { headers: auth, data: { data: "[1,2,3,4]" } })).status()).toBe(201);

  const refused = await request.post(versions, { headers: auth, data: { data: "[1,2]" } });
  expect(refused.status()).toBe(422);
  const err = await refused.json();
  expect(err.error.code).toBe("validation_failed");
  expect(err.error.message).toContain("record count varied by 50% (4 → 2)");
  expect(err.error.details.checks.map((c: { status: string }) => c.status)).toEqual(["failed", "passed"]);

  const forced = await request.post(versions, {
    headers: auth,
    data: { data: "[1,2]", force: true, force_reason: "the catalogue was halved on purpose" },
  });
  expect(forced.status(), await forced.text()).toBe(201);

  await signIn(page);
  await page.goto(`/topics/${topic}/versions/2`);
  await ready(page);
  const checks = page.getByRole("region", { name: "Checks" });
  await expect(checks).toBeVisible();
  await expect(checks.locator(".forced")).toContainText("the catalogue was halved on purpose");
  await expect(checks.locator("tr.check-failed")).toContainText("record count varied by 50% (4 → 2) vs v1");
  await expect(checks.locator("tr.check-passed")).toContainText("not_empty");
  await shot(page, "validation-forced-version");
});

test("a failing canary rolls back, and the rollout says why", async ({ page, request }) => {
  const published = await request.post(`/api/v1/topics/${topic}/versions`, {
    headers: auth,
    data: {
      data: "[1,2,3]",
      force: true,
      force_reason: "three again",
      rollout: {
        stages: [
          { selector: { cluster: "canary" }, wait_s: 600, gate: { max_failure_ratio: 0.3, bake_s: 300 } },
          { selector: {}, wait_s: 0 },
        ],
      },
    },
  });
  expect(published.status(), await published.text()).toBe(201);
  const id = (await published.json()).rollout.id;
  for (const instance of ["canary-a", "canary-b"]) {
    const poll = await request.post("/api/v1/poll", {
      headers: auth,
      data: {
        consumer: { instance, labels: { cluster: "canary" } },
        topics: { [topic]: 3 },
        applied: { [topic]: { version: 3, ok: false, error: "check command: 3 rows fail the contract" } },
      },
    });
    expect(poll.status(), await poll.text()).toBe(200);
  }
  await expect
    .poll(async () => (await (await request.get(`/api/v1/topics/${topic}/rollouts/${id}`, { headers: auth })).json()).state, {
      timeout: 30_000,
    })
    .toBe("cancelled");
  const resolved = await (await request.get(`/api/v1/topics/${topic}/resolve?labels=cluster=canary`)).json();
  expect(resolved.version).toBe(2);

  await signIn(page);
  await page.goto(`/topics/${topic}/rollouts`);
  await ready(page);
  const card = page.getByRole("region", { name: `Rollout ${id}` });
  await expect(card.locator(".badge.pin")).toHaveText("rolled back");
  await expect(card.locator(".rollback-reason")).toContainText("rolled back automatically");
  await expect(card.locator(".rollback-reason")).toContainText("2 of 2 nodes");
  await expect(card).toContainText("bake 5m");
  await shot(page, "validation-rolled-back");
});

import { expect, test } from "@playwright/test";
import { auth, ready, shot, signIn } from "./kit";

/**
 * Automatic accept or reject (docs/validation.md) as an operator sees it: a version whose
 * record count halved is refused (422 validation_failed), published with force, and its
 * page shows every check's result and who forced it; a canary that reports failures rolls
 * its rollout back on its own, and the rollout (and the version's page) says why with the
 * evidence; a topic with keep_rejected keeps a refused version unreleased and its page
 * explains the rejection. Runs hydrated and without JavaScript; screenshots of each page.
 */

test.describe.configure({ mode: "serial" });

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
  const checks = page.getByRole("region", { name: "Checks", exact: true });
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
  // The evidence the scheduler recorded: the gate's reading and the pins it set back.
  const evidence = card.locator(".rollback-evidence");
  await expect(evidence).toContainText("Rolled back automatically at stage 1");
  await expect(evidence.locator(".evidence-reading")).toContainText("2 failed");
  await expect(evidence.locator(".evidence-pins")).toContainText("cluster=canary → v2");
  await shot(page, "validation-rolled-back");

  // The version's page shows its checks during the rollout: the gate per stage and why it ended.
  await page.goto(`/topics/${topic}/versions/3`);
  await ready(page);
  const during = page.getByRole("region", { name: "Checks during rollout" });
  await expect(during).toBeVisible();
  await expect(during.locator(".badge.pin")).toHaveText("rolled back");
  await expect(during.locator(".evidence-reason")).toContainText("2 of 2 nodes");
  await expect(during.locator(".gates-table")).toContainText("≤30% failed");
  await expect(during.locator(".gates-table")).toContainText("cluster=canary");
  await shot(page, "validation-rolled-back-version");
});

test("a rejected version is kept unreleased and its page explains why", async ({ page, request }) => {
  const kept = `${topic}.kept`;
  const created = await request.post("/api/v1/topics", {
    headers: auth,
    data: {
      name: kept,
      owner: "e2e",
      keep_rejected: true,
      checks: [{ type: "record_count_change_pct", max_pct: 30 }, { type: "not_empty" }, { type: "size_change_pct", max_pct: 10, on_fail: "warn" }],
    },
  });
  expect(created.status(), await created.text()).toBe(201);
  const versions = `/api/v1/topics/${kept}/versions`;
  expect((await request.post(versions, { headers: auth, data: { data: "[1,2,3,4]" } })).status()).toBe(201);
  const refused = await request.post(versions, { headers: auth, data: { data: "[1,2]" } });
  expect(refused.status()).toBe(422);
  const err = await refused.json();
  expect(err.error.code).toBe("validation_failed");
  expect(err.error.details.version).toBe(2);
  // Never served: the data is refused, consumers still get v1.
  const data = await request.get(`${versions}/2/data`, { headers: auth });
  expect(data.status()).toBe(409);
  expect((await data.json()).error.code).toBe("version_rejected");
  const resolved = await (await request.get(`/api/v1/topics/${kept}/resolve?labels=region=eu`)).json();
  expect(resolved.version).toBe(1);

  await signIn(page);
  await page.goto(`/topics/${kept}/versions/2`);
  await ready(page);
  await expect(page.locator("h2 .badge.rejected")).toHaveText("rejected");
  const banner = page.getByRole("region", { name: "Rejected" });
  await expect(banner).toBeVisible();
  await expect(banner.locator(".rejected-reasons li")).toHaveCount(1);
  await expect(banner.locator(".rejected-reasons")).toContainText("record count varied by 50% (4 → 2) vs v1");
  const checks = page.getByRole("region", { name: "Checks", exact: true });
  await expect(checks.locator("tr.check-failed")).toHaveCount(2);
  await expect(checks.locator("tr.check-passed")).toContainText("not_empty");
  await expect(page.locator(".rejected-payload")).toContainText("never served");
  await expect(page.getByRole("link", { name: /^Download/ })).toHaveCount(0);
  await shot(page, "validation-rejected-version");

  // The timeline marks it and says why it was never released.
  await page.goto(`/topics/${kept}`);
  await ready(page);
  const item = page.locator("li#v2");
  await expect(item.locator(".badge.rejected")).toHaveText("rejected");
  await expect(item.locator(".rejected-why")).toContainText("record_count_change_pct");
  await shot(page, "validation-rejected-timeline");
});

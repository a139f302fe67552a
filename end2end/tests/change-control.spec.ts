import { expect, test } from "@playwright/test";
import { adminPassword, auth, ready, shot, signIn, signOut, userPassword } from "./kit";

/**
 * Change control in the console (docs/change-control.md): a user of the owning team saves a
 * draft from the Publish tab, sees its diff against the live version, requests review (the
 * topic requires one approval by the team), may not approve it themself; a second user of the
 * team approves it and it is released. Runs hydrated and without JavaScript.
 */

test.describe.configure({ mode: "serial" });

let sfx = "";
let team = "";
let topic = "";

test.beforeAll(async ({}, testInfo) => {
  sfx = `${testInfo.project.name.replace(/[^a-z]/g, "")}${Date.now().toString(36)}`;
  team = `cc-${sfx}`;
  topic = `change.${sfx}`;
});

test("draft, diff, request review, approve as a second user, released", async ({ page, request }) => {
  // The admin makes a team of two users.
  await signIn(page, "admin", adminPassword);
  await page.goto("/admin");
  await ready(page);
  const teamForm = page.locator("#create-team");
  await teamForm.getByLabel("New team").fill(team);
  await teamForm.getByRole("button", { name: "Create team" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Team created" }).first()).toBeVisible();
  for (const user of [`ann-${sfx}`, `ben-${sfx}`]) {
    const f = page.locator("#create-user");
    await f.getByLabel("New username").fill(user);
    await f.getByLabel("New password").fill(userPassword);
    await f.getByRole("button", { name: "Create user" }).click();
    await expect(page.locator("table.users tbody tr", { hasText: user })).toBeVisible();
    const add = page.locator("#add-member");
    await add.getByLabel("Team").selectOption(team);
    await add.getByLabel("Member username").fill(user);
    await add.getByRole("button", { name: "Add member" }).click();
    await expect(page.locator("table.teams tbody tr", { hasText: team })).toContainText(user);
  }
  await signOut(page);

  // The topic, its live version 1, and its review rule: one approval by the team.
  expect((await request.post("/api/v1/topics", { headers: auth, data: { name: topic, owner: team } })).status()).toBe(201);
  const v1 = await request.post(`/api/v1/topics/${topic}/versions`, { headers: auth, data: { data: '{"limit": 1, "mode": "safe"}' } });
  expect(v1.status(), await v1.text()).toBe(201);
  const rule = await request.put(`/api/v1/topics/${topic}/review`, {
    headers: auth,
    data: { required_approvals: 1, approvers: { team } },
  });
  expect(rule.status(), await rule.text()).toBe(200);

  // Ann saves a draft from the Publish tab.
  await signIn(page, `ann-${sfx}`, userPassword);
  await page.goto(`/topics/${topic}/publish`);
  await ready(page);
  await page.getByLabel("Payload").fill('{"limit": 2, "mode": "safe"}');
  await page.getByLabel(/Save as draft/).check();
  await page.locator("#publish-form").getByRole("button", { name: "Publish" }).click();
  await expect(page).toHaveURL(new RegExp(`/topics/${topic.replace(".", "\\.")}/drafts`));
  await ready(page);
  await expect(page.getByRole("status").filter({ hasText: /Saved draft #\d+/ }).first()).toBeVisible();
  const draft = page.locator("section.draft").first();
  await expect(draft).toBeVisible();
  // The diff against what everyone gets now (v1).
  await expect(draft).toContainText("Diff against v1");
  await expect(draft.locator(".diff-removed")).toContainText('"limit": 1');
  await expect(draft.locator(".diff-added")).toContainText('"limit": 2');
  // Nothing is released: consumers still get v1.
  let resolved = await (await request.get(`/api/v1/topics/${topic}/resolve?labels=region=eu`)).json();
  expect(resolved.version).toBe(1);
  await shot(page, "change-draft-diff");

  // Request review: a change request, pending.
  await draft.getByRole("button", { name: "Request review" }).click();
  await ready(page);
  await expect(page.getByRole("status").filter({ hasText: /Change request #\d+ is pending/ }).first()).toBeVisible();
  const req = page.locator("section.change-request").first();
  await expect(req).toContainText("pending");
  await expect(req).toContainText(`asked by user:ann-${sfx}`);
  await expect(req).toContainText("approvals 0/1");
  // The author cannot approve their own change.
  await req.getByRole("button", { name: "Approve" }).click();
  await ready(page);
  await expect(page.getByRole("alert").filter({ hasText: /author of a change cannot approve/ }).first()).toBeVisible();
  resolved = await (await request.get(`/api/v1/topics/${topic}/resolve?labels=region=eu`)).json();
  expect(resolved.version).toBe(1);
  await shot(page, "change-request-pending");
  await signOut(page);

  // Ben approves: released as version 2, as Ann's.
  await signIn(page, `ben-${sfx}`, userPassword);
  await page.goto(`/topics/${topic}/drafts`);
  await ready(page);
  const pending = page.locator("section.change-request.change-pending").first();
  await expect(pending).toContainText(`asked by user:ann-${sfx}`);
  await pending.getByRole("button", { name: "Approve" }).click();
  await ready(page);
  await expect(page.getByRole("status").filter({ hasText: "Approved: released v2" }).first()).toBeVisible();
  await expect(page.locator("section.change-request").first()).toContainText("applied");
  await expect(page.locator("section.change-request").first()).toContainText("released as v2");
  await expect(page.locator("section.draft")).toHaveCount(0);
  resolved = await (await request.get(`/api/v1/topics/${topic}/resolve?labels=region=eu`)).json();
  expect(resolved.version).toBe(2);
  const v2 = await (await request.get(`/api/v1/topics/${topic}/versions/2`, { headers: auth })).json();
  expect(v2.created_by).toBe(`user:ann-${sfx}`);
  await shot(page, "change-approved");
});

test("a freeze in force is shown on the overview and the topic, and refuses a release", async ({ page, request }) => {
  // Without the review rule a release goes straight to the freeze check.
  expect((await request.delete(`/api/v1/topics/${topic}/review`, { headers: auth })).status()).toBe(200);
  // A window on this topic only (other tests' topics keep publishing).
  const now = Date.now();
  const created = await request.post("/api/v1/freezes", {
    headers: auth,
    data: { name: `incident ${sfx}`, topic, from: new Date(now - 60_000).toISOString(), to: new Date(now + 3_600_000).toISOString() },
  });
  expect(created.status(), await created.text()).toBe(201);
  const freeze = await created.json();
  try {
    const refused = await request.post(`/api/v1/topics/${topic}/versions`, { headers: auth, data: { data: "{}" } });
    expect(refused.status()).toBe(423);
    expect((await refused.json()).error.code).toBe("change_frozen");
    await signIn(page, "admin", adminPassword);
    await page.goto("/");
    await ready(page);
    await expect(page.locator("#overview-freezes")).toContainText(`incident ${sfx}`);
    await expect(page.locator("#overview-freezes")).toContainText(`topic ${topic}`);
    await shot(page, "change-freeze-overview");
    await page.goto(`/topics/${topic}/drafts`);
    await ready(page);
    await expect(page.locator(".freeze-banner")).toContainText(`incident ${sfx}`);
  } finally {
    expect((await request.delete(`/api/v1/freezes/${freeze.id}`, { headers: auth })).status()).toBe(204);
  }
});

test("a scheduled pin is listed on the Versions tab and withdrawn there", async ({ page, request }) => {
  // A pin an hour from now: a change request (approved: no review rule since the test above).
  const at = new Date(Date.now() + 3_600_000).toISOString();
  const asked = await request.put(`/api/v1/topics/${topic}/pins`, {
    headers: auth,
    data: { selector: { region: "eu" }, version: 1, reason: "scheduled rollback", at },
  });
  expect(asked.status(), await asked.text()).toBe(202);
  const cr = await asked.json();
  await signIn(page, "admin", adminPassword);
  await page.goto(`/topics/${topic}`);
  await ready(page);
  const item = page.locator(`#scheduled-${cr.id}`);
  await expect(item).toContainText(`Scheduled: ${cr.summary} at`);
  await expect(item).toContainText(`(change request #${cr.id}, ${cr.state})`);
  await shot(page, "change-scheduled-versions");
  await item.getByRole("button", { name: "Withdraw" }).click();
  await ready(page);
  await expect(page).toHaveURL(new RegExp(`/topics/${topic.replace(".", "\\.")}(\\?|$)`));
  await expect(page.getByRole("status").filter({ hasText: "Withdrawn" }).first()).toBeVisible();
  await expect(page.locator(`#scheduled-${cr.id}`)).toHaveCount(0);
  const after = await (await request.get(`/api/v1/change-requests/${cr.id}`, { headers: auth })).json();
  expect(after.state).toBe("withdrawn");
  // Nothing was pinned.
  let resolved = await (await request.get(`/api/v1/topics/${topic}/resolve?labels=region=eu`)).json();
  expect(resolved.version).toBe(2);

  // The pin form's "At" field: a bad time is a readable refusal that pins nothing ...
  const pinForm = page.locator("#pin-form");
  await pinForm.getByLabel("Selector").fill("region=eu");
  await pinForm.getByLabel("Version").fill("1");
  await pinForm.getByLabel(/^At/).fill("tomorrow");
  await pinForm.getByRole("button", { name: "Pin" }).click();
  await ready(page);
  await expect(page.getByRole("alert").filter({ hasText: /not RFC 3339/ }).first()).toBeVisible();
  // ... and a good one schedules the pin: listed, not in force.
  await pinForm.getByLabel("Selector").fill("region=eu");
  await pinForm.getByLabel("Version").fill("1");
  await pinForm.getByLabel(/^At/).fill(at);
  await pinForm.getByRole("button", { name: "Pin" }).click();
  await ready(page);
  await expect(page.locator("li.scheduled-change", { hasText: "pin region=eu to v1" })).toBeVisible();
  resolved = await (await request.get(`/api/v1/topics/${topic}/resolve?labels=region=eu`)).json();
  expect(resolved.version).toBe(2);
  await page.locator("li.scheduled-change").first().getByRole("button", { name: "Withdraw" }).click();
  await ready(page);
  await expect(page.locator("li.scheduled-change")).toHaveCount(0);
});

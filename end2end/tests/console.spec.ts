import { expect, test } from "@playwright/test";
import { adminPassword, auth, ready, shot, signIn, signOut, token, userPassword } from "./kit";

/**
 * The console end to end, as an operator uses it: sign-in, admin pages, publishing,
 * diffs, pins, the scope matrix, settings, the audit log and a forbidden action by a
 * non-owner. Runs in both projects: hydrated, and with JavaScript disabled (plain HTML
 * forms and server-side redirects).
 */

test.describe.configure({ mode: "serial" });

let sfx = "";
let team = "";
let topic = "";

/** In the hydrated project, wait until the page is interactive before using forms. */

test.beforeAll(async ({}, testInfo) => {
  sfx = `${testInfo.project.name.replace(/[^a-z]/g, "")}${Date.now().toString(36)}`;
  team = `team-${sfx}`;
  topic = `console.${sfx}`;
});

test("sign-in refuses a wrong password and protects pages", async ({ page }) => {
  await page.goto("/");
  await expect(page).toHaveURL(/\/login\?next=/);
  await shot(page, "login");
  await signIn(page, "admin", "not-the-password", false);
  await expect(page.getByRole("alert")).toContainText("wrong username or password");
  // Signing in from /login?next=/audit lands on /audit, and the address bar says so.
  await page.goto("/login?next=/audit");
  await ready(page);
  await page.getByLabel("Username").fill("admin");
  await page.getByLabel("Password").fill(adminPassword);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(/\/audit$/);
  await expect(page.getByRole("heading", { name: "Audit log" })).toBeVisible();
  await signOut(page);
  await signIn(page, "admin", adminPassword);
  await expect(page.getByRole("heading", { name: "Topics" })).toBeVisible();
  await expect(page.locator(".usermenu .whoami")).toHaveText("admin");
});

test("admin creates a team, users and a token", async ({ page }) => {
  await signIn(page, "admin", adminPassword);
  await page.goto("/admin");
  await ready(page);
  const teamForm = page.locator("#create-team");
  await teamForm.getByLabel("New team").fill(team);
  await teamForm.getByLabel("Team description").fill("end-to-end owners");
  await teamForm.getByRole("button", { name: "Create team" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Team created" })).toBeVisible();
  for (const user of [`alice-${sfx}`, `bob-${sfx}`]) {
    const f = page.locator("#create-user");
    await f.getByLabel("New username").fill(user);
    await f.getByLabel("New password").fill(userPassword);
    await f.getByRole("button", { name: "Create user" }).click();
    await expect(page.locator("table.users tbody tr", { hasText: user })).toBeVisible();
  }
  const add = page.locator("#add-member");
  await add.getByLabel("Team").selectOption(team);
  await add.getByLabel("Member username").fill(`alice-${sfx}`);
  await add.getByRole("button", { name: "Add member" }).click();
  await expect(page.locator("table.teams tbody tr", { hasText: team })).toContainText(`alice-${sfx}`);
  // A too-short password is refused with a readable message, and nothing is created.
  const f = page.locator("#create-user");
  await f.getByLabel("New username").fill(`carol-${sfx}`);
  await f.getByLabel("New password").fill("short");
  await f.getByRole("button", { name: "Create user" }).click();
  await expect(page.getByRole("alert")).toContainText(/at least 10/);
  await expect(page.locator("table.users tbody tr", { hasText: `carol-${sfx}` })).toHaveCount(0);
  // Tokens are shown once.
  const t = page.locator("#create-token");
  await t.getByLabel("Token name").fill(`ci-${sfx}`);
  await t.getByLabel("Token rights").selectOption(team);
  await t.getByRole("button", { name: "Create token" }).click();
  await expect(page.locator(".token code.secret")).toContainText(/^imp_[0-9a-f]{64}$/);
  await expect(page.locator("table.tokens tbody tr", { hasText: `ci-${sfx}` })).toContainText(`team ${team}`);
  // A consumer token, bound to a region and allowed on restricted topics of the team.
  await t.getByLabel("Token name").fill(`nodes-${sfx}`);
  await t.getByLabel("Token kind").selectOption("consumer");
  await t.getByLabel("Token rights").selectOption(team);
  await t.getByLabel("Token labels").fill("region=eu-west-1");
  await t.getByLabel("Token topics").fill("secret.*");
  await t.getByRole("button", { name: "Create token" }).click();
  const consumerRow = page.locator("table.tokens tbody tr", { hasText: `nodes-${sfx}` });
  await expect(consumerRow).toContainText("consumer");
  await expect(consumerRow).toContainText("region=eu-west-1");
  await expect(consumerRow).toContainText("topics secret.*");
  // A bad label is refused with a readable message, and no token is created.
  await t.getByLabel("Token name").fill(`bad-${sfx}`);
  await t.getByLabel("Token kind").selectOption("consumer");
  await t.getByLabel("Token labels").fill("region");
  await t.getByRole("button", { name: "Create token" }).click();
  await expect(page.getByRole("alert").filter({ hasText: "not of the form key=value" })).toBeVisible();
  await expect(page.locator("table.tokens tbody tr", { hasText: `bad-${sfx}` })).toHaveCount(0);
  // Lifting a lockout is an admin action with an answer.
  const u = page.locator("#clear-lockout");
  await u.getByLabel("Locked-out username").fill(`alice-${sfx}`);
  await u.getByRole("button", { name: "Clear sign-in lockout" }).click();
  await expect(page.getByRole("status").filter({ hasText: /lockout/i }).first()).toBeVisible();
  await shot(page, "admin");
});

test("publish, timeline, version detail and diff", async ({ page, request }) => {
  const created = await request.post("/api/v1/topics", { headers: auth, data: { name: topic, owner: team, description: "console test" } });
  expect(created.status(), await created.text()).toBe(201);
  const v1 = await request.post(`/api/v1/topics/${topic}/versions`, {
    headers: auth,
    data: { data: JSON.stringify({ rate: 1, currency: "EUR" }), message: "first", metadata: { build: "1" } },
  });
  expect(v1.status()).toBe(201);

  await signIn(page, "admin", adminPassword);
  await page.goto(`/topics/${topic}/publish`);
  await ready(page);
  await shot(page, "publish");
  const form = page.locator("#publish-form");
  await form.getByLabel("Payload").fill(JSON.stringify({ rate: 2, currency: "EUR" }));
  await form.getByLabel("Message").fill("raise the rate");
  await form.getByLabel(/Metadata/).fill("build=2");
  await form.getByRole("button", { name: "Publish" }).click();
  await expect(page).toHaveURL(new RegExp(`/topics/${topic.replace(".", "\\.")}`));
  await expect(page.getByRole("status").filter({ hasText: "Published v2" })).toBeVisible();
  const v2 = page.locator("li.version#v2");
  await expect(v2).toContainText("raise the rate");
  await expect(v2).toContainText("build=2");
  await expect(page.locator("li.version#v1")).toContainText("first");
  await shot(page, "topic");

  // Invalid JSON never gets stored: refused before sending (hydrated) or by the server.
  await page.goto(`/topics/${topic}/publish`);
  await ready(page);
  await page.getByLabel("Payload").fill("{not json");
  if (test.info().project.name === "hydrated") {
    await expect(page.getByRole("alert")).toContainText("Not valid JSON");
    await expect(page.locator("#publish-form").getByRole("button", { name: "Publish" })).toBeDisabled();
  } else {
    await page.locator("#publish-form").getByRole("button", { name: "Publish" }).click();
    await expect(page.getByRole("alert")).toContainText("not valid JSON");
  }
  const versions = await (await request.get(`/api/v1/topics/${topic}/versions`)).json();
  expect(versions.versions.length).toBe(2);

  await page.goto(`/topics/${topic}/versions/2`);
  await expect(page.locator("pre.payload.json")).toContainText('"rate": 2');
  await expect(page.locator("pre.diff del")).toContainText('"rate": 1');
  await expect(page.locator("pre.diff ins")).toContainText('"rate": 2');
  await expect(page.getByText("v1 → v2: 2 changed lines")).toBeVisible();
  await shot(page, "version");
});

test("a long timeline pages 100 versions at a time", async ({ page, request }) => {
  const long = `timeline.${sfx}`;
  const created = await request.post("/api/v1/topics", { headers: auth, data: { name: long, owner: team } });
  expect(created.status(), await created.text()).toBe(201);
  for (let v = 1; v <= 105; v++) {
    const r = await request.post(`/api/v1/topics/${long}/versions`, { headers: auth, data: { data: `{"n": ${v}}`, message: `build ${v}` } });
    expect(r.status()).toBe(201);
  }
  await signIn(page, "admin", adminPassword);
  await page.goto(`/topics/${long}`);
  await ready(page);
  await expect(page.locator("ol.versions li.version")).toHaveCount(100);
  await expect(page.locator("li.version#v105")).toBeVisible();
  await expect(page.locator("li.version#v5")).toHaveCount(0);
  await page.getByRole("link", { name: "Older versions →" }).click();
  await expect(page.locator("ol.versions li.version")).toHaveCount(5);
  await expect(page.locator("li.version#v5")).toContainText("build 5");
  await expect(page.locator("li.version#v1")).toBeVisible();
  await expect(page.getByRole("link", { name: "Older versions →" })).toHaveCount(0);
  await shot(page, "timeline-older");
  await page.getByRole("link", { name: "← Newest versions" }).click();
  await expect(page.locator("li.version#v105")).toBeVisible();
});

test("a file upload goes to the object store; the version page previews and downloads it", async ({ page, request }) => {
  const big = `files.${sfx}`;
  const created = await request.post("/api/v1/topics", {
    headers: auth,
    data: { name: big, owner: team, inline_limit_bytes: 1024, retention: { max_versions: 1 } },
  });
  expect(created.status(), await created.text()).toBe(201);
  // 300 KiB of numbered lines: beyond the inline limit, beyond the page's 64 KiB preview.
  const lines: string[] = [];
  for (let i = 0; lines.join("\n").length < 300 * 1024; i++) lines.push(`line ${i} ${"x".repeat(60)}`);
  const text = lines.join("\n").slice(0, 300 * 1024);

  await signIn(page, "admin", adminPassword);
  await page.goto(`/topics/${big}/publish`);
  await ready(page);
  const form = page.locator("#upload-form");
  await form.getByLabel("Message").fill("nightly export");
  await form.getByLabel("File", { exact: true }).setInputFiles({ name: "export.txt", mimeType: "text/plain", buffer: Buffer.from(text) });
  await shot(page, "upload");
  await form.getByRole("button", { name: "Upload and publish" }).click();
  await expect(page).toHaveURL(new RegExp(`/topics/${big.replace(/\./g, "\\.")}`));
  await expect(page.getByRole("status").filter({ hasText: "Published v1" })).toBeVisible();

  await page.goto(`/topics/${big}/versions/1`);
  await expect(page.locator("dd.storage")).toContainText("in the object store");
  await expect(page.locator(".preview-note")).toContainText("Showing the first 64.0 KiB of 300.0 KiB");
  await expect(page.locator("pre.payload")).toContainText("line 0 ");
  await expect(page.locator("pre.payload")).not.toContainText(lines[lines.length - 2]);
  const link = page.getByRole("link", { name: "Download (300.0 KiB)" });
  await expect(link).toBeVisible();
  await shot(page, "version-object");
  const download = await page.request.get((await link.getAttribute("href")) ?? "");
  expect(download.status()).toBe(200);
  expect((await download.body()).toString()).toBe(text);

  // An empty upload form is refused with a readable message and publishes nothing.
  await page.goto(`/topics/${big}/publish`);
  await ready(page);
  await page.locator("#upload-form").getByLabel("Scope").fill("region=");
  await page.locator("#upload-form").getByLabel("File", { exact: true }).setInputFiles({ name: "x.txt", mimeType: "text/plain", buffer: Buffer.from("x".repeat(2048)) });
  await page.locator("#upload-form").getByRole("button", { name: "Upload and publish" }).click();
  await expect(page.getByRole("alert").filter({ hasText: "selector" })).toBeVisible();
  expect((await (await request.get(`/api/v1/topics/${big}/versions`)).json()).versions.length).toBe(1);

  // With retention keeping one version, the settings page says v1 goes next.
  const v2 = await request.post(`/api/v1/topics/${big}/versions`, { headers: auth, data: { data: "small" } });
  expect(v2.status()).toBe(201);
  // The janitor keeps what the snapshot manifest names: until the next snapshot pass
  // (every 10 s) names v2, the page rightly says v1 is kept for it. Reload until it moves on.
  await expect(async () => {
    await page.goto(`/topics/${big}/settings`);
    await expect(page.locator("#retention-next")).toContainText("v1", { timeout: 1000 });
    await expect(page.locator("#retention-next")).toContainText("purged by the next janitor pass", { timeout: 1000 });
  }).toPass({ timeout: 30_000 });
  await shot(page, "settings-retention");
});

test("pin, scope matrix, what-does-a-consumer-see, unpin", async ({ page }) => {
  await signIn(page, "admin", adminPassword);
  await page.goto(`/topics/${topic}`);
  await ready(page);
  const pin = page.locator("#pin-form");
  await pin.getByLabel("Selector").fill("region=eu");
  await pin.getByLabel("Version").fill("1");
  await pin.getByLabel("Reason").fill("v2 breaks eu");
  await pin.getByRole("button", { name: "Pin" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Pinned" })).toBeVisible();
  const row = page.locator("table.pins tbody tr", { hasText: "region=eu" });
  await expect(row).toContainText("v1");
  await expect(row).toContainText("v2 breaks eu");
  await expect(page.locator("li.version#v1 .badge.pin")).toContainText("region=eu");

  // A bad selector is refused readably.
  await pin.getByLabel("Selector").fill("region");
  await pin.getByRole("button", { name: "Pin" }).click();
  await expect(page.getByRole("alert")).toContainText("key=value");

  await page.goto(`/topics/${topic}/matrix`);
  const eu = page.locator("table.matrix tbody tr", { hasText: "region=eu" });
  await expect(eu.locator("td.now")).toHaveText("v1 (pinned)");
  const all = page.locator("table.matrix tbody tr", { hasText: "*" }).first();
  await expect(all.locator("td.now")).toHaveText("v2");
  await page.getByLabel("Labels").fill("region=eu,app=checkout");
  await page.getByRole("button", { name: "Resolve" }).click();
  await expect(page.locator("p.answer")).toContainText("v1 (pinned)");
  await page.getByLabel("Labels").fill("region=us");
  await page.getByRole("button", { name: "Resolve" }).click();
  await expect(page.locator("p.answer")).toContainText("v2");
  await shot(page, "matrix");

  await page.goto(`/topics/${topic}`);
  await ready(page);
  await page.locator("table.pins tbody tr", { hasText: "region=eu" }).getByRole("button", { name: "Unpin" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Pin removed" })).toBeVisible();
  await expect(page.locator("table.pins")).toHaveCount(0);
});

test("a pin with an expiry stops applying by itself", async ({ page, request }) => {
  // A topic of its own (the audit test counts the pin actions on the shared one).
  const pt = `pins.${sfx}`;
  expect((await request.post("/api/v1/topics", { headers: auth, data: { name: pt, owner: team } })).status()).toBe(201);
  for (const data of ["1", "2"]) {
    expect((await request.post(`/api/v1/topics/${pt}/versions`, { headers: auth, data: { data } })).status()).toBe(201);
  }
  await signIn(page, "admin", adminPassword);
  await page.goto(`/topics/${pt}`);
  await ready(page);
  const pin = page.locator("#pin-form");
  await pin.getByLabel("Selector").fill("region=temp");
  await pin.getByLabel("Version").fill("1");
  await pin.getByLabel("Reason").fill("hold during the migration");
  await pin.getByLabel(/Expires in/).fill("0.002"); // about 7 seconds
  await pin.getByRole("button", { name: "Pin" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Pinned" })).toBeVisible();
  const row = page.locator("table.pins tbody tr", { hasText: "region=temp" });
  await expect(row.locator(".pin-expiry")).toContainText("expires");
  await expect(row).toContainText("user:admin");
  const resolve = async () => {
    const r = await (await request.get(`/api/v1/topics/${pt}/resolve?labels=region=temp`)).json();
    return { version: r.version, pinned: r.pinned };
  };
  expect(await resolve()).toEqual({ version: 1, pinned: true });
  await shot(page, "pin-expiry");
  // Once its time has come the pin is gone: from the API and from the page.
  await expect.poll(resolve, { timeout: 20_000 }).toEqual({ version: 2, pinned: false });
  await page.reload();
  await expect(page.locator("table.pins tbody tr", { hasText: "region=temp" })).toHaveCount(0);
  // A bad expiry is refused readably.
  await ready(page);
  await pin.getByLabel("Selector").fill("region=temp");
  await pin.getByLabel("Version").fill("1");
  await pin.getByLabel(/Expires in/).fill("-3");
  await pin.getByRole("button", { name: "Pin" }).click();
  await expect(page.getByRole("alert")).toContainText("hours");
});

test("the overview lists a paused rollout and a lagging topic; consumers group by label", async ({ page, request }) => {
  const rolling = `ovroll.${sfx}`;
  const lag = `ovlag.${sfx}`;
  for (const name of [rolling, lag]) {
    const r = await request.post("/api/v1/topics", { headers: auth, data: { name, owner: team } });
    expect(r.status(), await r.text()).toBe(201);
    expect((await request.post(`/api/v1/topics/${name}/versions`, { headers: auth, data: { data: "1" } })).status()).toBe(201);
  }
  const v2 = await request.post(`/api/v1/topics/${rolling}/versions`, {
    headers: auth,
    data: { data: "2", rollout: { stages: [{ selector: { cluster: "canary" }, wait_s: 3600 }, { selector: {}, wait_s: 0 }] } },
  });
  expect(v2.status(), await v2.text()).toBe(201);
  const rolloutId = (await v2.json()).rollout.id;
  const paused = await request.post(`/api/v1/topics/${rolling}/rollouts/${rolloutId}/pause`, { headers: auth });
  expect(paused.status(), await paused.text()).toBe(200);
  // The lagging topic: v2 for everyone, three nodes still on v1 (two in eu, one in us), one on v2.
  expect((await request.post(`/api/v1/topics/${lag}/versions`, { headers: auth, data: { data: "2" } })).status()).toBe(201);
  const nodes: [string, string, number][] = [["n-eu-1", "eu", 1], ["n-eu-2", "eu", 1], ["n-us-1", "us", 1], ["n-us-2", "us", 2]];
  for (const [instance, region, held] of nodes) {
    const r = await request.post("/api/v1/poll", {
      data: { consumer: { instance, labels: { region, app: "shop" } }, topics: { [lag]: held } },
    });
    expect(r.status(), await r.text()).toBe(200);
  }

  await signIn(page, "admin", adminPassword);
  await expect.poll(async () => {
    await page.goto("/");
    return await page.locator("#overview-lagging").innerText();
  }, { timeout: 20_000 }).toContain(lag);
  await expect(page.locator("#overview-lagging")).toContainText("3 nodes lagging");
  const line = page.locator("#overview-rollouts li", { hasText: rolling });
  await expect(line).toContainText("paused");
  await expect(line).toContainText("stage 1 of 2");
  await expect(page.locator("#overview-recent")).toContainText(lag);
  await shot(page, "overview");
  await line.getByRole("link").click();
  await expect(page).toHaveURL(new RegExp(`/topics/${rolling.replace(/\./g, "\\.")}/rollouts`));

  // Grouped by region: eu 2 on v1; us one on v1, one on v2.
  await page.goto(`/topics/${lag}/consumers?group_by=region`);
  const eu = page.locator("table.group-matrix tbody tr[data-value=eu]");
  const us = page.locator("table.group-matrix tbody tr[data-value=us]");
  await expect(eu.locator("td.total")).toHaveText("2");
  await expect(us.locator("td.total")).toHaveText("2");
  await expect(page.locator("table.group-matrix thead")).toContainText("v2");
  await shot(page, "consumers-grouped");
});

test("live pages: a rollout stage and a node's new version show up without a reload", async ({ page, request }) => {
  test.skip(test.info().project.name !== "hydrated", "live updates need JavaScript; without it the pages are right on reload");
  const live = `live.${sfx}`;
  expect((await request.post("/api/v1/topics", { headers: auth, data: { name: live, owner: team } })).status()).toBe(201);
  expect((await request.post(`/api/v1/topics/${live}/versions`, { headers: auth, data: { data: "1" } })).status()).toBe(201);
  const v2 = await request.post(`/api/v1/topics/${live}/versions`, {
    headers: auth,
    data: { data: "2", rollout: { stages: [{ selector: { cluster: "canary" }, wait_s: 3600 }, { selector: {}, wait_s: 0 }] } },
  });
  expect(v2.status(), await v2.text()).toBe(201);
  const id = (await v2.json()).rollout.id;

  await signIn(page, "admin", adminPassword);
  await page.goto(`/topics/${live}/rollouts`);
  await ready(page);
  await expect(page.locator("html")).toHaveAttribute("data-live", "on");
  await page.evaluate(() => ((window as any).__noReload = true));
  const stage2 = page.locator(`#rollout-${id} li.stage`).nth(1);
  // The countdown ticks in the browser.
  const due = stage2.locator(".due");
  await expect(due).toContainText("due in");
  const before = await due.innerText();
  await expect.poll(() => due.innerText(), { timeout: 5_000 }).not.toBe(before);
  await shot(page, "rollout-live");
  // Advanced elsewhere (the API): the open page shows the stage reached.
  const advanced = await request.post(`/api/v1/topics/${live}/rollouts/${id}/advance`, { headers: auth });
  expect(advanced.status(), await advanced.text()).toBe(200);
  await expect(stage2.locator(".due")).toContainText("reached", { timeout: 10_000 });
  expect(await page.evaluate(() => (window as any).__noReload)).toBe(true);

  // The Consumers tab: a node appears, then moves to v2, while the page stays open.
  await page.goto(`/topics/${live}/consumers`);
  await ready(page);
  await expect(page.locator("html")).toHaveAttribute("data-live", "on");
  await page.evaluate(() => ((window as any).__noReload = true));
  const poll = (held: number | null) =>
    request.post("/api/v1/poll", { data: { consumer: { instance: "live-node", labels: { region: "eu" } }, topics: { [live]: held } } });
  expect((await poll(1)).status()).toBe(200);
  const row = page.locator("table.consumers tbody tr", { hasText: "live-node" });
  await expect(row.locator("td.held")).toHaveText("v1", { timeout: 10_000 });
  expect((await poll(2)).status()).toBe(200);
  await expect(row.locator("td.held")).toHaveText("v2", { timeout: 10_000 });
  expect(await page.evaluate(() => (window as any).__noReload)).toBe(true);
});

test("settings are saved, and bad settings refused", async ({ page, request }) => {
  await signIn(page, "admin", adminPassword);
  await page.goto(`/topics/${topic}/settings`);
  await ready(page);
  await page.getByLabel("Description").fill("changed in the console");
  await page.getByLabel("Keep newest versions").fill("20");
  await page.getByRole("button", { name: "Save settings" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Settings saved" })).toBeVisible();
  const t = await (await request.get(`/api/v1/topics/${topic}`)).json();
  expect(t.description).toBe("changed in the console");
  expect(t.retention.max_versions).toBe(20);
  await page.getByLabel(/JSON Schema/).fill("{broken");
  await page.getByRole("button", { name: "Save settings" }).click();
  await expect(page.getByRole("alert")).toContainText("not valid JSON");
  await shot(page, "settings");

  // Restricted (on a topic of its own): anonymous reads are refused from then on.
  const rt = `restricted.${sfx}`;
  const made = await request.post("/api/v1/topics", { headers: auth, data: { name: rt, owner: team } });
  expect(made.status(), await made.text()).toBe(201);
  await page.goto(`/topics/${rt}/settings`);
  await ready(page);
  await expect(page.getByLabel(/Restricted/)).not.toBeChecked();
  await page.getByLabel(/Restricted/).check();
  await page.getByRole("button", { name: "Save settings" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Settings saved" })).toBeVisible();
  expect((await request.get(`/api/v1/topics/${rt}`)).status()).toBe(401);
  expect((await request.get(`/api/v1/topics/${rt}`, { headers: auth })).status()).toBe(200);
  await page.goto(`/topics/${rt}/settings`);
  await ready(page);
  await expect(page.getByLabel(/Restricted/)).toBeChecked();
  await page.getByLabel(/Restricted/).uncheck();
  await page.getByRole("button", { name: "Save settings" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Settings saved" })).toBeVisible();
  expect((await request.get(`/api/v1/topics/${rt}`)).status()).toBe(200);

  // An Apollo binding, with the hint an operator gives the team still on Apollo clients.
  await page.goto(`/topics/${rt}/settings`);
  await ready(page);
  await page.getByLabel("Apollo app id").fill(`shop-${sfx}`);
  await page.getByLabel("Apollo namespace").fill("application");
  await page.getByRole("button", { name: "Save settings" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Settings saved" })).toBeVisible();
  await page.goto(`/topics/${rt}/settings`);
  await expect(page.locator(".apollo-hint")).toContainText("/apollo");
  await expect(page.locator(".apollo-hint")).toContainText(`shop-${sfx}`);
  const bound = await (await request.get(`/api/v1/topics/${rt}`)).json();
  expect(bound.apollo).toMatchObject({ app_id: `shop-${sfx}`, namespace: "application", secret_set: false });
  await shot(page, "settings-apollo");

  // An OpenFeature binding: a flag key and the payload field that is the flag's value.
  await page.goto(`/topics/${rt}/settings`);
  await ready(page);
  await page.getByLabel(/Serve as an OpenFeature flag/).check();
  await page.getByLabel("Flag key").fill(`flag-${sfx}`);
  await page.getByLabel("Payload field (optional)").fill("enabled");
  await page.getByRole("button", { name: "Save settings" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Settings saved" })).toBeVisible();
  const flagged = await (await request.get(`/api/v1/topics/${rt}`)).json();
  expect(flagged.ofrep).toEqual({ flag_key: `flag-${sfx}`, field: "enabled" });
  await page.goto(`/topics/${rt}/settings`);
  await ready(page);
  await expect(page.getByLabel(/Serve as an OpenFeature flag/)).toBeChecked();
  await expect(page.getByLabel("Flag key")).toHaveValue(`flag-${sfx}`);

  // A Spring Cloud Config binding, with the hint for the team on Spring clients.
  await page.goto(`/topics/${rt}/settings`);
  await ready(page);
  await page.getByLabel("Spring application").fill(`shop-${sfx}`);
  await page.getByLabel("Spring profile").fill("prod");
  await page.getByRole("button", { name: "Save settings" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Settings saved" })).toBeVisible();
  await page.goto(`/topics/${rt}/settings`);
  await expect(page.locator(".spring-hint")).toContainText("/spring");
  await expect(page.locator(".spring-hint")).toContainText(`shop-${sfx}`);
  const spring = await (await request.get(`/api/v1/topics/${rt}`)).json();
  expect(spring.spring).toEqual({ application: `shop-${sfx}`, profile: "prod" });
  expect(spring.apollo).toMatchObject({ app_id: `shop-${sfx}` });
});

test("the audit log shows who did what", async ({ page }) => {
  await signIn(page, "admin", adminPassword);
  await page.goto(`/audit?topic=${topic}`);
  await expect(page.locator("table.audit tbody tr", { hasText: "pin.set" })).toContainText("user:admin");
  await expect(page.locator("table.audit tbody tr", { hasText: "pin.remove" })).toBeVisible();
  await expect(page.locator("table.audit tbody tr", { hasText: "version.publish" }).first()).toBeVisible();
  await expect(page.locator("table.audit tbody tr", { hasText: "topic.update" })).toContainText("changed in the console");
  await page.getByLabel("Action").fill("pin.");
  await page.getByRole("button", { name: "Filter" }).click();
  await expect(page.locator("table.audit tbody tr")).toHaveCount(2);
  await shot(page, "audit");
});

test("rollout panel: start, pause, resume, advance, cancel and roll back", async ({ page, request }) => {
  const ro = `rollout.${sfx}`;
  expect((await request.post("/api/v1/topics", { headers: auth, data: { name: ro, owner: team } })).status()).toBe(201);
  await request.post(`/api/v1/topics/${ro}/versions`, { headers: auth, data: { data: "1" } });
  await request.post(`/api/v1/topics/${ro}/versions`, { headers: auth, data: { data: "2", scopes: [] } });
  await signIn(page, "admin", adminPassword);
  await page.goto(`/topics/${ro}/rollouts`);
  await ready(page);
  await page.getByLabel(/Stages/).fill("cluster=canary 3600 min_applied=0.9\nregion=eu 3600\n*");
  await page.getByRole("button", { name: "Start rollout" }).click();
  const card = page.locator("section.rollout").first();
  await expect(card.locator(".badge").first()).toHaveText("running");
  await expect(card.locator("li.stage").nth(0)).toContainText("reached");
  await expect(card.locator("li.stage").nth(0)).toContainText("gate: ≥90% applied");
  await expect(card.locator("li.stage").nth(1)).toContainText(/due in 59m|due in 1h/);
  await expect(card.locator("li.stage").nth(0).locator(".health")).toHaveText("0 of 0 matching nodes applied v2, 0 failed");
  await shot(page, "rollouts");

  await card.getByRole("button", { name: "Pause" }).click();
  await expect(card.locator(".badge").first()).toHaveText("paused");
  await expect(card).toContainText("Paused with");
  await card.getByRole("button", { name: "Resume" }).click();
  await expect(card.locator(".badge").first()).toHaveText("running");
  await card.getByRole("button", { name: "Advance" }).click();
  await expect(card.locator("li.stage").nth(1)).toContainText("reached");
  await card.getByRole("button", { name: "Cancel and roll back" }).click();
  await expect(card.locator(".badge").first()).toHaveText("cancelled");
  await expect(card).toContainText("rolled back");
  await expect(card.locator("li.stage").nth(2)).toHaveClass(/skipped/);
  const eu = await (await request.get(`/api/v1/topics/${ro}/resolve?labels=region=eu`)).json();
  expect(eu).toMatchObject({ version: 1, pinned: true });
  // A finished rollout offers no actions; a bad plan is refused readably.
  await expect(card.getByRole("button")).toHaveCount(0);
  await page.getByLabel(/Stages/).fill("region 60");
  await page.getByRole("button", { name: "Start rollout" }).click();
  await expect(page.getByRole("alert")).toContainText("key=value");

  // Publishing from the console with one of the topic's plans starts a rollout; Complete finishes it.
  const patched = await request.patch(`/api/v1/topics/${ro}`, {
    headers: auth,
    data: { plans: { "canary-first": { stages: [{ selector: { cluster: "canary" }, wait_s: 3600 }, { selector: {}, wait_s: 0 }] } } },
  });
  expect(patched.status(), await patched.text()).toBe(200);
  await page.goto(`/topics/${ro}/publish`);
  await ready(page);
  await page.getByLabel("Payload").fill("3");
  await page.locator("#publish-form").getByLabel(/Rollout plan/).fill("canary-first");
  await page.locator("#publish-form").getByRole("button", { name: "Publish" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Published v3" })).toBeVisible();
  await page.goto(`/topics/${ro}/rollouts`);
  await ready(page);
  const newest = page.locator("section.rollout").first();
  await expect(newest).toContainText("of v3");
  await expect(newest.locator(".badge").first()).toHaveText("running");
  await newest.getByRole("button", { name: "Complete" }).click();
  await expect(newest.locator(".badge").first()).toHaveText("completed");
  const us = await (await request.get(`/api/v1/topics/${ro}/resolve?labels=region=us`)).json();
  expect(us).toMatchObject({ version: 3, pinned: false });

  // Every rollout action is in the audit log.
  await page.goto(`/audit?topic=${ro}&action=rollout.`);
  for (const action of ["rollout.start", "rollout.pause", "rollout.resume", "rollout.advance", "rollout.cancel", "rollout.complete"]) {
    await expect(page.locator("table.audit tbody tr", { hasText: action }).first()).toContainText("user:admin");
  }
});

test("consumers tab: who holds which version, and failures", async ({ page, request }) => {
  const poll = (instance: string, held: number | null, labels: object, applied?: object) =>
    request.post("/api/v1/poll", { data: { consumer: { instance, labels }, topics: { [topic]: held }, ...(applied ? { applied: { [topic]: applied } } : {}) } });
  expect((await poll("node-a", 2, { region: "eu" })).status()).toBe(200);
  expect((await poll("node-b", 1, { region: "us" }, { version: 2, ok: false, error: "parse error at line 3" })).status()).toBe(200);
  expect((await poll("node-c", null, { region: "us" })).status()).toBe(200);
  await signIn(page, "admin", adminPassword);
  await expect.poll(async () => {
    await page.goto(`/topics/${topic}/consumers`);
    return page.locator("table.consumers tbody tr").count();
  }, { timeout: 15_000 }).toBe(3);
  const b = page.locator("table.consumers tbody tr", { hasText: "node-b" });
  await expect(b.locator("td.held")).toHaveText("v1");
  await expect(b).toContainText("parse error at line 3");
  // Polled without a token: shown, marked, and not trusted by rollout gates.
  await expect(b.locator(".badge.anon")).toHaveText("anonymous");
  await expect(page.locator("p.counts")).toContainText("v2 1 node");
  await expect(page.locator("p.counts")).toContainText("v1 1 node");
  // node-a holds the newest version (v2); node-b and node-c should: 1 of 3.
  await expect(page.locator(".propagation .summary")).toContainText("v2: 1 of 3 nodes (33%) hold it");
  await expect(page.locator(".propagation svg polyline")).toHaveCount(1);
  await page.getByLabel("Labels").fill("region=us");
  await page.getByRole("button", { name: "Filter" }).click();
  await expect(page.locator("table.consumers tbody tr")).toHaveCount(2);
  await shot(page, "consumers");
  // The topics list counts them; a topic nobody polls is listed as unused.
  await page.goto(`/?q=${topic}`);
  await expect(page.locator("table.topics tbody tr", { hasText: topic }).locator("td.consumers")).toHaveText("3");
  await page.goto("/unused?days=1");
  await expect(page.locator("table.unused tbody tr", { hasText: `rollout.${sfx}` })).toContainText("never");
  await expect(page.locator("table.unused tbody tr", { hasText: topic })).toHaveCount(0);
  await shot(page, "unused");
});

test("a node that polls through a relay is listed under its own name, with its relay", async ({ page, request }) => {
  await signIn(page, "admin", adminPassword);
  await page.goto("/admin");
  await ready(page);
  // A relay token, made on the admin page (no team, labels or topics of its own).
  const t = page.locator("#create-token");
  await t.getByLabel("Token name").fill(`relay-${sfx}`);
  await t.getByLabel("Token kind").selectOption("relay");
  await t.getByLabel("Token rights").selectOption("");
  await t.getByRole("button", { name: "Create token" }).click();
  const secret = page.locator(".token code.secret");
  await expect(secret).toContainText(/^imp_[0-9a-f]{64}$/);
  const relayToken = ((await secret.textContent()) ?? "").trim();
  await expect(page.locator("table.tokens tbody tr", { hasText: `relay-${sfx}` })).toHaveCount(1);
  // The relay forwards a downstream node's report, as an agent in relay mode does.
  const r = await request.post("/api/v1/relay/reports", {
    headers: { Authorization: `Bearer ${relayToken}` },
    data: { relay: { instance: `edge-relay-${sfx}` }, reports: [{ consumer: { instance: "node-r", labels: { region: "eu" } }, topics: { [topic]: 2 } }] },
  });
  expect(r.status()).toBe(200);
  expect((await r.json()).recorded).toBe(1);
  // Without a relay token the same report is refused and records nothing.
  const refused = await request.post("/api/v1/relay/reports", {
    data: { relay: { instance: "fake" }, reports: [{ consumer: { instance: "node-x", labels: {} }, topics: { [topic]: 2 } }] },
  });
  expect(refused.status()).toBe(401);
  await expect.poll(async () => {
    await page.goto(`/topics/${topic}/consumers`);
    return page.locator("table.consumers tbody tr", { hasText: "node-r" }).count();
  }, { timeout: 15_000 }).toBe(1);
  const row = page.locator("table.consumers tbody tr", { hasText: "node-r" });
  await expect(row.locator(".badge.relay")).toHaveText(`via edge-relay-${sfx}`);
  await expect(row.locator("td.held")).toHaveText("v2");
  await expect(page.locator("table.consumers tbody tr", { hasText: "node-x" })).toHaveCount(0);
  await shot(page, "consumers-relayed");
});

test("a non-owner can read but not change; an owner can", async ({ page, request }) => {
  await signIn(page, `bob-${sfx}`, userPassword);
  await page.goto(`/topics/${topic}/publish`);
  await ready(page);
  await expect(page.locator(".flash.readonly")).toContainText(team);
  await page.getByLabel("Payload").fill(JSON.stringify({ rate: 3 }));
  await page.locator("#publish-form").getByRole("button", { name: "Publish" }).click();
  await expect(page.getByRole("alert")).toContainText("no rights");
  await shot(page, "forbidden");
  let versions = await (await request.get(`/api/v1/topics/${topic}/versions`)).json();
  expect(versions.versions.length).toBe(2);
  await page.goto("/admin");
  await expect(page.getByRole("alert")).toContainText("admin");
  await signOut(page);

  await signIn(page, `alice-${sfx}`, userPassword);
  await page.goto(`/topics/${topic}/publish`);
  await ready(page);
  await page.getByLabel("Payload").fill(JSON.stringify({ rate: 3 }));
  await page.locator("#publish-form").getByRole("button", { name: "Publish" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Published v3" })).toBeVisible();
  versions = await (await request.get(`/api/v1/topics/${topic}/versions`)).json();
  expect(versions.versions[0].created_by).toBe(`user:alice-${sfx}`);
  await signOut(page);
  await page.goto("/");
  await expect(page).toHaveURL(/\/login/);
});

import { expect, test } from "@playwright/test";
import { auth, ready, shot, signIn, signOut, userPassword } from "./kit";

/**
 * A topic encrypted at rest (docs/encryption.md, "At rest") as its admin sees it: published
 * and read (a poll and a download with the admin token, the console's version view), its
 * consumers tab lists the plaintext-read audit — reader, version, reads, first and last —
 * to its publishers only (a user outside its owner team sees no card).
 * `./dev test e2e` gives its server (two regions) a keyring with the key `e2e`.
 * Hydrated and without JavaScript; a screenshot of the consumers tab.
 */

test.describe.configure({ mode: "serial" });


test("an at-rest topic's consumers tab lists who read its plaintext", async ({ page, request }) => {
  const topic = `sealed.${test.info().project.name.replace(/[^a-z]/g, "")}${Date.now().toString(36)}`;
  const created = await request.post(`/api/v1/topics`, {
    headers: auth,
    data: { name: topic, owner: "e2e", encryption: { mode: "at_rest", key: "e2e" } },
  });
  expect(created.status(), await created.text()).toBe(201);
  const published = await request.post(`/api/v1/topics/${topic}/versions`, {
    headers: auth,
    data: { data: JSON.stringify({ password: "hunter2" }) },
  });
  expect(published.status(), await published.text()).toBe(201);
  // Two plaintext reads with the admin token: a poll answered with the payload, a download.
  const polled = await request.post(`/api/v1/poll`, {
    headers: auth,
    data: { consumer: { instance: "e2e-at-rest", labels: {} }, topics: { [topic]: null } },
  });
  expect(polled.status(), await polled.text()).toBe(200);
  expect((await polled.json()).updates[topic].data_base64).toBeTruthy();
  const downloaded = await request.get(`/api/v1/topics/${topic}/versions/1/data`, { headers: auth });
  expect(await downloaded.text()).toContain("hunter2");

  await signIn(page);
  // The console's view of the payload is a read too (user:admin).
  await page.goto(`/topics/${topic}/versions/1`);
  await ready(page);
  await expect(page.getByText("this view is counted in the plaintext-read audit")).toBeVisible();

  await page.goto(`/topics/${topic}/consumers`);
  await ready(page);
  const card = page.getByRole("region", { name: "Plaintext reads" });
  await expect(card).toBeVisible();
  await expect(card.locator("thead")).toContainText("Reader");
  await expect(card.locator("thead")).toContainText("First");
  const byToken = card.locator('tr.plaintext-read[data-reader^="token:"][data-version="1"]');
  await expect(byToken).toHaveCount(1);
  await expect(byToken.locator("td.reads")).toHaveText("2");
  await expect(card.locator('tr.plaintext-read[data-reader="user:admin"] td.reads')).not.toHaveText("");
  await shot(page, "at-rest-plaintext-reads");

  // A topic that is not at rest has no such card.
  const plain = `${topic}-plain`;
  expect((await request.post(`/api/v1/topics`, { headers: auth, data: { name: plain } })).status()).toBe(201);
  await page.goto(`/topics/${plain}/consumers`);
  await ready(page);
  await expect(page.getByRole("heading", { name: "Versions held" })).toBeVisible();
  await expect(page.getByRole("region", { name: "Plaintext reads" })).toHaveCount(0);

  // A user who may read the topic but not publish to it (not in its owner team `e2e`) gets
  // the consumers tab without the audit card (the API refuses them the audit: 403).
  const reader = `reader-${topic.replace(/[^a-z0-9]/g, "")}`;
  await page.goto(`/admin`);
  await ready(page);
  const form = page.locator("#create-user");
  await form.getByLabel("New username").fill(reader);
  await form.getByLabel("New password").fill(userPassword);
  await form.getByRole("button", { name: "Create user" }).click();
  await expect(page.locator("table.users tbody tr", { hasText: reader })).toBeVisible();
  await signOut(page);
  await signIn(page, reader, userPassword);
  await page.goto(`/topics/${topic}/consumers`);
  await ready(page);
  await expect(page.getByRole("heading", { name: "Versions held" })).toBeVisible();
  await expect(page.getByRole("region", { name: "Plaintext reads" })).toHaveCount(0);
  await shot(page, "at-rest-reader");
});

import * as http from "node:http";
import { AddressInfo } from "node:net";
import { expect, test } from "@playwright/test";
import { auth, ready, shot, signIn } from "./kit";

/**
 * The Webhooks page as an operator uses it: create a subscription (its secret shown
 * once), see a change's delivery in the log (status, latency, the receiver's answer),
 * Redeliver it. The receiver is a small HTTP server on loopback, so the subscription
 * allows private addresses (the admin may). Runs hydrated and without JavaScript.
 */

test.describe.configure({ mode: "serial" });

let received: { headers: http.IncomingHttpHeaders; body: string }[] = [];
let server: http.Server;
let receiverUrl = "";
let topic = "";

test.beforeAll(async ({}, testInfo) => {
  received = [];
  server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      received.push({ headers: req.headers, body });
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok-from-receiver");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  receiverUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  topic = `webhooks.${testInfo.project.name.replace(/[^a-z]/g, "")}${Date.now().toString(36)}`;
});

test.afterAll(async () => {
  // Imprint keeps idle connections to receivers: close them, or close() waits for them.
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

test("create a webhook, see its delivery, redeliver it", async ({ page, request }) => {
  const created = await request.post("/api/v1/topics", { headers: auth, data: { name: topic, owner: "e2e" } });
  expect(created.status(), await created.text()).toBe(201);
  await signIn(page);
  await page.goto("/webhooks");
  await ready(page);
  await expect(page.getByRole("heading", { name: "Webhooks" })).toBeVisible();
  const form = page.locator("#create-webhook");
  await form.getByLabel("Webhook URL").fill(receiverUrl);
  await form.getByLabel("Webhook scope").selectOption("topic");
  await form.getByLabel("Topic or team").fill(topic);
  await form.getByLabel("Event types").fill("version.published");
  await form.getByLabel("Webhook description").fill("e2e receiver");
  await form.getByLabel(/private addresses/).check();
  await form.getByRole("button", { name: "Create webhook" }).click();
  await expect(page.getByRole("status").filter({ hasText: "signing secret" })).toContainText("whsec_");
  const row = page.locator("table.webhooks tr", { hasText: receiverUrl });
  await expect(row).toContainText(`topic ${topic}`);
  await shot(page, "webhooks");

  // A bad subscription is refused with the service's message, and nothing is added.
  await page.goto("/webhooks");
  await ready(page);
  await form.getByLabel("Webhook URL").fill("http://169.254.169.254/latest/meta-data/");
  await form.getByLabel("Webhook scope").selectOption("all");
  await form.getByRole("button", { name: "Create webhook" }).click();
  await expect(page.getByRole("alert")).toContainText("link-local");
  await expect(page.locator("table.webhooks tr", { hasText: "169.254.169.254" })).toHaveCount(0);

  const published = await request.post(`/api/v1/topics/${topic}/versions`, { headers: auth, data: { data: "v1" } });
  expect(published.status()).toBe(201);
  await expect.poll(() => received.length, { timeout: 20_000 }).toBe(1);
  const event = JSON.parse(received[0].body);
  expect(event.type).toBe("io.imprint.version.published");
  expect(event.subject).toBe(topic);
  expect(received[0].headers["webhook-signature"]).toMatch(/^v1,/);

  await page.goto("/webhooks");
  await ready(page);
  await page.locator("table.webhooks tr", { hasText: receiverUrl }).getByRole("link", { name: "Deliveries" }).click();
  await ready(page);
  const delivery = page.locator("table.deliveries tbody tr").first();
  // The attempt is recorded just after the receiver answered: reload until it is.
  await expect
    .poll(async () => {
      await page.reload();
      return (await delivery.textContent()) ?? "";
    }, { timeout: 20_000 })
    .toContain("delivered");
  await ready(page);
  await expect(delivery).toContainText("version.published");
  await expect(delivery).toContainText("delivered");
  await expect(delivery).toContainText("200");
  await expect(delivery).toContainText("ok-from-receiver");
  await expect(delivery).toContainText(" ms");
  await shot(page, "webhook-deliveries");
  await delivery.getByRole("button", { name: "Redeliver" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Queued for redelivery" })).toBeVisible();
  await expect.poll(() => received.length, { timeout: 20_000 }).toBe(2);
  expect(received[1].headers["webhook-id"]).toBe(received[0].headers["webhook-id"]);
});

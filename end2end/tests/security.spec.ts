import { expect, test } from "@playwright/test";
import { adminPassword, auth } from "./kit";

/**
 * The security headers as a browser sees them (issue 19): console pages under a nonce
 * CSP that the hydrated console lives with (no violation, hydration completes), never
 * framed; a published HTML payload is a sandboxed download, not a page on this origin.
 */

test("console pages carry a nonce CSP the console lives with", async ({ page }) => {
  const violations: string[] = [];
  await page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      (window as unknown as { __csp: string[] }).__csp ??= [];
      (window as unknown as { __csp: string[] }).__csp.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy/i.test(m.text())) violations.push(m.text());
  });
  const response = await page.goto("/login");
  const h = response!.headers();
  expect(h["content-security-policy"]).toContain("frame-ancestors 'none'");
  expect(h["content-security-policy"]).toMatch(/script-src 'self' 'nonce-[A-Za-z0-9_-]+' 'wasm-unsafe-eval'/);
  expect(h["x-content-type-options"]).toBe("nosniff");
  expect(h["x-frame-options"]).toBe("DENY");
  expect(h["referrer-policy"]).toBe("same-origin");
  if (test.info().project.name === "hydrated") {
    await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
  }
  await page.getByLabel("Username").fill("admin");
  await page.getByLabel("Password").fill(adminPassword);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Topics" })).toBeVisible();
  if (test.info().project.name === "hydrated") {
    await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
  }
  const recorded = await page.evaluate(() => (window as unknown as { __csp?: string[] }).__csp ?? []);
  expect([...violations, ...recorded]).toEqual([]);
});

test("a published HTML payload is a sandboxed download", async ({ page, request }) => {
  const name = `active.${test.info().project.name.replace(/[^a-z]/g, "")}${Date.now().toString(36)}`;
  expect((await request.post("/api/v1/topics", { headers: auth, data: { name, owner: "payments" } })).status()).toBe(201);
  const v = await request.post(`/api/v1/topics/${name}/versions`, {
    headers: auth,
    data: { data: "<script>document.title='owned'</script>", content_type: "text/html" },
  });
  expect(v.status()).toBe(201);
  const r = await request.get(`/api/v1/topics/${name}/latest`);
  expect(r.headers()["content-disposition"]).toBe("attachment");
  expect(r.headers()["content-security-policy"]).toContain("sandbox");
  expect(r.headers()["x-content-type-options"]).toBe("nosniff");
  // In the browser it is a download: no page of this origin runs it.
  const download = page.waitForEvent("download");
  await page.goto(`/api/v1/topics/${name}/latest`).catch(() => {});
  expect((await download).suggestedFilename()).toBeTruthy();
});

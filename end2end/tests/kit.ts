import * as path from "node:path";
import { expect, Page, test } from "@playwright/test";

/**
 * What the specs share (not a spec itself: Playwright runs `*.spec.ts` only): the server's
 * admin token and password as `./dev test e2e` passes them, the password the specs give the
 * users they create, where screenshots go, and signing in and out of the console.
 */

export const token = process.env.IMPRINT_TOKEN ?? "";
export const adminPassword = process.env.IMPRINT_ADMIN_PASSWORD ?? "e2e-admin-password";
export const auth = { Authorization: `Bearer ${token}` };
export const userPassword = "correct-horse-battery";
export const shots = path.join(__dirname, "..", "screenshots");

/** A full-page screenshot named after the project (hydrated, no-js) and `name`. */
export async function shot(page: Page, name: string) {
  await page.screenshot({ path: path.join(shots, `${test.info().project.name}-${name}.png`), fullPage: true });
}

/** In the hydrated project, waits until the page has hydrated (the body says so). */
export async function ready(page: Page) {
  if (test.info().project.name === "hydrated") {
    await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
  }
}

/** Signs in through the login form (the admin by default); `expectOk` waits to leave /login. */
export async function signIn(page: Page, user = "admin", password = adminPassword, expectOk = true) {
  await page.goto("/login");
  await ready(page);
  await page.getByLabel("Username").fill(user);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  if (expectOk) await expect(page).not.toHaveURL(/\/login/);
}

export async function signOut(page: Page) {
  await page.getByRole("button", { name: "Sign out" }).click();
  await expect(page).toHaveURL(/\/login/);
}

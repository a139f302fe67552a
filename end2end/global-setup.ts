import type { FullConfig } from "@playwright/test";

/** Waits until the server under test answers `GET /healthz` (at most 90 s). */
export default async function globalSetup(config: FullConfig): Promise<void> {
  const baseURL =
    config.projects[0]?.use.baseURL ??
    process.env.IMPRINT_BASE_URL ??
    "http://127.0.0.1:3000";
  const url = new URL("/healthz", baseURL).toString();
  const deadline = Date.now() + 90_000;
  let last = "";
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      if (res.ok) return;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = e instanceof Error ? e.message : String(e);
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error(`${url} did not answer within 90 s (last: ${last})`);
}

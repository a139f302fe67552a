/**
 * Delivering one version to one subscription: fetch it (inline `data_base64`, or streamed
 * from `data_url`, resuming with `Range`), verify its size and SHA-256, run the decoder,
 * swap the value in, save it to the disk cache and record the outcome to report. Also the
 * two other ways a version arrives: the start-up fallback to older versions, and the
 * object-store snapshot read while the server is unreachable.
 */
import { createHash, type Hash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { fileName } from "./cache.js";
import type { Core } from "./core.js";
import { Aborted, ApiError, NetworkError, ProtocolError, Rejected, VerifyError, describe, isTransient } from "./errors.js";
import { decodeBase64, manifestPayload, readManifest } from "./snapshot.js";
import type { Payload, Source, Subscription } from "./subscription.js";

/** Attempts of one download, each resuming where the previous one broke off. */
const MAX_ATTEMPTS = 3;
/** Bytes of a failure report's error (docs/protocol.md: ≤ 1 KiB is plenty). */
const ERROR_MAX_BYTES = 1024;

/** `s` cut to at most `max` bytes of UTF-8, on a character boundary. */
export function truncateUtf8(s: string, max: number): string {
  if (Buffer.byteLength(s) <= max) return s;
  let out = "";
  let n = 0;
  for (const ch of s) {
    const b = Buffer.byteLength(ch);
    if (n + b > max - 3) break;
    out += ch;
    n += b;
  }
  return out + "…";
}

/** One update of a poll answer (or a version the start-up fallback builds). */
export interface Update {
  version: number;
  pinned: boolean;
  metadata: Record<string, string>;
  content_type: string;
  size: number;
  sha256: string;
  data_base64?: string | null;
  data_url: string;
  /** Each region's copy, in the order to try them (several regions, docs/regions.md). */
  data_urls?: DataUrl[];
}

/** One region's copy of a payload. */
export interface DataUrl {
  region: string;
  url: string;
}

/** A verified payload, and the region whose copy it is (downloads from several regions). */
export type Fetched = ({ data: Buffer; path?: undefined } | { path: string; data?: undefined }) & { region?: string };

/** The URLs to try in order: `data_urls`, else `data_url` alone (no region). */
export function downloadUrls(u: Update): { region: string | undefined; url: string }[] {
  const urls = (u.data_urls ?? []).filter((d) => d.url);
  return urls.length > 0 ? urls.map((d) => ({ region: d.region, url: d.url })) : [{ region: undefined, url: u.data_url }];
}

type Sub = Subscription<unknown>;

/** Where the bytes of one payload go: memory or a temporary file, hashed and counted as they come. */
class Sink {
  hash: Hash = createHash("sha256");
  n = 0;
  parts: Buffer[] = [];
  fh: fs.FileHandle | undefined;
  tmp: string | undefined;

  constructor(
    private readonly core: Core,
    private readonly sub: Sub,
    private readonly u: { size: number; sha256: string; version: number },
  ) {}

  async open(): Promise<void> {
    if (this.sub.kind === "file") {
      await this.core.store.prepare(this.sub.topic);
      this.tmp = this.core.store.tempPath(this.sub.topic);
      this.fh = await fs.open(this.tmp, "w");
    }
  }

  async write(c: Uint8Array): Promise<void> {
    this.n += c.length;
    if (this.n > this.u.size) throw new VerifyError(`size mismatch: payload larger than its size ${this.u.size}`);
    this.hash.update(c);
    if (this.fh) await this.fh.write(c);
    else this.parts.push(Buffer.from(c));
  }

  async reset(): Promise<void> {
    this.hash = createHash("sha256");
    this.n = 0;
    this.parts = [];
    if (this.fh) {
      await this.fh.close();
      this.fh = await fs.open(this.tmp!, "w"); // truncated
    }
  }

  /** Checks size and SHA-256; the bytes, or the file moved into place. */
  async finish(): Promise<Fetched> {
    if (this.n !== this.u.size) throw new VerifyError(`size mismatch: expected ${this.u.size} bytes, received ${this.n}`);
    const actual = this.hash.digest("hex");
    if (actual !== this.u.sha256) throw new VerifyError(`checksum mismatch: expected sha256 ${this.u.sha256}, received ${actual}`);
    if (!this.fh) return { data: Buffer.concat(this.parts) };
    await this.fh.sync();
    await this.fh.close();
    this.fh = undefined;
    const placed = await this.core.store.adoptFile(this.sub.topic, this.u.version, this.u.sha256, this.tmp!);
    this.tmp = undefined;
    return { path: placed };
  }

  /** Drops a partial file (never used). */
  async discard(): Promise<void> {
    await this.fh?.close().catch(() => {});
    this.fh = undefined;
    if (this.tmp) await fs.unlink(this.tmp).catch(() => {});
    this.tmp = undefined;
  }
}

/** The start of a `Content-Range: bytes a-b/n` header. */
function rangeStart(v: string | null): number | undefined {
  const m = v && /^bytes\s+(\d+)-/.exec(v.trim());
  return m ? Number(m[1]) : undefined;
}

/** Streams `url` (one of `u`'s) into `sink`, resuming an interrupted transfer with `Range`. */
async function download(core: Core, url: string, sink: Sink): Promise<void> {
  const timeoutMs = core.settings.requestTimeoutMs;
  for (let attempt = 1; ; attempt++) {
    const headers: Record<string, string> = { "accept-encoding": "identity" };
    if (sink.n > 0) headers.range = `bytes=${sink.n}-`;
    const ans = await core.http.request("GET", url, { headers, timeoutMs, signal: core.stopSignal });
    try {
      if (sink.n > 0 && !(ans.status === 206 && rangeStart(ans.headers.get("content-range")) === sink.n)) {
        await sink.reset(); // the server sent everything again (or another range): start over
      }
      for await (const c of ans.chunks(timeoutMs)) await sink.write(c);
      return;
    } catch (e) {
      if (!(e instanceof NetworkError) || attempt >= MAX_ATTEMPTS) throw e;
      core.log.info(`imprint: download of ${url} broke off at ${sink.n} bytes (${describe(e)}); resuming`);
    } finally {
      ans.close();
    }
  }
}

async function sinkAll(core: Core, sub: Sub, u: Update, fill: (s: Sink) => Promise<void>): Promise<Fetched> {
  const sink = new Sink(core, sub, u);
  try {
    await sink.open();
    await fill(sink);
    return await sink.finish();
  } finally {
    await sink.discard();
  }
}

/** Fetches and verifies `u`'s payload; Rejected when this version will not do, else transient errors. */
export async function fetchPayload(core: Core, sub: Sub, u: Update): Promise<Fetched> {
  if (typeof u.data_base64 === "string") {
    let data: Buffer;
    try {
      data = decodeBase64(u.data_base64, "data_base64");
    } catch (e) {
      throw new Rejected(describe(e));
    }
    try {
      return await sinkAll(core, sub, u, (s) => s.write(data));
    } catch (e) {
      if (!(e instanceof VerifyError)) throw e;
      if (!u.data_url) throw new Rejected(e.message);
      core.log.warn(`imprint: the inline payload of ${sub.topic} v${u.version} does not verify (${e.message}); downloading it`);
    }
  }
  if (!u.data_url) throw new Rejected("the update has neither data_base64 nor data_url");
  const urls = downloadUrls(u);
  if (urls.length > 1) return fetchFailover(core, sub, u, urls);
  const { region, url } = urls[0];
  let last: VerifyError | undefined;
  for (let i = 0; i < 2; i++) {
    // a mismatch may be a transfer accident: once more, then reject
    try {
      const f = await sinkAll(core, sub, u, (s) => download(core, url, s));
      return region === undefined ? f : { ...f, region };
    } catch (e) {
      if (e instanceof VerifyError) {
        core.log.warn(`imprint: the downloaded payload of ${sub.topic} v${u.version} does not verify: ${e.message}`);
        last = e;
        continue;
      }
      if (e instanceof ApiError && !e.transient) throw new Rejected(e.message);
      if (e instanceof ProtocolError) throw new Rejected(e.message);
      throw e;
    }
  }
  throw new Rejected(last?.message ?? "the download did not verify");
}

/**
 * Several regions: each URL in order; a connect error (or timeout), a 5xx or a payload
 * that does not verify moves on to the next region. The version is rejected only when
 * every region's copy was reachable and none verified; if a region was unreachable the
 * failure is transient (retried with backoff), as the Rust client does.
 */
async function fetchFailover(core: Core, sub: Sub, u: Update, urls: { region: string | undefined; url: string }[]): Promise<Fetched> {
  let unreachable: unknown;
  let mismatch: VerifyError | undefined;
  for (const { region, url } of urls) {
    try {
      const f = await sinkAll(core, sub, u, (s) => download(core, url, s));
      core.metrics.count("imprint_client_region_downloads_total", { region: region ?? "" });
      return { ...f, region };
    } catch (e) {
      if (e instanceof VerifyError) {
        core.log.warn(`imprint: the ${region} copy of ${sub.topic} v${u.version} does not verify (${e.message}); trying the next region`);
        mismatch = e;
      } else if (e instanceof NetworkError || (e instanceof ApiError && e.status >= 500)) {
        core.log.warn(`imprint: region ${region} failed for ${sub.topic} v${u.version} (${describe(e)}); trying the next region`);
        unreachable = e;
      } else if (e instanceof ApiError && !e.transient) {
        throw new Rejected(e.message);
      } else if (e instanceof ProtocolError) {
        throw new Rejected(e.message);
      } else {
        throw e;
      }
      core.metrics.count("imprint_client_region_failovers_total", { region: region ?? "" });
    }
  }
  if (unreachable !== undefined) throw unreachable;
  throw new Rejected(mismatch?.message ?? "no region to download from");
}

/** Decodes a verified payload; on success swaps it in and caches it (else Rejected). */
export async function applyFetched(core: Core, sub: Sub, u: Update, fetched: Fetched, source: Exclude<Source, "default">): Promise<void> {
  const data = fetched.data !== undefined ? await decrypted(core, sub.topic, u.version, fetched.data) : undefined;
  const p: Payload = Object.freeze({
    topic: sub.topic,
    version: u.version,
    sha256: u.sha256,
    size: u.size,
    contentType: u.content_type ?? "",
    metadata: Object.freeze({ ...(u.metadata ?? {}) }),
    pinned: Boolean(u.pinned),
    source,
    region: fetched.region ?? null,
    ...(data !== undefined ? { data } : { path: fetched.path }),
  });
  let value: unknown;
  try {
    value = await sub.decode(p);
  } catch (e) {
    if (fetched.path !== undefined) {
      const held = sub.current();
      const inUse = held.version !== null && path.basename(fetched.path) === fileName(held.version, held.sha256 ?? "");
      if (!inUse) await fs.unlink(fetched.path).catch(() => {});
    }
    const what = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    throw new Rejected(`decode failed: ${what}`);
  }
  sub.swap({ value, version: u.version, source, sha256: u.sha256, pinned: Boolean(u.pinned), region: fetched.region ?? null });
  core.metrics.gauge("imprint_client_version", u.version, { topic: sub.topic });
  core.metrics.count("imprint_client_updates_applied_total", { topic: sub.topic });
  core.log.info(`imprint: ${sub.topic} v${u.version} applied (source ${source})`);
  await save(core, sub.topic, u, fetched);
}

/** The first line of every age v1 file (an end-to-end encrypted topic's payload). */
export const AGE_MAGIC = Buffer.from("age-encryption.org/v1\n");

/** An in-memory payload's plaintext: itself, or an age file decrypted with `decrypt` (docs/encryption.md). */
async function decrypted(core: Core, topic: string, version: number, data: Buffer): Promise<Buffer> {
  if (data.length < AGE_MAGIC.length || !data.subarray(0, AGE_MAGIC.length).equals(AGE_MAGIC)) return data;
  if (core.decrypt === undefined) {
    throw new Rejected(
      `version ${version} of ${JSON.stringify(topic)} is end-to-end encrypted (age) and this client has no identity to decrypt it: give it the decrypt option`,
    );
  }
  try {
    return Buffer.from(await core.decrypt(topic, new Uint8Array(data)));
  } catch (e) {
    throw new Rejected(`cannot decrypt the payload: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** Records the applied payload in the cache (failures are only logged: the value is in use). */
async function save(core: Core, topic: string, u: Update, fetched: Fetched): Promise<void> {
  const store = core.store;
  if (!store.persistent && fetched.path === undefined) return;
  try {
    const file = fetched.path ?? (await store.writePayload(topic, u.version, u.sha256, fetched.data!));
    await store.commit({
      topic,
      version: u.version,
      sha256: u.sha256,
      size: u.size,
      content_type: u.content_type ?? "",
      metadata: { ...(u.metadata ?? {}) },
      file: path.basename(file),
      saved_at: Math.floor(Date.now() / 1000),
    });
  } catch (e) {
    if (!core.cacheWarned) {
      core.cacheWarned = true;
      core.log.warn(`imprint: cannot write the disk cache in ${store.root}; going on without it: ${describe(e)}`);
    } else {
      core.log.debug(`imprint: cannot write the disk cache: ${describe(e)}`);
    }
  }
}

function rejectedNow(core: Core, sub: Sub, version: number, e: Rejected): void {
  core.log.warn(`imprint: ${sub.topic} v${version} rejected, keeping the current value: ${e.message}`);
  core.metrics.count("imprint_client_apply_failures_total", { topic: sub.topic });
  sub.rejected({ topic: sub.topic, version, error: e.message });
}

/**
 * One update: deliver it, record the outcome, and at start-up fall back to older versions
 * when it does not apply. Throws only for transient failures (retried after a backoff).
 */
export async function handleUpdate(core: Core, sub: Sub, u: Update): Promise<void> {
  const st = sub.state;
  if (st.rejected && st.rejected.version === u.version && st.rejected.pinned === u.pinned) {
    st.stuck = true;
    return;
  }
  st.stuck = false;
  const first = sub.source !== "server";
  try {
    await applyFetched(core, sub, u, await fetchPayload(core, sub, u), "server");
  } catch (e) {
    if (!(e instanceof Rejected)) throw e;
    const error = truncateUtf8(e.message, ERROR_MAX_BYTES);
    rejectedNow(core, sub, u.version, e);
    st.rejected = { version: u.version, pinned: u.pinned };
    st.stuck = true;
    st.report = { version: u.version, ok: false, error };
    if (first && core.settings.startupFallback > 0 && !core.stopped) await fallback(core, sub, u.version);
    return;
  }
  st.rejected = undefined;
  const region = sub.servedRegion;
  st.report = region === null ? { version: u.version, ok: true } : { version: u.version, ok: true, region };
}

interface VersionInfo {
  version: number;
  size: number;
  sha256: string;
  content_type?: string;
  metadata?: Record<string, string>;
  scopes?: { selector?: Record<string, string> }[];
  purged?: boolean;
}

function releasedTo(v: VersionInfo, labels: Readonly<Record<string, string>>): boolean {
  return (v.scopes ?? []).some((s) => Object.entries(s.selector ?? {}).every(([k, val]) => labels[k] === val));
}

/**
 * The newest version failed to apply and this node has nothing from the server yet: try
 * the older versions released to its labels, newest first.
 */
async function fallback(core: Core, sub: Sub, failed: number): Promise<void> {
  const held = sub.version ?? 0;
  const limit = Math.min(core.settings.startupFallback * 4 + 10, 500);
  let versions: VersionInfo[];
  try {
    const ans = await core.http.request("GET", `/api/v1/topics/${sub.topic}/versions?limit=${limit}`, {
      timeoutMs: core.settings.requestTimeoutMs,
      signal: core.stopSignal,
    });
    const body = (await ans.json()) as { versions?: unknown };
    if (!Array.isArray(body?.versions)) throw new ProtocolError("the versions list has no versions");
    versions = body.versions as VersionInfo[];
  } catch (e) {
    if (e instanceof Aborted) return;
    core.log.warn(`imprint: cannot list older versions of ${sub.topic} to fall back to: ${describe(e)}`);
    return;
  }
  const candidates = versions
    .filter(
      (v) =>
        Number.isSafeInteger(v?.version) &&
        v.version < failed &&
        v.version > held &&
        !v.purged &&
        Number.isSafeInteger(v.size) &&
        typeof v.sha256 === "string" &&
        releasedTo(v, core.labels),
    )
    .slice(0, core.settings.startupFallback);
  for (const v of candidates) {
    const u: Update = {
      version: v.version,
      pinned: false,
      metadata: v.metadata ?? {},
      content_type: v.content_type ?? "",
      size: v.size,
      sha256: v.sha256,
      data_url: `/api/v1/topics/${sub.topic}/versions/${v.version}/data`,
    };
    try {
      await applyFetched(core, sub, u, await fetchPayload(core, sub, u), "server");
      core.log.warn(`imprint: ${sub.topic} started from v${v.version}: the newest (v${failed}) does not apply`);
      return;
    } catch (e) {
      if (e instanceof Rejected) {
        rejectedNow(core, sub, v.version, e);
        continue;
      }
      if (!(e instanceof Aborted)) {
        core.log.warn(`imprint: cannot fetch older version ${sub.topic} v${v.version}; giving up the fallback: ${describe(e)}`);
      }
      return;
    }
  }
}

/** Starts a subscription from its topic's snapshot if one verifies and decodes; never throws. */
export async function startFromSnapshot(core: Core, sub: Sub): Promise<void> {
  const store = core.snapshots;
  if (!store) return;
  try {
    const ms = core.settings.requestTimeoutMs;
    const m = await readManifest(store, sub.topic, ms, core.keyring);
    if (!m) {
      core.log.info(`imprint: no snapshot of ${sub.topic} in ${store.description ?? "the snapshot store"}`);
      return;
    }
    const u: Update = {
      version: m.version,
      pinned: false,
      metadata: m.metadata ?? {},
      content_type: m.content_type ?? "",
      size: m.size,
      sha256: m.sha256,
      data_url: `/api/v1/topics/${sub.topic}/versions/${m.version}/data`,
    };
    const body = await manifestPayload(store, m, ms, core.keyring);
    const fetched = await sinkAll(core, sub, u, async (s) => {
      if (body instanceof Uint8Array) await s.write(body);
      else for await (const c of body) await s.write(c);
    });
    await applyFetched(core, sub, u, fetched, "snapshot");
    core.log.warn(`imprint: the server is unreachable: ${sub.topic} started from the snapshot v${m.version}`);
  } catch (e) {
    core.log.warn(`imprint: the snapshot of ${sub.topic} is not usable; keeping the default: ${describe(e)}`);
  }
}

export { isTransient };

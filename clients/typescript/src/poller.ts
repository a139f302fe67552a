/**
 * The background loop: one batched (long) poll for every subscription of a client, each
 * update handed to `deliver`, and its outcome reported on the next poll. Failures back off
 * with jitter (and never sooner than the server's Retry-After); while the server is
 * unreachable, subscriptions with nothing to start from read their object-store snapshot.
 */
import type { Core } from "./core.js";
import { handleUpdate, startFromSnapshot, type DataUrl, type Update } from "./deliver.js";
import { Aborted, ApiError, ProtocolError, describe, isTransient } from "./errors.js";
import type { Report, Subscription } from "./subscription.js";

/** The server's hint, but never more (a bad hint must not stall a node). */
export const MAX_POLL_AFTER_MS = 60_000;
/** The longest Retry-After honoured. */
export const MAX_RETRY_AFTER_MS = 60_000;

type Sub = Subscription<unknown>;

/** Exponential backoff, each delay drawn from `[d/2, d]`, `d` doubling from min to max. */
export class Backoff {
  failures = 0;
  constructor(
    readonly minMs: number,
    readonly maxMs: number,
    private readonly random: () => number = Math.random,
  ) {}

  next(): number {
    const d = Math.min(this.minMs * 2 ** Math.min(this.failures, 20), this.maxMs);
    this.failures++;
    return d / 2 + (this.random() * d) / 2;
  }

  reset(): void {
    this.failures = 0;
  }
}

export interface PollBody {
  consumer: { instance: string; labels: Record<string, string> };
  topics: Record<string, number | null>;
  applied: Record<string, Report>;
  wait_ms: number;
}

export interface PollAnswer {
  updates: Record<string, Update>;
  missing: Record<string, string>;
  poll_after_ms: number;
}

export function requestBody(core: Core, asked: Sub[], waitMs: number): PollBody {
  const topics: Record<string, number | null> = {};
  const applied: Record<string, Report> = {};
  for (const s of asked) {
    topics[s.topic] = s.version;
    if (s.state.report) applied[s.topic] = { ...s.state.report };
  }
  return { consumer: { instance: core.instance, labels: { ...core.labels } }, topics, applied, wait_ms: Math.round(waitMs) };
}

const HEX64 = /^[0-9a-f]{64}$/;

/** The poll answer, checked field by field (a server may add fields; they are ignored). */
export function parseAnswer(raw: unknown): PollAnswer {
  const bad = (what: string) => new ProtocolError(`poll answer: ${what}`);
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) throw bad("not an object");
  const r = raw as Record<string, unknown>;
  const obj = (v: unknown, what: string): Record<string, unknown> => {
    if (v === undefined || v === null) return {};
    if (typeof v !== "object" || Array.isArray(v)) throw bad(`${what} is not an object`);
    return v as Record<string, unknown>;
  };
  const updates: Record<string, Update> = {};
  for (const [topic, v] of Object.entries(obj(r.updates, "updates"))) {
    const dataUrls = (list: unknown): DataUrl[] => {
      if (!Array.isArray(list)) throw bad(`the data_urls of ${topic} is not a list`);
      return list.map((d) => {
        const e = obj(d, `a data_urls entry of ${topic}`);
        if (typeof e.region !== "string" || typeof e.url !== "string" || !e.url) {
          throw bad(`a data_urls entry of ${topic} has no region and url`);
        }
        return { region: e.region, url: e.url };
      });
    };
    const u = obj(v, `the update of ${topic}`);
    const version = u.version;
    const size = u.size;
    if (!Number.isSafeInteger(version) || (version as number) < 1) throw bad(`the update of ${topic} has no valid version`);
    if (!Number.isSafeInteger(size) || (size as number) < 0) throw bad(`the update of ${topic} has no valid size`);
    if (typeof u.sha256 !== "string" || !HEX64.test(u.sha256)) throw bad(`the update of ${topic} has no valid sha256`);
    if (u.data_base64 !== undefined && u.data_base64 !== null && typeof u.data_base64 !== "string") {
      throw bad(`the update of ${topic} has a data_base64 that is not a string`);
    }
    const metadata: Record<string, string> = {};
    for (const [k, mv] of Object.entries(obj(u.metadata, `the metadata of ${topic}`))) metadata[k] = String(mv);
    updates[topic] = {
      version: version as number,
      pinned: u.pinned === true,
      metadata,
      content_type: typeof u.content_type === "string" ? u.content_type : "",
      size: size as number,
      sha256: u.sha256,
      data_base64: (u.data_base64 as string | null | undefined) ?? null,
      data_url: typeof u.data_url === "string" ? u.data_url : "",
      ...(u.data_urls === undefined || u.data_urls === null ? {} : { data_urls: dataUrls(u.data_urls) }),
    };
  }
  const missing: Record<string, string> = {};
  for (const [topic, why] of Object.entries(obj(r.missing, "missing"))) missing[topic] = String(why);
  const after = r.poll_after_ms;
  const pollAfter = typeof after === "number" && Number.isFinite(after) && after > 0 ? after : 0;
  return { updates, missing, poll_after_ms: pollAfter };
}

/** One poll, bounded by the hold plus the request timeout; `signal` abandons it. */
export async function sendPoll(core: Core, body: PollBody, signal: AbortSignal, timeoutMs?: number): Promise<PollAnswer> {
  const bound = timeoutMs ?? body.wait_ms + core.settings.requestTimeoutMs;
  const ans = await core.http.request("POST", "/api/v1/poll", { body, timeoutMs: bound, signal });
  return parseAnswer(await ans.json());
}

/** Reports went through: forget them, unless a newer one replaced them meanwhile. */
export function forgetSent(asked: Sub[], body: PollBody): void {
  for (const s of asked) {
    const sent = body.applied[s.topic];
    const r = s.state.report;
    if (r && sent && r.version === sent.version && r.ok === sent.ok && r.error === sent.error) s.state.report = undefined;
  }
}

export async function run(core: Core): Promise<void> {
  const s = core.settings;
  const backoff = new Backoff(s.backoffMinMs, s.backoffMaxMs);
  let nextRecheck: number | undefined;
  while (!core.stopped) {
    const gen = core.generation;
    const subs = core.live();
    if (subs.length === 0) {
      await core.pause(3600_000, gen);
      continue;
    }
    const now = Date.now();
    const anyStuck = subs.some((x) => x.state.stuck);
    const recheckDue = anyStuck && (nextRecheck === undefined || nextRecheck <= now);
    // all topics, except those stuck on a rejected version until their recheck is due
    const asked = subs.filter((x) => !x.state.stuck || recheckDue || x.state.report !== undefined);
    if (asked.length === 0) {
      await core.pause(Math.max(0, (nextRecheck ?? now + s.recheckRejectedMs) - now), gen);
      continue;
    }
    // short when something needs an answer now (a new or stuck topic); else long, held
    // at most until the next recheck
    const short = asked.some((x) => !x.state.settled || x.state.stuck);
    let wait = short ? 0 : s.longPollMs;
    if (!short && anyStuck && nextRecheck !== undefined) wait = Math.max(0, Math.min(wait, nextRecheck - now));
    if (recheckDue) nextRecheck = now + s.recheckRejectedMs;
    const body = requestBody(core, asked, wait);
    let delay: number;
    try {
      const answer = await sendPoll(core, body, core.pollSignal(gen));
      delay = await answered(core, asked, body, answer, short, backoff);
      if (asked.some((x) => x.state.stuck)) nextRecheck = Date.now() + s.recheckRejectedMs;
    } catch (e) {
      if (core.stopped) break;
      if (e instanceof Aborted || core.generation !== gen) continue; // a new subscription: ask again, with it
      delay = await failed(core, asked, e, backoff);
    }
    if (delay > 0 && !core.stopped) await core.pause(delay, gen);
  }
  core.log.debug("imprint: poller stopped");
}

async function answered(core: Core, asked: Sub[], body: PollBody, answer: PollAnswer, short: boolean, backoff: Backoff): Promise<number> {
  core.metrics.gauge("imprint_client_last_poll_success_seconds", Math.floor(Date.now() / 1000));
  backoff.reset();
  forgetSent(asked, body);
  let transient = false;
  for (const sub of asked) {
    if (core.stopped) break;
    const u = answer.updates[sub.topic];
    if (u) {
      try {
        await handleUpdate(core, sub, u);
      } catch (e) {
        if (core.stopped || e instanceof Aborted) break;
        if (!isTransient(e)) core.log.error(`imprint: unexpected error delivering ${sub.topic}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
        core.log.warn(`imprint: cannot fetch ${sub.topic} v${u.version}; will retry: ${describe(e)}`);
        core.metrics.count("imprint_client_poll_errors_total", { kind: "download" });
        transient = true;
      }
    } else if (sub.topic in answer.missing) {
      sub.state.stuck = false; // nothing is offered any more, not even the rejected version
      const reason = answer.missing[sub.topic];
      const msg = `imprint: the server has nothing for ${sub.topic}: ${reason}`;
      if (reason === "no_version_in_scope" || sub.state.settled) core.log.debug(msg);
      else core.log.warn(msg);
    } else {
      sub.confirm(); // up to date: what we hold is what we should hold
      sub.state.stuck = false;
    }
    sub.settle();
  }
  if (core.stopped) return 0;
  // the server's pause is for short pollers; a poll made short here is followed by a long one at once
  const hint = short && core.settings.longPollMs > 0 ? 0 : Math.min(answer.poll_after_ms, MAX_POLL_AFTER_MS);
  return transient ? Math.max(hint, backoff.next()) : hint;
}

async function failed(core: Core, asked: Sub[], e: unknown, backoff: Backoff): Promise<number> {
  const transient = isTransient(e);
  if (transient && core.snapshots) {
    // the server is unreachable: subscriptions with nothing to start from read their snapshot, once
    for (const sub of asked) {
      const first = !sub.state.snapshotTried;
      sub.state.snapshotTried = true;
      if (first && sub.source === "default" && !core.stopped) await startFromSnapshot(core, sub);
    }
  }
  for (const sub of asked) sub.settle();
  let kind = "network";
  if (e instanceof ApiError) kind = e.status >= 500 ? "server" : "client";
  else if (e instanceof ProtocolError) kind = "server";
  core.metrics.count("imprint_client_poll_errors_total", { kind });
  const retryAfter = Math.min(e instanceof ApiError ? (e.retryAfterMs ?? 0) : 0, MAX_RETRY_AFTER_MS);
  if (transient) {
    core.http.failOver();
    const d = Math.max(backoff.next(), retryAfter);
    core.log.warn(`imprint: poll failed, retrying in ${(d / 1000).toFixed(1)} s: ${describe(e)}`);
    return d;
  }
  const d = Math.max(core.settings.clientErrorRetryMs, retryAfter);
  core.log.error(`imprint: poll refused, retrying in ${Math.round(d / 1000)} s: ${describe(e)}`);
  return d;
}

/** At close: the outcomes not reported yet, in one short poll, at most 5 s. */
export async function flushReports(core: Core, subs: Sub[]): Promise<void> {
  const pending = subs.filter((x) => x.state.report !== undefined);
  if (pending.length === 0) return;
  const body = requestBody(core, pending, 0);
  try {
    await sendPoll(core, body, AbortSignal.timeout(6000), Math.min(core.settings.requestTimeoutMs, 5000));
    forgetSent(pending, body);
  } catch (e) {
    core.log.debug(`imprint: could not send the last apply reports: ${describe(e)}`);
  }
}

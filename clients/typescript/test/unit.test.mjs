// The client against a scripted fake server: the one batched poll, verification, the old
// value on failure and its report, the re-check of a rejected version, the start-up order
// (cache, snapshot, default) and fallback, backoff, Retry-After, fallback URLs, shutdown.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterEach, beforeEach, describe, test } from "node:test";
import { Client, ClosedError, ConfigError, silentLogger } from "../dist/esm/index.js";
import { Backoff } from "../dist/esm/poller.js";
import { Fake, answer, deadUrl, eventually, removeDir, sha256, sleep, tempDir, update } from "./helpers.mjs";

const quiet = { logger: silentLogger };
let fake;
let dirs = [];
let clients = [];
/** A client closed after the test whatever happens. */
const mk = (options) => {
  const c = new Client(options);
  clients.push(c);
  return c;
};
const dir = () => {
  const d = tempDir();
  dirs.push(d);
  return d;
};

beforeEach(async () => {
  fake = await new Fake().start();
});
afterEach(async () => {
  await Promise.all(clients.map((c) => c.close()));
  clients = [];
  await fake.close();
  dirs.forEach(removeDir);
  dirs = [];
});

describe("backoff", () => {
  test("doubles to its cap, each delay in [d/2, d]", () => {
    const b = new Backoff(500, 30000);
    const first = b.next();
    assert.ok(first >= 250 && first <= 500, String(first));
    let last = 0;
    for (let i = 0; i < 30; i++) {
      last = b.next();
      assert.ok(last <= 30000);
    }
    assert.ok(last >= 15000, String(last));
    b.reset();
    assert.ok(b.next() <= 500);
    // the jitter is drawn, not fixed
    const lo = new Backoff(1000, 1000, () => 0).next();
    const hi = new Backoff(1000, 1000, () => 1).next();
    assert.deepEqual([lo, hi], [500, 1000]);
  });
});

describe("configuration", () => {
  test("bad settings are refused with a message naming them", () => {
    assert.throws(() => mk({ url: "ftp://x" }), (e) => e instanceof ConfigError && /http/.test(e.message));
    assert.throws(() => mk({ url: "not a url" }), ConfigError);
    assert.throws(() => mk({ url: "http://a", labels: { "bad key": "x" } }), /label key/);
    assert.throws(() => mk({ url: "http://a", labels: { region: "a,b" } }), /label value/);
    assert.throws(() => mk({ url: "http://a", longPollMs: 90000 }), /longPollMs/);
    assert.throws(() => mk({ url: "http://a", startupFallback: -1 }), /startupFallback/);
    assert.throws(() => mk({ url: "http://a", snapshotStore: "s3://bucket/x" }), /SnapshotStore|get\(key\)/);
    assert.throws(() => mk({ url: "http://a", lonPollMs: 1 }), /unknown option "lonPollMs"/);
    assert.throws(() => mk({ url: "http://a", instance: "" }), /instance/);
  });

  test("bad topic names are refused before anything is sent", async () => {
    const c = mk({ url: fake.url, ...quiet });
    await assert.rejects(c.subscribe("Caps"), /invalid topic name/);
    await assert.rejects(c.subscribe("a/b"), /invalid topic name/);
    await assert.rejects(c.subscribe("ok", { decodr: 1 }), /unknown subscribe option/);
    await c.close();
    assert.equal(fake.polls.length, 0);
  });
});

test("an unreachable server costs no wait and serves the default", async () => {
  const c = mk({ url: await deadUrl(), initialWaitMs: 5000, ...quiet });
  const start = Date.now();
  const sub = await c.subscribe("t.a", { default: { d: 1 } });
  const took = Date.now() - start;
  assert.deepEqual(sub.get(), { d: 1 });
  assert.equal(sub.source, "default");
  assert.equal(sub.version, null);
  await c.close();
  assert.ok(took < 4000, `a refused connection is an answer (${took} ms)`);
  assert.ok(c.metrics.get("imprint_client_poll_errors_total", { kind: "network" }) >= 1);
});

test("one poll for all topics, with held versions, labels and the token", async () => {
  const data = '{"a": 1}';
  fake.onPoll = (body) => answer(body.topics["t.a"] === null ? { "t.a": update(3, data) } : {});
  const c = mk({ url: fake.url, token: "tok", instance: "n1", labels: { region: "eu" }, longPollMs: 200, ...quiet });
  const a = await c.subscribe("t.a", { default: null });
  await c.subscribe("t.b", { default: "b-default" });
  assert.deepEqual(a.get(), { a: 1 });
  assert.equal(a.version, 3);
  assert.equal(a.source, "server");
  const batched = await eventually(() => fake.polls.filter((p) => Object.keys(p.topics).sort().join() === "t.a,t.b"), { what: "a batched poll" });
  await c.close();
  const last = batched.at(-1);
  assert.deepEqual(last.consumer, { instance: "n1", labels: { region: "eu" } });
  assert.equal(last.topics["t.a"], 3);
  assert.equal(last.topics["t.b"], null);
  assert.ok(fake.requests.every((r) => r.headers.authorization === "Bearer tok"));
  assert.deepEqual(fake.reportsFor("t.a")[0], { version: 3, ok: true });
  assert.ok(fake.polls.every((p) => p.wait_ms >= 0 && p.wait_ms <= 60000));
});

test("the token never goes to a data_url on another host", async () => {
  const other = await new Fake().start();
  try {
    const data = Buffer.from("elsewhere");
    const u = update(1, data, { inline: false });
    u.data_url = `${other.url}/presigned/x?sig=1`;
    other.files.set("/presigned/x", data);
    fake.onPoll = (body) => answer(body.topics["t.a"] === null ? { "t.a": u } : {});
    const c = mk({ url: fake.url, token: "secret", ...quiet });
    const sub = await c.subscribe("t.a", { decoder: (p) => p.data.toString() });
    await c.close();
    assert.equal(sub.get(), "elsewhere");
    assert.equal(other.requests.length, 1);
    assert.equal(other.requests[0].headers.authorization, undefined);
  } finally {
    await other.close();
  }
});

test("a bad payload keeps the old value, is reported failed and not retried until a fix", async () => {
  let offer = update(1, '{"v": 1}');
  fake.onPoll = (body) => answer(body.topics["t.a"] !== offer.version ? { "t.a": offer } : {});
  const c = mk({ url: fake.url, longPollMs: 100, recheckRejectedMs: 300, ...quiet });
  const sub = await c.subscribe("t.a", { default: null });
  const seen = [];
  const rejections = [];
  sub.on("change", (v) => seen.push(v));
  sub.on("rejected", (r) => rejections.push(r));
  assert.deepEqual(sub.get(), { v: 1 });
  offer = update(2, "not json");
  const failed = await eventually(() => fake.reportsFor("t.a").filter((r) => r.ok === false), { what: "a failure report" });
  assert.equal(failed[0].version, 2);
  assert.match(failed[0].error, /decode failed/);
  assert.deepEqual(sub.get(), { v: 1 });
  assert.equal(sub.version, 1);
  assert.equal(rejections[0].version, 2);
  const n = fake.polls.length;
  await sleep(600);
  // stuck on the rejected version: short polls every recheckRejectedMs, not a spin
  assert.ok(fake.polls.length - n <= 4, `${fake.polls.length - n} polls in 600 ms`);
  assert.ok(!fake.requests.some((r) => r.path.endsWith("/2/data")), "inline: nothing downloaded");
  offer = update(3, '{"v": 3}');
  await eventually(() => sub.version === 3, { what: "the fix picked up" });
  await c.close();
  assert.deepEqual(seen, [{ v: 3 }]);
  assert.equal(c.metrics.get("imprint_client_apply_failures_total", { topic: "t.a" }), 1);
});

test("a checksum mismatch is downloaded once more, then rejected", async () => {
  const data = Buffer.from("payload");
  const u = update(5, data, { inline: false, sha: "0".repeat(64) });
  fake.files.set(u.data_url, data);
  fake.onPoll = () => answer({ "t.a": u });
  const c = mk({ url: fake.url, longPollMs: 100, startupFallback: 0, ...quiet });
  const sub = await c.subscribe("t.a", { default: "default", decoder: (p) => p.data.toString() });
  await eventually(() => fake.reportsFor("t.a").some((r) => r.ok === false), { what: "the failure report" });
  assert.equal(sub.get(), "default");
  await c.close();
  assert.equal(fake.requests.filter((r) => r.path === u.data_url).length, 2);
  assert.match(fake.reportsFor("t.a").find((r) => !r.ok).error, /checksum mismatch/);
});

test("a download corrupted once verifies the second time", async () => {
  const data = Buffer.from("the real payload");
  const u = update(2, data, { inline: false });
  fake.files.set(u.data_url, data);
  let spoiled = 0;
  fake.onGet = (req, res) => {
    if (req.url === u.data_url && spoiled++ === 0) {
      const bad = Buffer.from(data.map((b) => b ^ 0xff));
      res.writeHead(200, { "content-length": bad.length });
      res.end(bad);
      return true;
    }
    return false;
  };
  fake.onPoll = (body) => answer(body.topics["t.a"] === null ? { "t.a": u } : {});
  const c = mk({ url: fake.url, ...quiet });
  const sub = await c.subscribe("t.a", { decoder: (p) => p.data.toString() });
  await c.close();
  assert.equal(sub.get(), "the real payload");
  assert.equal(sub.version, 2);
});

test("an interrupted download resumes with Range", async () => {
  const data = Buffer.alloc(300_000, 7);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
  const u = update(4, data, { inline: false });
  fake.files.set(u.data_url, data);
  let cut = false;
  fake.onGet = (req, res) => {
    if (req.url === u.data_url && !req.headers.range && !cut) {
      cut = true;
      res.writeHead(200, { "content-length": data.length });
      res.write(data.subarray(0, 100_000), () => setTimeout(() => res.destroy(), 50));
      return true;
    }
    return false;
  };
  fake.onPoll = (body) => answer(body.topics["t.a"] === null ? { "t.a": u } : {});
  const c = mk({ url: fake.url, ...quiet });
  const sub = await c.subscribe("t.a", { decoder: (p) => p.data });
  await c.close();
  assert.ok(sub.get()?.equals(data), "the whole payload");
  const gets = fake.requests.filter((r) => r.path === u.data_url);
  assert.equal(gets.length, 2);
  assert.match(gets[1].headers.range, /^bytes=\d+-$/);
  assert.ok(Number(/\d+/.exec(gets[1].headers.range)[0]) > 0);
});

test("downloads stream to a file and the cache serves the next start", async () => {
  const cache = dir();
  const data = Buffer.alloc(256_000);
  for (let i = 0; i < data.length; i++) data[i] = i & 0xff;
  const u = update(7, data, { inline: false, topic: "m.model" });
  fake.files.set(u.data_url, data);
  fake.onPoll = (body) => answer(body.topics["m.model"] === null ? { "m.model": u } : {});
  let c = mk({ url: fake.url, cacheDir: cache, longPollMs: 100, ...quiet });
  let sub = await c.subscribe("m.model", { file: true });
  const file = sub.get();
  await c.close();
  assert.equal(typeof file, "string");
  assert.ok(readFileSync(file).equals(data));
  assert.equal(join(cache, "m.model"), file.slice(0, file.lastIndexOf("/")));
  const meta = JSON.parse(readFileSync(join(cache, "m.model", "meta.json"), "utf8"));
  assert.equal(meta.version, 7);
  assert.equal(meta.file, `v7-${u.sha256.slice(0, 16)}.bin`);
  assert.equal(meta.sha256, u.sha256);
  assert.equal(meta.size, data.length);
  // the server is down now: the cache is used at once
  c = mk({ url: await deadUrl(), cacheDir: cache, ...quiet });
  sub = await c.subscribe("m.model", { file: true, decoder: (p) => readFileSync(p.path) });
  await c.close();
  assert.ok(sub.get().equals(data));
  assert.equal(sub.source, "cache");
  assert.equal(sub.version, 7);
});

test("a memory subscription's cache serves the next start, and the server confirms it", async () => {
  const cache = dir();
  fake.onPoll = (body) => answer(body.topics["t.a"] === null ? { "t.a": update(2, "[2]") } : {});
  let c = mk({ url: fake.url, cacheDir: cache, longPollMs: 100, ...quiet });
  await c.subscribe("t.a");
  await c.close();
  c = mk({ url: fake.url, cacheDir: cache, longPollMs: 100, ...quiet });
  const sub = await c.subscribe("t.a");
  await c.close();
  assert.deepEqual(sub.get(), [2]);
  assert.equal(sub.source, "server", "the poll holding v2 got no update: confirmed");
  assert.equal(fake.polls.at(-1).topics["t.a"], 2, "the cached version is what it holds");
});

test("a corrupt cache is not used", async () => {
  const cache = dir();
  fake.onPoll = (body) => answer(body.topics["t.a"] === null ? { "t.a": update(1, "[1]") } : {});
  let c = mk({ url: fake.url, cacheDir: cache, ...quiet });
  await c.subscribe("t.a");
  await c.close();
  const meta = JSON.parse(readFileSync(join(cache, "t.a", "meta.json"), "utf8"));
  writeFileSync(join(cache, "t.a", meta.file), "[9]");
  c = mk({ url: await deadUrl(), cacheDir: cache, ...quiet });
  const sub = await c.subscribe("t.a", { default: "d" });
  await c.close();
  assert.equal(sub.get(), "d");
  assert.equal(sub.source, "default");
});

test("the snapshot when the server is unreachable and nothing is cached", async () => {
  const store = dir();
  const inline = Buffer.from('{"snap": true}');
  const big = Buffer.from('{"object": true}');
  mkdirSync(join(store, "snapshots"));
  mkdirSync(join(store, "topics", "t.b", "9"), { recursive: true });
  const manifest = (topic, version, data, extra) => ({
    format: 1, topic, version, sha256: sha256(data), size: data.length, content_type: "application/json",
    metadata: {}, published_at: "2026-01-01T00:00:00Z", written_at: "2026-01-01T00:00:00Z", ...extra,
  });
  writeFileSync(join(store, "snapshots", "t.a.json"), JSON.stringify(manifest("t.a", 4, inline, { data_base64: inline.toString("base64") })));
  writeFileSync(join(store, "topics", "t.b", "9", sha256(big)), big);
  writeFileSync(join(store, "snapshots", "t.b.json"), JSON.stringify(manifest("t.b", 9, big, { object: `topics/t.b/9/${sha256(big)}` })));
  writeFileSync(join(store, "snapshots", "t.c.json"), JSON.stringify(manifest("t.c", 2, inline, { data_base64: Buffer.from("tampered").toString("base64") })));
  const c = mk({ url: await deadUrl(), snapshotStore: pathToFileURL(store).href, ...quiet });
  const a = await c.subscribe("t.a");
  const b = await c.subscribe("t.b");
  const none = await c.subscribe("t.none", { default: "d" });
  const bad = await c.subscribe("t.c", { default: "d" });
  await c.close();
  assert.deepEqual([a.get(), a.source, a.version], [{ snap: true }, "snapshot", 4]);
  assert.deepEqual([b.get(), b.source, b.version], [{ object: true }, "snapshot", 9]);
  assert.deepEqual([none.get(), none.source], ["d", "default"]);
  assert.deepEqual([bad.get(), bad.source], ["d", "default"], "a snapshot that does not verify is not used");
});

test("5xx backs off and Retry-After is honoured", async () => {
  fake.onPoll = () => ({ status: 503, body: { error: { code: "busy", message: "busy" } }, headers: { "retry-after": "1" } });
  const c = mk({ url: fake.url, backoffMinMs: 10, backoffMaxMs: 50, ...quiet });
  await c.subscribe("t.a");
  await sleep(1500);
  await c.close();
  assert.ok(fake.polls.length >= 1 && fake.polls.length <= 3, `${fake.polls.length} polls: waits at least Retry-After`);
  assert.ok(c.metrics.get("imprint_client_poll_errors_total", { kind: "server" }) >= 1);
});

test("5xx without Retry-After retries after the (short) backoff", async () => {
  fake.onPoll = () => ({ status: 502, body: "<html>bad gateway</html>" });
  const c = mk({ url: fake.url, backoffMinMs: 10, backoffMaxMs: 50, ...quiet });
  await c.subscribe("t.a");
  await sleep(500);
  await c.close();
  assert.ok(fake.polls.length >= 5, `${fake.polls.length} polls in 500 ms`);
});

test("4xx retries slowly", async () => {
  fake.onPoll = () => ({ status: 401, body: { error: { code: "unauthorized", message: "bad token" } } });
  const c = mk({ url: fake.url, backoffMinMs: 10, backoffMaxMs: 1000, ...quiet }); // 4xx: every 2 × max
  await c.subscribe("t.a");
  await sleep(600);
  assert.equal(c.metrics.get("imprint_client_poll_errors_total", { kind: "client" }), 1);
  await c.close();
  assert.equal(fake.polls.length, 1);
});

test("poll_after_ms is honoured after a long poll", async () => {
  fake.onPoll = () => answer({}, {}, 400);
  const c = mk({ url: fake.url, longPollMs: 50, ...quiet });
  await c.subscribe("t.a");
  await sleep(1000);
  await c.close();
  // the first (short) poll is followed by a long one at once, then one every 400 ms
  assert.ok(fake.polls.length >= 2 && fake.polls.length <= 5, `${fake.polls.length} polls`);
});

test("a new subscription abandons the open long poll", async () => {
  let release;
  const released = new Promise((r) => (release = r));
  fake.onPoll = async (body) => {
    if (body.wait_ms > 0) await Promise.race([released, new Promise((r) => setTimeout(r, 10000).unref())]);
    return answer();
  };
  const c = mk({ url: fake.url, longPollMs: 30000, ...quiet });
  await c.subscribe("t.a");
  await eventually(() => fake.polls.some((p) => p.wait_ms > 0), { what: "a long poll" });
  const start = Date.now();
  await c.subscribe("t.b");
  const took = Date.now() - start;
  release();
  await c.close();
  assert.ok(took < 3000, `${took} ms`);
  assert.ok(fake.polls.some((p) => Object.keys(p.topics).length === 2));
});

test("the next server is tried when one is unreachable, and kept", async () => {
  fake.onPoll = (body) => answer(body.topics["t.a"] === null ? { "t.a": update(1, '"second"') } : {});
  const c = mk({ url: await deadUrl(), fallbackUrls: [fake.url], backoffMinMs: 10, backoffMaxMs: 20, longPollMs: 100, ...quiet });
  const sub = await c.subscribe("t.a");
  await eventually(() => sub.get() === "second", { what: "the value from the second server" });
  assert.equal(c.currentUrl, fake.url);
  await c.close();
});

test("start-up falls back to an older version released to these labels", async () => {
  const v1 = Buffer.from('{"good": 1}');
  const v2 = Buffer.from('{"eu": 2}');
  const versions = {
    versions: [
      { version: 4, size: 6, sha256: sha256("broken"), scopes: [{ selector: {} }] },
      { version: 3, size: 2, sha256: sha256("{}"), scopes: [{ selector: { region: "us" } }] },
      { version: 2, size: v2.length, sha256: sha256(v2), scopes: [{ selector: { region: "eu" } }], purged: true },
      { version: 1, size: v1.length, sha256: sha256(v1), scopes: [{ selector: {} }] },
    ],
    next: null,
  };
  fake.files.set("/api/v1/topics/t.a/versions", Buffer.from(JSON.stringify(versions)));
  fake.files.set("/api/v1/topics/t.a/versions/1/data", v1);
  fake.onPoll = () => answer({ "t.a": update(4, "broken") });
  const c = mk({ url: fake.url, labels: { region: "eu" }, longPollMs: 100, recheckRejectedMs: 200, ...quiet });
  const sub = await c.subscribe("t.a");
  assert.deepEqual(sub.get(), { good: 1 });
  assert.equal(sub.version, 1);
  assert.equal(sub.source, "server");
  await eventually(() => fake.polls.some((p) => p.topics["t.a"] === 1 && p.applied?.["t.a"]?.ok === false), { what: "the report" });
  await c.close();
  assert.ok(!fake.requests.some((r) => /versions\/[23]\/data/.test(r.path)), "neither the purged nor the other region's");
  assert.match(fake.requests.find((r) => r.path.startsWith("/api/v1/topics/t.a/versions?")).path, /limit=\d+/);
});

test("async iteration, nextChange and a listener that throws", async () => {
  let offer = 1;
  fake.onPoll = (body) => answer(body.topics["t.a"] !== offer ? { "t.a": update(offer, JSON.stringify({ v: offer })) } : {});
  const c = mk({ url: fake.url, longPollMs: 50, ...quiet });
  const sub = await c.subscribe("t.a", { decoder: async (p) => JSON.parse(p.data.toString()).v });
  assert.equal(sub.get(), 1);
  sub.on("change", () => {
    throw new Error("a buggy listener");
  });
  const it = sub.changes();
  const next = sub.nextChange(10000);
  offer = 2;
  assert.equal(await next, 2);
  assert.deepEqual(await it.next(), { value: 2, done: false });
  offer = 3;
  assert.deepEqual(await it.next(), { value: 3, done: false });
  const rest = (async () => {
    const got = [];
    for await (const v of sub) got.push(v);
    return got;
  })();
  await sleep(50);
  await c.close();
  assert.deepEqual(await rest, [], "iterators end when the client closes");
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  await assert.rejects(sub.nextChange(), /closed/);
});

test("close sends the pending reports; get() keeps working; subscribe afterwards fails", async () => {
  fake.onPoll = (body) => answer(body.topics["t.a"] === null ? { "t.a": update(1, "[1]") } : {}, {}, 60000);
  const c = mk({ url: fake.url, longPollMs: 0, ...quiet });
  const sub = await c.subscribe("t.a");
  await c.close();
  assert.deepEqual(sub.get(), [1]);
  assert.ok(fake.polls.some((p) => p.applied?.["t.a"]?.ok === true && p.applied["t.a"].version === 1));
  await assert.rejects(c.subscribe("t.b"), ClosedError);
  await c.close(); // twice is fine
});

test("close aborts a download in flight and leaves no partial file", async () => {
  const cache = dir();
  const u = update(1, Buffer.alloc(100_000, 1), { inline: false });
  fake.onGet = (req, res) => {
    res.writeHead(200, { "content-length": 100_000 });
    res.write(Buffer.alloc(1000, 1)); // then nothing
    return true;
  };
  fake.onPoll = () => answer({ "t.a": u });
  const c = mk({ url: fake.url, cacheDir: cache, initialWaitMs: 300, ...quiet });
  const sub = await c.subscribe("t.a", { file: true, default: "none" });
  const start = Date.now();
  await c.close();
  assert.ok(Date.now() - start < 3000);
  assert.equal(sub.get(), "none");
  const left = (await import("node:fs")).readdirSync(join(cache, "t.a"));
  assert.deepEqual(left, [], `left: ${left}`);
});

test("a stalled download is bounded by the request timeout", async () => {
  const u = update(1, Buffer.alloc(10_000, 1), { inline: false });
  fake.onGet = (req, res) => {
    res.writeHead(200, { "content-length": 10_000 });
    res.write(Buffer.alloc(10, 1)); // then silence
    return true;
  };
  fake.onPoll = () => answer({ "t.a": u });
  const c = mk({ url: fake.url, requestTimeoutMs: 200, backoffMinMs: 10, backoffMaxMs: 20, initialWaitMs: 100, ...quiet });
  await c.subscribe("t.a");
  await eventually(() => c.metrics.get("imprint_client_poll_errors_total", { kind: "download" }) >= 1, { timeout: 5000, what: "a download error" });
  await c.close();
});

test("metrics reach the hook", async () => {
  const seen = [];
  fake.onPoll = (body) => answer(body.topics["t.a"] === null ? { "t.a": update(5, "5") } : {});
  const c = mk({ url: fake.url, metrics: (name, value, labels) => seen.push([name, value, labels]), ...quiet });
  await c.subscribe("t.a");
  await c.close();
  assert.deepEqual(seen.find((s) => s[0] === "imprint_client_version"), ["imprint_client_version", 5, { topic: "t.a" }]);
  assert.ok(seen.some((s) => s[0] === "imprint_client_updates_applied_total" && s[1] === 1));
  assert.ok(seen.some((s) => s[0] === "imprint_client_last_poll_success_seconds" && s[1] > 1.7e9));
});

test("missing topics keep the default and go on polling", async () => {
  let published = false;
  fake.onPoll = (body) =>
    published && body.topics["t.a"] === null ? answer({ "t.a": update(1, '"now"') }) : answer({}, { "t.a": "topic_not_found" });
  const c = mk({ url: fake.url, longPollMs: 50, ...quiet });
  const sub = await c.subscribe("t.a", { default: "d" });
  assert.equal(sub.get(), "d");
  published = true;
  await eventually(() => sub.get() === "now", { what: "the first version" });
  await c.close();
});

test("a malformed poll answer is an error, not a crash", async () => {
  fake.onPoll = () => ({ status: 200, body: { updates: { "t.a": { version: "x" } } } });
  const c = mk({ url: fake.url, backoffMaxMs: 100, ...quiet });
  const sub = await c.subscribe("t.a", { default: 0 });
  await c.close();
  assert.equal(sub.get(), 0);
  assert.equal(c.metrics.get("imprint_client_poll_errors_total", { kind: "server" }), 1);
});

test("a SnapshotStore object is read like a file store, and one that hangs is bounded", async () => {
  const data = Buffer.from('"from my store"');
  const keys = [];
  const store = {
    description: "memory",
    async get(key) {
      keys.push(key);
      if (key === "snapshots/t.a.json") {
        return Buffer.from(JSON.stringify({ format: 1, topic: "t.a", version: 3, sha256: sha256(data), size: data.length, object: "topics/t.a/3/x" }));
      }
      if (key === "topics/t.a/3/x") return (async function* () { yield data.subarray(0, 4); yield data.subarray(4); })();
      if (key === "snapshots/t.hang.json") return new Promise(() => {});
      return null;
    },
  };
  const c = mk({ url: await deadUrl(), snapshotStore: store, requestTimeoutMs: 300, ...quiet });
  const a = await c.subscribe("t.a");
  const start = Date.now();
  const hang = await c.subscribe("t.hang", { default: "d" });
  await c.close();
  assert.deepEqual([a.get(), a.source, a.version], ["from my store", "snapshot", 3]);
  assert.deepEqual(keys.slice(0, 2), ["snapshots/t.a.json", "topics/t.a/3/x"]);
  assert.deepEqual([hang.get(), hang.source], ["d", "default"]);
  assert.ok(Date.now() - start < 4000);
});

test("a failure report is at most 1 KiB", async () => {
  fake.onPoll = () => answer({ "t.a": update(1, "x") });
  const c = mk({ url: fake.url, startupFallback: 0, ...quiet });
  await c.subscribe("t.a", { decoder: () => { throw new Error("é".repeat(5000)); } });
  const r = await eventually(() => fake.reportsFor("t.a").find((x) => x.ok === false), { what: "the report" });
  await c.close();
  assert.ok(Buffer.byteLength(r.error) <= 1024, String(Buffer.byteLength(r.error)));
  assert.match(r.error, /^decode failed: Error: é+…$/);
});

test("a pinned older version is applied: the server decides, the client never refuses to go back", async () => {
  let offer = update(5, '"v5"');
  fake.onPoll = (body) => answer(body.topics["t.a"] !== offer.version ? { "t.a": offer } : {});
  const c = mk({ url: fake.url, longPollMs: 50, ...quiet });
  const sub = await c.subscribe("t.a");
  assert.equal(sub.get(), "v5");
  offer = update(2, '"v2"', { pinned: true });
  await eventually(() => sub.version === 2, { what: "the pin back" });
  assert.deepEqual([sub.get(), sub.pinned, sub.current().pinned], ["v2", true, true]);
  const listeners = [];
  for (let i = 0; i < 20; i++) listeners.push(sub.changes());
  await c.close();
  for (const it of listeners) assert.equal((await it.next()).done, true);
});

/** `u` with `data_urls` for several regions: [region, url] pairs in order. */
const regions = (u, ...urls) => {
  u.data_urls = urls.map(([region, url]) => ({ region, url }));
  u.data_url = u.data_urls[0].url;
  return u;
};

test("failover past a refused connection, a 5xx and a corrupt copy; the served region is reported", async () => {
  const data = Buffer.from("the payload of several regions");
  const base = "/api/v1/topics/t.a/versions/4/data?region=";
  const u = regions(update(4, data, { inline: false }), ["eu", (await deadUrl()) + base + "eu"], ["ap", base + "ap"], ["sa", base + "sa"], ["us", base + "us"]);
  fake.files.set(base + "sa", Buffer.from("the payload of several regionZ")); // same size, another hash
  fake.files.set(base + "us", data);
  fake.onGet = (req, res) => {
    if (req.url !== base + "ap") return false;
    res.writeHead(503, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: { code: "object_store_unavailable", message: "down" } }));
    return true;
  };
  fake.onPoll = (body) => answer(body.topics["t.a"] === null ? { "t.a": u } : {});
  const seen = [];
  const c = mk({ url: fake.url, longPollMs: 100, metrics: (name, value, labels) => seen.push([name, value, labels]), ...quiet });
  const payloads = [];
  const sub = await c.subscribe("t.a", { default: "", decoder: (p) => (payloads.push(p), p.data.toString()) });
  assert.equal(sub.get(), data.toString());
  assert.equal(sub.servedRegion, "us");
  assert.equal(sub.current().region, "us");
  assert.equal(payloads[0].region, "us");
  const reports = await eventually(() => fake.reportsFor("t.a"), { what: "the applied report" });
  assert.deepEqual(reports[0], { version: 4, ok: true, region: "us" });
  assert.deepEqual(fake.requests.filter((r) => r.method === "GET").map((r) => r.path), [base + "ap", base + "sa", base + "us"]);
  assert.ok(seen.some((s) => s[0] === "imprint_client_region_downloads_total" && s[2].region === "us"));
  for (const r of ["eu", "ap", "sa"]) {
    assert.ok(seen.some((s) => s[0] === "imprint_client_region_failovers_total" && s[2].region === r), r);
  }
});

test("the first region serves when it works; a single data_url has no region", async () => {
  const base = "/api/v1/topics/t.a/versions/1/data?region=";
  const u = regions(update(1, "eu first", { inline: false }), ["eu", base + "eu"], ["us", base + "us"]);
  fake.files.set(base + "eu", Buffer.from("eu first"));
  const v = update(1, "one region", { inline: false, topic: "t.b" });
  fake.files.set(v.data_url, Buffer.from("one region"));
  fake.onPoll = (body) => answer(Object.fromEntries([["t.a", u], ["t.b", v]].filter(([t]) => body.topics[t] === null)));
  const c = mk({ url: fake.url, longPollMs: 100, ...quiet });
  const a = await c.subscribe("t.a", { default: "", decoder: (p) => p.data.toString() });
  const b = await c.subscribe("t.b", { default: "", decoder: (p) => p.data.toString() });
  assert.equal(a.get(), "eu first");
  assert.equal(a.servedRegion, "eu");
  assert.equal(b.get(), "one region");
  assert.equal(b.servedRegion, null);
  assert.ok(!fake.requests.some((r) => r.path === base + "us"));
});

test("every region corrupt rejects the version; an unreachable region makes it transient", async () => {
  const base = "/api/v1/topics/t.a/versions/2/data?region=";
  const bad = regions(update(2, "payload", { inline: false, sha: "0".repeat(64) }), ["eu", base + "eu"], ["us", base + "us"]);
  fake.files.set(base + "eu", Buffer.from("payload"));
  fake.files.set(base + "us", Buffer.from("payload"));
  fake.onPoll = () => answer({ "t.a": bad });
  const c = mk({ url: fake.url, longPollMs: 100, startupFallback: 0, ...quiet });
  const sub = await c.subscribe("t.a", { default: "default", decoder: (p) => p.data.toString() });
  await eventually(() => fake.reportsFor("t.a").some((r) => r.ok === false), { what: "the failure report" });
  assert.match(fake.reportsFor("t.a").find((r) => !r.ok).error, /checksum mismatch/);
  assert.equal(sub.get(), "default");
  await c.close();
  // eu down, us corrupt: not the version's fault, so retried and never reported failed
  fake.polls.length = 0;
  const down = regions(update(3, "payload", { inline: false, sha: "0".repeat(64) }), ["eu", (await deadUrl()) + base + "eu"], ["us", base + "us"]);
  fake.onPoll = () => answer({ "t.a": down });
  const d = mk({ url: fake.url, longPollMs: 100, startupFallback: 0, backoffMinMs: 50, backoffMaxMs: 100, ...quiet });
  const sub2 = await d.subscribe("t.a", { default: "default", decoder: (p) => p.data.toString() });
  await eventually(() => fake.requests.filter((r) => r.path === base + "us").length >= 6, { what: "retries" });
  assert.equal(sub2.get(), "default");
  await d.close();
  assert.ok(!fake.polls.some((p) => p.applied && "t.a" in p.applied));
});

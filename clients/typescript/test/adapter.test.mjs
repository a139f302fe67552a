// The conformance adapter itself, against the fake server: the start-up line, the
// capabilities, a client built and observed, the listener's counts, cache corruption,
// shutdown and delete, refused unknown fields — and that it exits when its stdin ends.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import { after, before, test } from "node:test";
import { Fake, answer, deadUrl, eventually, removeDir, tempDir, update } from "./helpers.mjs";

const ADAPTER = new URL("../conformance-adapter.mjs", import.meta.url).pathname;
let proc;
let base;
let fake;

async function call(method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(20000),
  });
  const text = await res.text();
  return [res.status, text ? JSON.parse(text) : null];
}

before(async () => {
  fake = await new Fake().start();
  proc = spawn(process.execPath, [ADAPTER], { stdio: ["pipe", "pipe", "inherit"], env: { ...process.env, IMPRINT_LOG: "error" } });
  const first = await new Promise((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout });
    rl.once("line", resolve);
    proc.once("exit", (code) => reject(new Error(`the adapter exited (${code})`)));
  });
  assert.match(first, /^listening on http:\/\/127\.0\.0\.1:\d+$/);
  base = first.slice("listening on ".length);
});

after(async () => {
  proc?.kill();
  await fake?.close();
});

test("capabilities", async () => {
  const [status, caps] = await call("GET", "/");
  assert.equal(status, 200);
  assert.equal(caps.name, "node");
  for (const c of ["json", "bytes", "file", "cache", "corrupt_cache", "snapshot", "startup_fallback", "token", "shutdown", "listener", "subscribe", "regions", "sealed_snapshots"]) {
    assert.ok(caps.capabilities.includes(c), c);
  }
});

test("a client is built, observed, corrupted, shut down and forgotten", async () => {
  const cache = tempDir();
  try {
    let v = 1;
    const blob = Buffer.from("x".repeat(1000));
    const file = update(1, blob, { inline: false, topic: "t.file" });
    fake.files.set(file.data_url, blob);
    fake.onPoll = (body) => {
      const u = {};
      if (body.topics["t.json"] !== v) u["t.json"] = update(v, JSON.stringify({ v }), { topic: "t.json" });
      if (body.topics["t.bytes"] === null) u["t.bytes"] = update(1, Buffer.from([0x68, 0x69, 0xff]), { topic: "t.bytes" });
      if (body.topics["t.file"] === null) u["t.file"] = file;
      return answer(u);
    };
    const [status, made] = await call("POST", "/clients", {
      url: fake.url, instance: "i-1", labels: { region: "eu" }, cache_dir: cache, token: "tok",
      topics: [{ name: "t.json", decoder: "json", default: { v: 0 } }, { name: "t.bytes", decoder: "bytes" }, { name: "t.file", decoder: "file" }],
      settings: { long_poll_ms: 100, initial_wait_ms: 5000, request_timeout_ms: 5000, backoff_min_ms: 50, backoff_max_ms: 500, startup_fallback: null, recheck_rejected_ms: 500 },
    });
    assert.equal(status, 200, JSON.stringify(made));
    const id = made.id;
    let [, seen] = await call("GET", `/clients/${id}/topics/t.json`);
    assert.deepEqual(seen, { value: { v: 1 }, version: 1, source: "server", pinned: false, changes: 0, last_change: null, served_region: null });
    [, seen] = await call("GET", `/clients/${id}/topics/t.bytes`);
    assert.equal(seen.value, "hi\uFFFD");
    [, seen] = await call("GET", `/clients/${id}/topics/t.file`);
    assert.deepEqual(seen.value, { size: 1000, sha256: file.sha256 });
    v = 2;
    await eventually(async () => (await call("GET", `/clients/${id}/topics/t.json`))[1].changes === 1, { what: "the listener" });
    [, seen] = await call("GET", `/clients/${id}/topics/t.json`);
    assert.deepEqual([seen.value, seen.last_change], [{ v: 2 }, { v: 2 }]);
    assert.ok(fake.requests.every((r) => r.headers.authorization === "Bearer tok"));
    // one more subscription on the running client joins its poll
    assert.equal((await call("POST", `/clients/${id}/topics`, { name: "t.later", decoder: "json", default: 7 }))[0], 204);
    [, seen] = await call("GET", `/clients/${id}/topics/t.later`);
    assert.deepEqual([seen.value, seen.source], [7, "default"]);
    assert.ok(fake.polls.at(-1).topics["t.later"] === null && "t.json" in fake.polls.at(-1).topics);
    assert.equal((await call("POST", `/clients/${id}/topics`, { name: "t.later", decoder: "json" }))[0], 400);
    assert.equal((await call("POST", `/clients/${id}/shutdown`))[0], 204);
    assert.deepEqual((await call("GET", `/clients/${id}/topics/t.json`))[1].value, { v: 2 }, "readable after shutdown");
    const meta = JSON.parse(readFileSync(join(cache, "t.json", "meta.json"), "utf8"));
    const before = readFileSync(join(cache, "t.json", meta.file));
    assert.equal((await call("POST", "/cache/corrupt", { cache_dir: cache, topic: "t.json" }))[0], 204);
    const afterBytes = readFileSync(join(cache, "t.json", meta.file));
    assert.equal(afterBytes.length, before.length);
    assert.notDeepEqual(afterBytes, before);
    assert.equal((await call("POST", "/cache/corrupt", { cache_dir: cache, topic: "t.none" }))[0], 404);
    assert.equal((await call("DELETE", `/clients/${id}`))[0], 204);
    assert.equal((await call("GET", `/clients/${id}/topics/t.json`))[0], 404);
    assert.ok(readdirSync(cache).includes("t.file"));
  } finally {
    removeDir(cache);
  }
});

test("unknown fields and bad settings are refused with 400", async () => {
  const ok = { url: fake.url, instance: "i-2", topics: [{ name: "t.json", decoder: "json" }] };
  let [status, body] = await call("POST", "/clients", { ...ok, colour: "red" });
  assert.equal(status, 400);
  assert.match(body.error, /colour/);
  [status, body] = await call("POST", "/clients", { ...ok, settings: { long_poll: 5 } });
  assert.equal(status, 400);
  [status, body] = await call("POST", "/clients", { ...ok, labels: { "bad key": "x" } });
  assert.equal(status, 400);
  assert.match(body.error, /label key/);
  [status] = await call("POST", "/clients", { ...ok, topics: [{ name: "Bad/Name", decoder: "json" }] });
  assert.equal(status, 400);
  [status] = await call("GET", "/clients/nope/topics/x");
  assert.equal(status, 404);
});

test("snapshot_keyring opens a sealed snapshot; a keyring that does not parse is refused", async () => {
  const sealed = new URL("../../testdata/sealed/", import.meta.url).pathname;
  const store = tempDir();
  try {
    mkdirSync(join(store, "snapshots"));
    copyFileSync(join(sealed, "inline.json"), join(store, "snapshots", "orders.inline.json"));
    const spec = {
      url: await deadUrl(), instance: "i-3", snapshot_store: pathToFileURL(store).href, snapshot_keyring: join(sealed, "keyring.json"),
      topics: [{ name: "orders.inline", decoder: "json", default: "d" }], settings: { initial_wait_ms: 2000 },
    };
    let [status, made] = await call("POST", "/clients", spec);
    assert.equal(status, 200, JSON.stringify(made));
    const [, seen] = await call("GET", `/clients/${made.id}/topics/orders.inline`);
    assert.deepEqual([seen.value, seen.version, seen.source], [{ password: "hunter2", rates: [1, 2, 3] }, 3, "snapshot"]);
    assert.equal((await call("DELETE", `/clients/${made.id}`))[0], 204);
    writeFileSync(join(store, "bad.json"), "{");
    [status, made] = await call("POST", "/clients", { ...spec, snapshot_keyring: join(store, "bad.json") });
    assert.equal(status, 400);
    assert.match(made.error, /bad\.json/);
  } finally {
    removeDir(store);
  }
});

test("the adapter exits when its stdin ends", async () => {
  const p = spawn(process.execPath, [ADAPTER], { stdio: ["pipe", "pipe", "inherit"] });
  await new Promise((resolve) => createInterface({ input: p.stdout }).once("line", resolve));
  const exited = new Promise((resolve) => p.once("exit", resolve));
  p.stdin.end();
  const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r("still running"), 5000))]);
  if (code === "still running") p.kill();
  assert.equal(code, 0);
});

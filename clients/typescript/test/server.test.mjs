// The client against a real Imprint server (the binary, a fresh database): values, updates
// reaching the change event and the async iterator, pins and unpins, scoped releases, a
// failed version in the consumer audit and its fix, the start-up fallback to an older
// version, large payloads streamed to a file and the cache outliving the server, and the
// server's own object-store snapshot. Skipped (with the reason) when the server or Postgres
// is not there — a failure under CI=true.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { after, before, describe, test } from "node:test";
import { Client, silentLogger } from "../dist/esm/index.js";
import { deadUrl, eventually, removeDir, sha256, tempDir } from "./helpers.mjs";
import { Server, unavailable } from "./server.mjs";

const why = unavailable();
if (why && process.env.CI === "true") {
  test("the real server is available under CI", () => assert.fail(`CI=true but ${why}`));
}
const instance = () => "ts-" + randomBytes(4).toString("hex");
const quiet = { logger: silentLogger };

describe("against the real server", { skip: why ? `skipped: ${why}` : false }, () => {
  let server;
  const clients = [];
  const mk = (o) => {
    const c = new Client({ ...quiet, ...o });
    clients.push(c);
    return c;
  };

  before(async () => {
    server = await Server.start();
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await server?.stop();
  });

  test("the first value, then updates reach the change event and the async iterator", async () => {
    const topic = await server.topic();
    await server.publish(topic, { n: 1 });
    const c = mk({ url: server.url, instance: instance() });
    const sub = await c.subscribe(topic, { default: null });
    assert.deepEqual([sub.get(), sub.version, sub.source], [{ n: 1 }, 1, "server"]);
    const seen = [];
    sub.on("change", (v) => seen.push(v));
    const it = sub.changes();
    await server.publish(topic, { n: 2 });
    assert.deepEqual((await it.next()).value, { n: 2 });
    assert.deepEqual(sub.get(), { n: 2 });
    assert.deepEqual(seen, [{ n: 2 }]);
    await c.close();
    assert.equal((await it.next()).done, true);
  });

  test("the default while the topic is missing, then its first version", async () => {
    const c = mk({ url: server.url, instance: instance(), longPollMs: 1000 });
    const missing = await c.subscribe("t.not-yet-" + randomBytes(3).toString("hex"), { default: "default" });
    assert.deepEqual([missing.get(), missing.source], ["default", "default"]);
    const topic = await server.topic();
    const later = await c.subscribe(topic, { default: "d" });
    assert.equal(later.get(), "d");
    await server.publish(topic, [1]);
    await eventually(() => Array.isArray(later.get()), { what: "the first version" });
    assert.deepEqual(later.get(), [1]);
    await c.close();
  });

  test("a pin moves back and an unpin moves forward", async () => {
    const topic = await server.topic();
    await server.publish(topic, "v1");
    await server.publish(topic, "v2");
    const c = mk({ url: server.url, instance: instance() });
    const sub = await c.subscribe(topic, { default: "", decoder: (p) => p.data.toString() });
    assert.equal(sub.get(), "v2");
    await server.pin(topic, 1);
    await eventually(() => sub.version === 1, { what: "the pin" });
    assert.equal(sub.get(), "v1");
    assert.equal(sub.pinned, true);
    await server.unpin(topic);
    await eventually(() => sub.version === 2, { what: "the unpin" });
    assert.equal(sub.pinned, false);
    await c.close();
  });

  test("a scoped release reaches only matching labels", async () => {
    const topic = await server.topic();
    await server.publish(topic, "all");
    await server.publish(topic, "eu only", [{ region: "eu" }]);
    const text = { decoder: (p) => p.data.toString() };
    const eu = mk({ url: server.url, instance: instance(), labels: { region: "eu" } });
    const us = mk({ url: server.url, instance: instance(), labels: { region: "us" } });
    assert.equal((await eu.subscribe(topic, text)).get(), "eu only");
    assert.equal((await us.subscribe(topic, text)).get(), "all");
    await Promise.all([eu.close(), us.close()]);
  });

  test("a bad version keeps the old value, is reported failed in the audit, and a fix is picked up", async () => {
    const topic = await server.topic();
    await server.publish(topic, { ok: 1 });
    const name = instance();
    const c = mk({ url: server.url, instance: name, recheckRejectedMs: 500 });
    const sub = await c.subscribe(topic, { default: null });
    await server.publish(topic, "{not json");
    const row = await eventually(async () => {
      const r = await server.consumer(topic, name);
      return r && r.last_applied_ok === false && r;
    }, { what: "the failure in the consumer audit" });
    assert.equal(row.last_applied_version, 2);
    assert.match(row.last_error, /decode failed/);
    assert.equal(row.version, 1, "what the node serves, not what it failed");
    assert.deepEqual(sub.get(), { ok: 1 });
    await server.publish(topic, { ok: 3 });
    await eventually(() => sub.version === 3, { what: "the fix" });
    await eventually(async () => {
      const r = await server.consumer(topic, name);
      return r && r.last_applied_ok === true && r.version === 3;
    }, { what: "the success in the audit" });
    await c.close();
  });

  test("start-up falls back to an older version", async () => {
    const topic = await server.topic();
    await server.publish(topic, { good: 1 });
    await server.publish(topic, "broken");
    const c = mk({ url: server.url, instance: instance() });
    const sub = await c.subscribe(topic, { default: null });
    assert.deepEqual([sub.get(), sub.version, sub.source], [{ good: 1 }, 1, "server"]);
    await c.close();
  });

  test("large payloads stream to a file, and the cache outlives the server", async () => {
    const cache = tempDir();
    try {
      const topic = await server.topic("m");
      const data = randomBytes(3 << 20); // beyond the inline limit: downloaded from data_url
      await server.publishRaw(topic, data);
      let c = mk({ url: server.url, instance: instance(), cacheDir: cache });
      const file = (await c.subscribe(topic, { file: true })).get();
      assert.ok(typeof file === "string" && file.startsWith(join(cache, topic)));
      assert.equal(sha256(readFileSync(file)), sha256(data));
      await c.close();
      c = mk({ url: await deadUrl(), cacheDir: cache });
      const sub = await c.subscribe(topic, { file: true, decoder: (p) => readFileSync(p.path) });
      assert.equal(sub.source, "cache");
      assert.ok(sub.get().equals(data));
      await c.close();
    } finally {
      removeDir(cache);
    }
  });

  test("the server's snapshot when it is unreachable", async () => {
    const topic = await server.topic();
    await server.publish(topic, { from: "snapshot" });
    const manifest = join(server.objects, "snapshots", `${topic}.json`);
    await eventually(() => existsSync(manifest) && JSON.parse(readFileSync(manifest, "utf8")).version === 1, {
      what: "the snapshot written by the server's worker",
    });
    const c = mk({ url: await deadUrl(), snapshotStore: pathToFileURL(server.objects).href });
    const sub = await c.subscribe(topic, { default: null });
    assert.deepEqual([sub.get(), sub.source, sub.version], [{ from: "snapshot" }, "snapshot", 1]);
    await c.close();
  });

  test("the applied report reaches the consumer audit with the labels", async () => {
    const topic = await server.topic();
    await server.publish(topic, 5);
    const name = instance();
    const c = mk({ url: server.url, instance: name, labels: { region: "eu", app: "ts" } });
    await c.subscribe(topic);
    const row = await eventually(async () => {
      const r = await server.consumer(topic, name);
      return r && r.last_applied_ok === true && r;
    }, { what: "the audit row" });
    assert.equal(row.version, 1);
    assert.deepEqual(row.labels, { region: "eu", app: "ts" });
    await c.close();
  });
});

#!/usr/bin/env node
// The conformance adapter of the TypeScript/Node client (@imprint/client): the tiny HTTP
// service the suite's harness drives (the adapter protocol in conformance/README.md).
// It serves 127.0.0.1 on a free port (or --port N), prints `listening on http://<addr>` as
// its first line on stdout, logs to stderr, and exits when its stdin (a pipe held by the
// harness) reaches its end. Needs the built package: `npm ci && npm run build` here first.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import { join } from "node:path";
import { Client, ConfigError, ImprintError, decoders } from "./dist/esm/index.js";

const CAPABILITIES = ["json", "bytes", "file", "cache", "corrupt_cache", "snapshot", "startup_fallback", "token", "shutdown", "listener", "subscribe", "regions", "sealed_snapshots"];
const CLIENT_FIELDS = new Set(["url", "token", "instance", "labels", "cache_dir", "snapshot_store", "snapshot_keyring", "topics", "settings"]);
const TOPIC_FIELDS = new Set(["name", "decoder", "default"]);
const SETTINGS = {
  long_poll_ms: "longPollMs",
  initial_wait_ms: "initialWaitMs",
  request_timeout_ms: "requestTimeoutMs",
  backoff_min_ms: "backoffMinMs",
  backoff_max_ms: "backoffMaxMs",
  startup_fallback: "startupFallback",
  recheck_rejected_ms: "recheckRejectedMs",
};
const BODY_LIMIT = 1 << 20;

class Refused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** @type {Map<string, {client: Client, subs: Map<string, any>, seen: Map<string, {changes: number, last: any}>}>} */
const clients = new Map();
let next = 0;

function onlyKnown(obj, known, what) {
  if (!obj || typeof obj !== "object" || Array.isArray(obj)) throw new Refused(400, `${what} must be an object`);
  for (const k of Object.keys(obj)) if (!known.has(k)) throw new Refused(400, `unknown field ${JSON.stringify(k)} in ${what}`);
}

/** The file decoder's value: what is on disk, read back (not what the update claimed). */
async function describeFile(p) {
  const h = createHash("sha256");
  let size = 0;
  for await (const c of createReadStream(p.path)) {
    h.update(c);
    size += c.length;
  }
  return { size, sha256: h.digest("hex") };
}

function subscribeOptions(t) {
  switch (t.decoder) {
    case "json":
      return { default: t.default ?? null, decoder: decoders.json };
    case "bytes":
      return { default: "", decoder: (p) => p.data.toString("utf8") }; // lossy, as the protocol says
    case "file":
      return { default: null, file: true, decoder: describeFile };
    default:
      throw new Refused(400, `unknown decoder ${JSON.stringify(t.decoder)} (json, bytes or file)`);
  }
}

/** Keeps the subscription and counts what its change listener (registered right after subscribe) hears. */
function watch(subs, seen, name, sub) {
  const counted = { changes: 0, last: null };
  seen.set(name, counted);
  sub.on("change", (value) => {
    counted.changes += 1;
    counted.last = value;
  });
  subs.set(name, sub);
}

/** `POST /clients/{id}/topics`: one more subscription on a running client. */
async function addTopic(id, t) {
  const e = entry(id);
  onlyKnown(t, TOPIC_FIELDS, "a topic");
  if (e.subs.has(t.name)) throw new Refused(400, `client ${id} has topic ${t.name} already`);
  let sub;
  try {
    sub = await e.client.subscribe(t.name, subscribeOptions(t));
  } catch (err) {
    throw new Refused(err instanceof ImprintError ? 400 : 500, err.message);
  }
  watch(e.subs, e.seen, t.name, sub);
}

async function create(spec) {
  onlyKnown(spec, CLIENT_FIELDS, "the client");
  if (!Array.isArray(spec.topics)) throw new Refused(400, "topics must be a list");
  const options = { url: spec.url, instance: spec.instance, labels: spec.labels ?? {} };
  if (spec.token !== undefined && spec.token !== null) options.token = spec.token;
  if (spec.cache_dir !== undefined && spec.cache_dir !== null) options.cacheDir = spec.cache_dir;
  if (spec.snapshot_store !== undefined && spec.snapshot_store !== null) options.snapshotStore = spec.snapshot_store;
  if (spec.snapshot_keyring !== undefined && spec.snapshot_keyring !== null) options.snapshotKeyring = spec.snapshot_keyring;
  if (spec.settings !== undefined && spec.settings !== null) {
    onlyKnown(spec.settings, new Set(Object.keys(SETTINGS)), "settings");
    for (const [k, v] of Object.entries(spec.settings)) if (v !== null && v !== undefined) options[SETTINGS[k]] = v;
  }
  const topics = spec.topics.map((t) => {
    onlyKnown(t, TOPIC_FIELDS, "a topic");
    return [t.name, subscribeOptions(t)];
  });
  let client;
  try {
    client = new Client(options);
  } catch (e) {
    throw new Refused(400, e.message);
  }
  const subs = new Map();
  const seen = new Map();
  try {
    // subscribed all at once, as an application starting several would; each waits at most
    // initial_wait_ms for the shared first poll
    const made = await Promise.all(topics.map(([name, o]) => client.subscribe(name, o)));
    made.forEach((sub, i) => watch(subs, seen, topics[i][0], sub));
  } catch (e) {
    await client.close();
    throw new Refused(e instanceof ConfigError || e instanceof ImprintError ? 400 : 500, e.message);
  }
  const id = `c${++next}`;
  clients.set(id, { client, subs, seen });
  return { id };
}

function entry(id) {
  const e = clients.get(id);
  if (!e) throw new Refused(404, `no client ${id}`);
  return e;
}

function observe(id, topic) {
  const e = entry(id);
  const sub = e.subs.get(topic);
  if (!sub) throw new Refused(404, `client ${id} has no topic ${topic}`);
  const h = sub.current();
  const s = e.seen.get(topic);
  return { value: h.value ?? null, version: h.version, source: h.source, pinned: h.pinned, changes: s.changes, last_change: s.last, served_region: h.region };
}

/** The Rust client's cache layout: every `<dir>/<topic>/*.bin` gets its bytes flipped (same length). */
async function corruptCache(req) {
  onlyKnown(req, new Set(["cache_dir", "topic"]), "the request");
  const dir = join(String(req.cache_dir), String(req.topic));
  let names;
  try {
    names = await readdir(dir);
  } catch {
    throw new Refused(404, `no cached payload in ${dir}`);
  }
  let spoiled = 0;
  for (const n of names.filter((n) => n.endsWith(".bin"))) {
    const bytes = await readFile(join(dir, n));
    await writeFile(join(dir, n), bytes.map((b) => b ^ 0xff));
    spoiled++;
  }
  if (spoiled === 0) throw new Refused(404, `no cached payload in ${dir}`);
}

async function readJson(req) {
  const parts = [];
  let n = 0;
  for await (const c of req) {
    n += c.length;
    if (n > BODY_LIMIT) throw new Refused(400, "request body too large");
    parts.push(c);
  }
  try {
    return JSON.parse(Buffer.concat(parts).toString("utf8") || "null");
  } catch (e) {
    throw new Refused(400, `the body is not JSON: ${e.message}`);
  }
}

async function route(req) {
  const url = new URL(req.url, "http://adapter");
  const parts = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  const m = req.method;
  if (m === "GET" && parts.length === 0) return [200, { name: "node", capabilities: CAPABILITIES }];
  if (m === "POST" && parts.length === 1 && parts[0] === "clients") return [200, await create(await readJson(req))];
  if (parts[0] === "clients" && parts.length === 4 && parts[2] === "topics" && m === "GET") return [200, observe(parts[1], parts[3])];
  if (parts[0] === "clients" && parts.length === 3 && parts[2] === "topics" && m === "POST") {
    await addTopic(parts[1], await readJson(req));
    return [204];
  }
  if (parts[0] === "clients" && parts.length === 3 && parts[2] === "shutdown" && m === "POST") {
    await entry(parts[1]).client.close();
    return [204];
  }
  if (parts[0] === "clients" && parts.length === 2 && m === "DELETE") {
    const e = entry(parts[1]);
    clients.delete(parts[1]);
    await e.client.close();
    return [204];
  }
  if (m === "POST" && parts.join("/") === "cache/corrupt") {
    await corruptCache(await readJson(req));
    return [204];
  }
  throw new Refused(404, `no route ${m} ${url.pathname}`);
}

const server = createServer(async (req, res) => {
  let status;
  let body;
  try {
    [status, body] = await route(req);
  } catch (e) {
    status = e instanceof Refused ? e.status : 500;
    body = { error: e instanceof Error ? e.message : String(e) };
    if (status === 500) process.stderr.write(`adapter: ${e?.stack ?? e}\n`);
  }
  if (body === undefined) {
    res.writeHead(status);
    res.end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
});

let port = 0;
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) if (args[i] === "--port") port = Number(args[++i] ?? 0);

server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`listening on http://127.0.0.1:${server.address().port}\n`);
});

async function exit() {
  await Promise.race([Promise.all([...clients.values()].map((e) => e.client.close())), new Promise((r) => setTimeout(r, 3000))]);
  process.exit(0);
}

// the harness holds our stdin open while it needs us: its end means the harness is gone
if (!process.stdin.isTTY) {
  process.stdin.on("end", exit);
  process.stdin.on("error", exit);
  process.stdin.resume();
}
process.on("SIGTERM", exit);
process.on("SIGINT", exit);

// Sealed snapshots of topics encrypted at rest, opened with `snapshotKeyring`, on the
// fixtures the Rust implementation made (clients/testdata/sealed, seal/examples/sealed_fixtures.rs):
// the right bytes and metadata, and every failure (no keyring, another keyring, an altered,
// truncated or re-versioned object, a KMS key) leaves the snapshot unused, never wrong bytes.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { afterEach, describe, test } from "node:test";
import { Client, ConfigError } from "../dist/esm/index.js";
import { parseHeader } from "../dist/esm/sealed.js";
import { deadUrl, removeDir, sha256, tempDir } from "./helpers.mjs";

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "testdata", "sealed");
const fixture = (name) => readFileSync(join(FIXTURES, name));
const KEYRING = join(FIXTURES, "keyring.json");
const PLAIN = fixture("object.plain");
const SEALED = fixture("object.sealed");
const CHUNK = 65536 + 16;

let dirs = [];
let clients = [];
const dir = () => {
  const d = tempDir();
  dirs.push(d);
  return d;
};
afterEach(async () => {
  await Promise.all(clients.map((c) => c.close()));
  clients = [];
  dirs.forEach(removeDir);
  dirs = [];
});

/** A logger keeping what it is told. */
function recorder() {
  const lines = [];
  const at = (level) => (m) => lines.push(`${level} ${m}`);
  return { lines, logger: { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") } };
}

/** A store holding the fixtures' manifests, with `object` as the bytes of `object.sealed`. */
function store(object = SEALED) {
  const d = dir();
  mkdirSync(join(d, "snapshots"));
  copyFileSync(join(FIXTURES, "inline.json"), join(d, "snapshots", "orders.inline.json"));
  copyFileSync(join(FIXTURES, "object.json"), join(d, "snapshots", "orders.object.json"));
  writeFileSync(join(d, "object.sealed"), object);
  return d;
}

/** A keyring of the same shape with other keys for `orders` v1 and v2. */
function otherKeyring() {
  const path = join(dir(), "other.json");
  const k = () => randomBytes(32).toString("base64");
  writeFileSync(path, JSON.stringify({ format: 1, keys: { orders: { primary: 2, versions: { 1: k(), 2: k() } } } }));
  return path;
}

const withMeta = (p) => ({ data: p.data, metadata: p.metadata, contentType: p.contentType });

/** Subscribes to both fixture topics of `storeDir` with the server down. */
async function start(storeDir, extra = {}) {
  const c = new Client({ url: await deadUrl(), snapshotStore: pathToFileURL(storeDir).href, initialWaitMs: 2000, ...extra });
  clients.push(c);
  const inline = await c.subscribe("orders.inline", { default: "d", decoder: withMeta });
  const object = await c.subscribe("orders.object", { default: "d", decoder: withMeta });
  return { c, inline, object };
}

describe("sealed snapshots", () => {
  test("the inline and the object snapshot open with the keyring", async () => {
    const log = recorder();
    const { inline, object } = await start(store(), { snapshotKeyring: KEYRING, logger: log.logger });
    assert.equal(inline.source, "snapshot", log.lines.join("\n"));
    assert.equal(inline.version, 3);
    assert.deepEqual(JSON.parse(inline.get().data), { password: "hunter2", rates: [1, 2, 3] });
    assert.deepEqual(inline.get().metadata, { team: "payments" });
    assert.equal(inline.get().contentType, "application/json");
    assert.equal(object.source, "snapshot", log.lines.join("\n"));
    assert.equal(object.version, 7);
    assert.equal(object.get().data.length, 150000);
    assert.ok(object.get().data.equals(PLAIN), "the object opens to object.plain");
    assert.equal(sha256(object.get().data), "02675bf9284bd74223e98ceea96ebee4c9a469272ead358f462d89753f8c909b", "the sealed manifest's sha256");
  });

  test("a file subscription gets the plaintext object, verified, in its cache", async () => {
    const cache = dir();
    const c = new Client({
      url: await deadUrl(), snapshotStore: pathToFileURL(store()).href, snapshotKeyring: KEYRING, cacheDir: cache, initialWaitMs: 2000,
      logger: recorder().logger,
    });
    clients.push(c);
    const sub = await c.subscribe("orders.object", { file: true });
    assert.equal(sub.source, "snapshot");
    assert.ok(readFileSync(sub.get()).equals(PLAIN));
  });

  test("an object arriving in small pieces (header split too) opens as it streams", async () => {
    const d = store();
    const pieces = [];
    const snapshotStore = {
      description: "pieces",
      async get(key) {
        const file = join(d, ...key.split("/"));
        let bytes;
        try {
          bytes = readFileSync(file);
        } catch {
          return null;
        }
        return (async function* () {
          for (let at = 0; at < bytes.length; at += 777) {
            pieces.push(key);
            yield bytes.subarray(at, at + 777);
          }
        })();
      },
    };
    const c = new Client({ url: await deadUrl(), snapshotStore, snapshotKeyring: KEYRING, initialWaitMs: 2000, logger: recorder().logger });
    clients.push(c);
    const sub = await c.subscribe("orders.object", { decoder: (p) => p.data });
    assert.equal(sub.source, "snapshot");
    assert.ok(sub.get().equals(PLAIN));
    assert.ok(pieces.filter((k) => k === "object.sealed").length > 190, "it did stream");
  });

  test("one flipped byte in the sealed manifest: not used", async () => {
    const d = store();
    const m = JSON.parse(fixture("inline.json"));
    const raw = Buffer.from(m.sealed, "base64");
    raw[raw.length - 20] ^= 0x80;
    writeFileSync(join(d, "snapshots", "orders.inline.json"), JSON.stringify({ ...m, sealed: raw.toString("base64") }));
    const log = recorder();
    const { inline, object } = await start(d, { snapshotKeyring: KEYRING, logger: log.logger });
    assert.deepEqual([inline.get(), inline.source, object.source], ["d", "default", "snapshot"]);
    assert.ok(log.lines.some((l) => /orders.inline.*failed authentication at chunk 0/.test(l)), log.lines.join("\n"));
  });

  test("without a keyring a sealed manifest is not used, and the log says why", async () => {
    const log = recorder();
    const { inline, object } = await start(store(), { logger: log.logger });
    assert.deepEqual([inline.get(), inline.source, object.get(), object.source], ["d", "default", "d", "default"]);
    const said = log.lines.filter((l) => /sealed at rest under key "orders"/.test(l));
    assert.equal(said.length, 2, log.lines.join("\n"));
  });

  test("another keyring with the same key ids and versions opens nothing", async () => {
    const log = recorder();
    const { inline, object } = await start(store(), { snapshotKeyring: otherKeyring(), logger: log.logger });
    assert.deepEqual([inline.source, object.source], ["default", "default"]);
    assert.equal(log.lines.filter((l) => /does not unwrap with key "orders" version/.test(l)).length, 2, log.lines.join("\n"));
  });

  test("one flipped byte in any chunk of the object: not used", async () => {
    const { length } = parseHeader(SEALED);
    assert.equal(SEALED.length, length + 150000 + 3 * 16, "three chunks");
    for (const at of [length + 10, length + CHUNK + 5000, SEALED.length - 3]) {
      const altered = Buffer.from(SEALED);
      altered[at] ^= 0x01;
      const log = recorder();
      const { object, inline } = await start(store(altered), { snapshotKeyring: KEYRING, logger: log.logger });
      assert.equal(inline.source, "snapshot", "the inline snapshot is not affected");
      assert.deepEqual([object.get(), object.source], ["d", "default"], `byte ${at}`);
      assert.ok(log.lines.some((l) => /failed authentication at chunk/.test(l)), log.lines.join("\n"));
    }
  });

  test("a truncated object (its last chunk dropped) is not used, nor is a file left behind", async () => {
    const { length } = parseHeader(SEALED);
    const cache = dir();
    const log = recorder();
    const c = new Client({
      url: await deadUrl(), snapshotStore: pathToFileURL(store(SEALED.subarray(0, length + 2 * CHUNK))).href, snapshotKeyring: KEYRING,
      cacheDir: cache, initialWaitMs: 2000, logger: log.logger,
    });
    clients.push(c);
    const sub = await c.subscribe("orders.object", { file: true, default: "d" });
    assert.deepEqual([sub.get(), sub.source], ["d", "default"]);
    assert.ok(log.lines.some((l) => /failed authentication at chunk 1/.test(l)), log.lines.join("\n"));
    const files = (function walk(d) {
      return readdirSync(d).flatMap((n) => (statSync(join(d, n)).isDirectory() ? walk(join(d, n)) : [n]));
    })(cache);
    assert.deepEqual(files, [], "no partial payload in the cache");
  });

  test("a header naming a key version the keyring lacks (3) or a KMS key (0): not used, said plainly", async () => {
    for (const [version, said] of [[3, /has no version 3/], [0, /KMS key "orders"/]]) {
      const other = Buffer.from(SEALED);
      other.writeUInt32BE(version, 7 + 1 + "orders".length);
      assert.equal(parseHeader(other).header.keyVersion, version);
      const log = recorder();
      const { object } = await start(store(other), { snapshotKeyring: KEYRING, logger: log.logger });
      assert.deepEqual([object.get(), object.source], ["d", "default"]);
      assert.ok(log.lines.some((l) => said.test(l)), log.lines.join("\n"));
    }
  });

  test("a keyring that does not parse, is missing, or comes without a snapshot store: a configuration error", async () => {
    const url = await deadUrl();
    const snapshotStore = pathToFileURL(store()).href;
    const bad = join(dir(), "bad.json");
    for (const [text, why] of [
      ["{not json", /not JSON/],
      [JSON.stringify({ format: 2, keys: {} }), /format 2/],
      [JSON.stringify({ format: 1, keys: { orders: { primary: 1, versions: { 1: "c2hvcnQ=" } } } }), /32 bytes/],
      [JSON.stringify({ format: 1, keys: { orders: { primary: 2, versions: { 1: randomBytes(32).toString("base64") } } } }), /primary version 2/],
    ]) {
      writeFileSync(bad, text);
      assert.throws(
        () => new Client({ url, snapshotStore, snapshotKeyring: bad }),
        (e) => e instanceof ConfigError && e.message.includes(bad) && why.test(e.message),
        text,
      );
    }
    const missing = join(dir(), "none.json");
    assert.throws(() => new Client({ url, snapshotStore, snapshotKeyring: missing }), (e) => e instanceof ConfigError && e.message.includes(missing));
    assert.throws(() => new Client({ url, snapshotKeyring: KEYRING }), (e) => e instanceof ConfigError && /snapshotStore/.test(e.message));
    assert.throws(() => new Client({ url, snapshotStore, snapshotKeyring: 5 }), ConfigError);
  });
});

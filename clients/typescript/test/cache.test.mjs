// The disk cache on its own: the Rust client's layout, atomic commits, pruning to the
// current and the previous payload, damaged entries refused.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Store, fileName } from "../dist/esm/cache.js";
import { removeDir, sha256, tempDir } from "./helpers.mjs";

async function put(store, topic, version, text) {
  const data = Buffer.from(text);
  const file = await store.writePayload(topic, version, sha256(data), data);
  await store.commit({
    topic, version, sha256: sha256(data), size: data.length, content_type: "text/plain", metadata: { k: "v" },
    file: file.slice(file.lastIndexOf("/") + 1), saved_at: 1,
  });
  return file;
}

test("saves, loads and keeps the current and the previous payload", async () => {
  const root = tempDir();
  try {
    const store = new Store(root);
    assert.equal(await store.load("a"), undefined);
    for (const v of [1, 2, 3]) await put(store, "a", v, `payload ${v}`);
    const got = await store.load("a");
    assert.equal(got.meta.version, 3);
    assert.equal(readFileSync(got.file, "utf8"), "payload 3");
    assert.deepEqual(got.meta.metadata, { k: "v" });
    const bins = readdirSync(join(root, "a")).filter((n) => n.endsWith(".bin")).sort();
    assert.deepEqual(bins, [fileName(2, sha256("payload 2")), fileName(3, sha256("payload 3"))].sort());
    assert.ok(!readdirSync(join(root, "a")).some((n) => n.startsWith(".tmp-")), "no temporary files left");
    const meta = JSON.parse(readFileSync(join(root, "a", "meta.json"), "utf8"));
    assert.deepEqual(Object.keys(meta).sort(), ["content_type", "file", "metadata", "saved_at", "sha256", "size", "topic", "version"]);
    // a damaged payload is not trusted
    writeFileSync(got.file, "payload X");
    assert.match((await store.load("a")).reason, /does not match/);
    // a non-persistent store never starts anything from disk, and goes away
    const scratch = new Store(undefined);
    assert.equal(await scratch.load("a"), undefined);
    scratch.discard();
    assert.ok(!existsSync(scratch.root));
  } finally {
    removeDir(root);
  }
});

test("a meta.json naming another topic or a path outside the directory is refused", async () => {
  const root = tempDir();
  try {
    const store = new Store(root);
    await put(store, "a", 1, "one");
    const metaPath = join(root, "a", "meta.json");
    const meta = JSON.parse(readFileSync(metaPath, "utf8"));
    writeFileSync(metaPath, JSON.stringify({ ...meta, topic: "b" }));
    assert.equal(await store.load("a"), undefined);
    writeFileSync(metaPath, JSON.stringify({ ...meta, file: "../../etc/passwd" }));
    assert.equal(await store.load("a"), undefined);
    writeFileSync(metaPath, "{not json");
    assert.equal(await store.load("a"), undefined);
  } finally {
    removeDir(root);
  }
});

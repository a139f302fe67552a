// End-to-end encrypted topics (docs/encryption.md) against the real server, with npm
// `age-encryption` 0.3.1 behind the client's `decrypt` option: the value decrypts and the
// cache holds ciphertext; without the option, or with a tampered chunk, the version is
// rejected and the error reaches the server. Skipped like server.test.mjs when the server
// or Postgres is not there (a failure under CI=true).
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Decrypter, Encrypter, generateX25519Identity, identityToRecipient } from "age-encryption";
import { Client, silentLogger } from "../dist/esm/index.js";
import { eventually, removeDir, tempDir } from "./helpers.mjs";
import { Server, unavailable } from "./server.mjs";

const why = unavailable();
const MARKER = "PLAINTEXT-MARKER-7f3a";

function files(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

describe("end-to-end encrypted topics against the real server", { skip: why ? `skipped: ${why}` : false }, () => {
  let server;
  before(async () => {
    server = await Server.start();
  });
  after(async () => {
    await server?.stop();
  });

  test("decrypts through the decrypt option, caches ciphertext, rejects without it or when tampered", async () => {
    const identity = await generateX25519Identity();
    const recipient = await identityToRecipient(identity);
    const topic = "e2e." + randomBytes(4).toString("hex");
    await server.ok("POST", "/api/v1/topics", {
      body: { name: topic, encryption: { mode: "end_to_end", recipients: [recipient] } },
    });
    const encrypt = async (text) => {
      const e = new Encrypter();
      e.addRecipient(recipient);
      return Buffer.from(await e.encrypt(text));
    };
    await server.publishRaw(topic, await encrypt(JSON.stringify({ password: MARKER })));
    const decrypt = async (_topic, ciphertext) => {
      const d = new Decrypter();
      d.addIdentity(identity);
      return d.decrypt(ciphertext);
    };

    const cache = tempDir();
    const c = new Client({ url: server.url, instance: "ts-e2e-1", cacheDir: cache, decrypt, logger: silentLogger });
    const sub = await c.subscribe(topic, { default: null });
    assert.deepEqual(sub.get(), { password: MARKER });
    const cached = files(cache);
    assert.ok(cached.length > 0, "the cache was written");
    for (const f of cached) assert.ok(!readFileSync(f).includes(MARKER), `${f} holds plaintext`);

    const bare = new Client({ url: server.url, instance: "ts-e2e-2", logger: silentLogger });
    const bsub = await bare.subscribe(topic, { default: "default" });
    assert.equal(bsub.get(), "default");
    const row = await eventually(async () => {
      const r = await server.consumer(topic, "ts-e2e-2");
      return r?.last_error ? r : null;
    }, { what: "the reported error" });
    assert.match(row.last_error, /no identity/);
    await bare.close();

    const bad = await encrypt('{"password": "new"}');
    bad[bad.length - 2] ^= 1;
    await server.publishRaw(topic, bad);
    const row2 = await eventually(async () => {
      const r = await server.consumer(topic, "ts-e2e-1");
      return r?.last_applied_version === 2 && r.last_error ? r : null;
    }, { what: "the tampered version reported" });
    assert.match(row2.last_error, /cannot decrypt the payload/);
    assert.deepEqual(sub.get(), { password: MARKER });
    await c.close();
    removeDir(cache);
  });
});

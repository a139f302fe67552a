// The package as users load it: ESM import and CommonJS require of the same API, with
// type declarations for both.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";

const require = createRequire(import.meta.url);
const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));

test("ESM and CommonJS builds export the same API", async () => {
  const esm = await import("@imprint/client");
  const cjs = require("@imprint/client");
  const names = ["Client", "Subscription", "decoders", "ApiError", "ConfigError", "NetworkError", "VerifyError", "fileSnapshotStore"];
  for (const n of names) {
    assert.ok(esm[n], `ESM exports ${n}`);
    assert.ok(cjs[n], `CJS exports ${n}`);
  }
  assert.deepEqual(Object.keys(esm).filter((k) => k !== "default").sort(), Object.keys(cjs).sort());
  assert.throws(() => new cjs.Client({ url: "ftp://x" }), cjs.ConfigError);
});

test("type declarations ship with both builds and the package has no runtime dependencies", () => {
  for (const cond of ["import", "require"]) {
    const types = pkg.exports["."][cond].types;
    assert.ok(existsSync(new URL(`../${types}`, import.meta.url)), types);
    const d = readFileSync(new URL(`../${types}`, import.meta.url), "utf8");
    assert.match(d, /Client/);
  }
  const sub = readFileSync(new URL("../dist/esm/subscription.d.ts", import.meta.url), "utf8");
  assert.ok(!/settledPromise|swap\(/.test(sub), "internals are stripped from the declarations");
  assert.deepEqual(pkg.dependencies ?? {}, {});
  assert.ok(pkg.engines.node.includes("20"));
});

/**
 * Object-store snapshots: the server's worker keeps `snapshots/<topic>.json` in its
 * payload store, naming what `*` (a node without labels) resolves to, with the payload
 * inline or the key of its object in the same store. Read when the server is unreachable
 * and a subscription has nothing cached.
 *
 * `file:///dir` (the server's `IMPRINT_OBJECT_STORE` on a shared disk) is built in. Any
 * other store (S3, GCS…) is a `SnapshotStore` the application passes: one `get(key)`
 * backed by the SDK it already uses; this package depends on none.
 */
import { createReadStream } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { ConfigError, ProtocolError, TimeoutError } from "./errors.js";
import { openSealed, openStream, SealError, type Keyring } from "./sealed.js";

/** Reads objects of the server's payload store by key (`snapshots/<topic>.json`, `topics/...`). */
export interface SnapshotStore {
  /** The object's bytes (whole or as chunks), or `null` when there is no such object. */
  get(key: string): Promise<Uint8Array | AsyncIterable<Uint8Array> | null>;
  /** For log messages. */
  readonly description?: string;
}

export const MANIFEST_FORMAT = 1;

/** `snapshots/<topic>.json`, as the server's worker writes it (format 1). */
export interface Manifest {
  format: number;
  topic: string;
  version: number;
  sha256: string;
  size: number;
  content_type?: string;
  metadata?: Record<string, string>;
  data_base64?: string | null;
  object?: string | null;
  /** The object's bytes are in the sealed format (a sealed manifest's object); size and sha256 are the plaintext's. */
  object_sealed?: boolean;
}

/** `snapshots/<topic>.json` of a topic encrypted at rest: the plain manifest, sealed (docs/encryption.md). */
export interface SealedManifest {
  format: number;
  topic: string;
  /** The key id it is sealed under. */
  key: string;
  /** base64 of the sealed plain manifest's JSON. */
  sealed: string;
}

/** A directory holding the store's objects under their keys. */
export function fileSnapshotStore(dir: string): SnapshotStore {
  const root = path.resolve(dir);
  return {
    description: `file://${root}`,
    async get(key: string) {
      const file = path.join(root, ...key.split("/"));
      try {
        await fs.access(file);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
        throw e;
      }
      return createReadStream(file, { highWaterMark: 1 << 20 });
    },
  };
}

/** A `snapshotStore` option as a store: `file://` URLs are read here; objects are used as given. */
export function openSnapshotStore(store: string | SnapshotStore): SnapshotStore {
  if (typeof store !== "string") {
    if (!store || typeof store.get !== "function") throw new ConfigError("snapshotStore: a file:// URL or an object with get(key)");
    return store;
  }
  let url: URL;
  try {
    url = new URL(store);
  } catch {
    throw new ConfigError(`snapshot store ${JSON.stringify(store)}: not a URL`);
  }
  if (url.protocol === "file:") {
    let dir: string;
    try {
      dir = fileURLToPath(url);
    } catch (e) {
      throw new ConfigError(`snapshot store ${JSON.stringify(store)}: ${(e as Error).message}`);
    }
    return fileSnapshotStore(dir);
  }
  if (url.protocol === "s3:" || url.protocol === "gs:") {
    throw new ConfigError(
      `snapshot store ${JSON.stringify(store)}: this package has no S3/GCS dependency; pass snapshotStore: { get(key) } backed by your SDK (see the README)`,
    );
  }
  throw new ConfigError(`snapshot store ${JSON.stringify(store)}: unsupported scheme (use file:// or a SnapshotStore object)`);
}

/** `p`, or a TimeoutError after `ms` (a store that hangs must not stall a subscription). */
function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** The chunks of `body`, each within `ms` of the previous one. */
export async function* boundedChunks(body: Uint8Array | AsyncIterable<Uint8Array>, ms: number, what: string): AsyncGenerator<Uint8Array> {
  if (body instanceof Uint8Array) {
    yield body;
    return;
  }
  const it = body[Symbol.asyncIterator]();
  try {
    for (;;) {
      const r = await bounded(it.next(), ms, what);
      if (r.done) return;
      yield r.value;
    }
  } finally {
    await it.return?.();
  }
}

/** `store.get(key)`, bounded in time. */
export function getObject(store: SnapshotStore, key: string, ms: number): Promise<Uint8Array | AsyncIterable<Uint8Array> | null> {
  return bounded(Promise.resolve().then(() => store.get(key)), ms, `snapshot object ${key}`);
}

async function readAll(body: Uint8Array | AsyncIterable<Uint8Array>, limit: number, what: string, ms: number): Promise<Buffer> {
  if (body instanceof Uint8Array) {
    if (body.length > limit) throw new ProtocolError(`${what}: larger than ${limit} bytes`);
    return Buffer.from(body);
  }
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of boundedChunks(body, ms, what)) {
    n += c.length;
    if (n > limit) throw new ProtocolError(`${what}: larger than ${limit} bytes`);
    parts.push(Buffer.from(c));
  }
  return Buffer.concat(parts);
}

/** The manifest of `topic` (opened with `keyring` when it is sealed), `undefined` when there is none. */
export async function readManifest(store: SnapshotStore, topic: string, ms: number, keyring?: Keyring): Promise<Manifest | undefined> {
  const body = await getObject(store, `snapshots/${topic}.json`, ms);
  if (body === null) return undefined;
  const raw = await readAll(body, 16 << 20, `snapshot manifest of ${topic}`, ms);
  let m: Manifest;
  try {
    m = JSON.parse(raw.toString("utf8"));
  } catch (e) {
    throw new ProtocolError(`snapshot manifest of ${topic}: ${(e as Error).message}`);
  }
  if (m && typeof m === "object" && "sealed" in m) m = unseal(m as unknown as SealedManifest, topic, keyring);
  if (!m || typeof m !== "object" || m.format !== MANIFEST_FORMAT || m.topic !== topic) {
    throw new ProtocolError(`snapshot manifest of ${topic}: format ${String(m?.format)} for ${JSON.stringify(m?.topic)}`);
  }
  if (!Number.isSafeInteger(m.version) || m.version < 1 || !Number.isSafeInteger(m.size) || m.size < 0 || typeof m.sha256 !== "string") {
    throw new ProtocolError(`snapshot manifest of ${topic}: bad version, size or sha256`);
  }
  return m;
}

/** A sealed manifest's plain manifest (checked by the caller like any manifest). */
function unseal(s: SealedManifest, topic: string, keyring: Keyring | undefined): Manifest {
  const what = `snapshot manifest of ${topic}`;
  if (s.format !== MANIFEST_FORMAT || typeof s.sealed !== "string" || typeof s.key !== "string") {
    throw new ProtocolError(`${what}: a sealed manifest of format ${String(s.format)} without a key or sealed text`);
  }
  if (!keyring) {
    throw new SealError(`${what}: it is sealed at rest under key ${JSON.stringify(s.key)} and this client has no keyring for it (the snapshotKeyring option)`);
  }
  let plain: Buffer;
  try {
    plain = openSealed(keyring, decodeBase64(s.sealed, "sealed"));
  } catch (e) {
    throw new SealError(`${what} (sealed under key ${JSON.stringify(s.key)}): ${(e as Error).message}`);
  }
  try {
    return JSON.parse(plain.toString("utf8"));
  } catch (e) {
    throw new ProtocolError(`${what}: the opened manifest is not JSON: ${(e as Error).message}`);
  }
}

/**
 * The manifest's payload as chunks (not verified here: the caller checks size and SHA-256);
 * a sealed object is opened as it streams, with `keyring`.
 */
export async function manifestPayload(store: SnapshotStore, m: Manifest, ms: number, keyring?: Keyring): Promise<AsyncIterable<Uint8Array> | Uint8Array> {
  if (typeof m.data_base64 === "string") return decodeBase64(m.data_base64, "snapshot data_base64");
  const obj = m.object;
  if (typeof obj !== "string" || !obj) throw new ProtocolError("the snapshot has neither data_base64 nor object");
  if (obj.split("/").some((p) => p === ".." || p === ".")) throw new ProtocolError(`snapshot object key ${JSON.stringify(obj)}`);
  const body = await getObject(store, obj.split("/").filter(Boolean).join("/"), ms);
  if (body === null) throw new ProtocolError(`snapshot object ${obj} is missing`);
  const chunks = boundedChunks(body, ms, `snapshot object ${obj}`);
  if (m.object_sealed !== true) return chunks;
  if (!keyring) throw new SealError(`snapshot object ${obj} is sealed and there is no keyring`);
  return opened(openStream(keyring, chunks), obj);
}

/** A sealed object's plaintext, its failures naming the object. */
async function* opened(chunks: AsyncIterable<Buffer>, obj: string): AsyncGenerator<Buffer> {
  try {
    yield* chunks;
  } catch (e) {
    throw e instanceof SealError ? new SealError(`snapshot object ${obj}: ${e.message}`) : e;
  }
}

/** Strict base64 (Buffer.from alone skips characters that are not base64). */
export function decodeBase64(s: string, what: string): Buffer {
  const t = s.replace(/\s+/g, "");
  if (t.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(t)) throw new ProtocolError(`${what} is not valid base64`);
  return Buffer.from(t, "base64");
}

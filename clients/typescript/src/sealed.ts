/**
 * Sealed snapshots of topics encrypted at rest (docs/encryption.md, "At rest"): the
 * manifest `snapshots/<topic>.json` is a `SealedManifest` whose `sealed` field holds the
 * plain manifest in Imprint's sealed format, and the object it names may be sealed too.
 * They open with a copy of the server's local keyring file (`snapshotKeyring`); the
 * cryptography is node:crypto's AES-256-GCM, no dependency.
 *
 * The sealed format (the Rust reference: seal/src/format.rs):
 *
 *     "IMPRAR" 0x01                  magic and format version (7 bytes)
 *     u8 n, key id (n bytes)         the provider's key id
 *     u32 BE                         the key-encryption key's version (0: a KMS key)
 *     u16 BE m, wrapped key (m)      the data key as the provider wrapped it
 *     u32 BE                         plaintext chunk size (65536)
 *     7 bytes                        the STREAM nonce prefix
 *     chunks                         each ≤ 65536 + 16 (tag), the last one flagged
 *
 * Chunk i's nonce is prefix ‖ u32 BE i ‖ (1 for the last chunk, else 0); every chunk's
 * associated data is magic ‖ format version ‖ chunk size ‖ nonce prefix. A keyring wraps a
 * data key as nonce (12) ‖ ciphertext (32) ‖ tag (16) under the associated data
 * `imprint-keyring-v1 ‖ 0 ‖ key id ‖ 0 ‖ version (u32 BE)`.
 *
 * Nothing here returns bytes that did not authenticate: a chunk altered, moved, dropped or
 * cut off is an error (`SealError`), and the snapshot is not used.
 */
import { createDecipheriv } from "node:crypto";
import { readFileSync } from "node:fs";
import { ConfigError, ProtocolError } from "./errors.js";

const MAGIC = Buffer.from("IMPRAR", "latin1");
const FORMAT_VERSION = 1;
/** Plaintext bytes per chunk. */
export const CHUNK = 64 * 1024;
const TAG = 16;
const NONCE_PREFIX = 7;
const MAX_WRAPPED = 4096;
const WRAP_NONCE = 12;
const KEY_ID = /^[A-Za-z0-9._\-:/]{1,255}$/;

/** A sealed manifest or object that does not open: it is not used (never wrong bytes). */
export class SealError extends ProtocolError {}

/** The header of a sealed payload. */
export interface Header {
  keyId: string;
  keyVersion: number;
  wrapped: Buffer;
  noncePrefix: Buffer;
  /** What every chunk authenticates besides itself. */
  aad: Buffer;
}

/** The header at the start of `buf` and its length; `undefined` when `buf` ends inside it (read more). */
export function parseHeader(buf: Buffer): { header: Header; length: number } | undefined {
  const start = Math.min(buf.length, MAGIC.length);
  if (!buf.subarray(0, start).equals(MAGIC.subarray(0, start))) throw new SealError("not an at-rest sealed payload (bad magic)");
  let at = 0;
  const take = (n: number): Buffer | undefined => {
    if (at + n > buf.length) return undefined;
    const s = buf.subarray(at, at + n);
    at += n;
    return s;
  };
  if (!take(MAGIC.length)) return undefined;
  const v = take(1);
  if (!v) return undefined;
  if (v[0] !== FORMAT_VERSION) throw new SealError(`sealed payload format version ${v[0]} is not known to this client`);
  const n = take(1);
  if (!n) return undefined;
  const id = take(n[0]);
  if (!id) return undefined;
  const keyId = id.toString("latin1");
  if (!KEY_ID.test(keyId)) throw new SealError("the sealed payload's header is malformed: bad key id");
  const kv = take(4);
  if (!kv) return undefined;
  const m = take(2);
  if (!m) return undefined;
  const wlen = m.readUInt16BE(0);
  if (wlen === 0 || wlen > MAX_WRAPPED) throw new SealError("the sealed payload's header is malformed: wrapped key length");
  const wrapped = take(wlen);
  if (!wrapped) return undefined;
  const c = take(4);
  if (!c) return undefined;
  if (c.readUInt32BE(0) !== CHUNK) throw new SealError("the sealed payload's header is malformed: chunk size");
  const np = take(NONCE_PREFIX);
  if (!np) return undefined;
  const noncePrefix = Buffer.from(np);
  const size = Buffer.alloc(4);
  size.writeUInt32BE(CHUNK, 0);
  const aad = Buffer.concat([MAGIC, Buffer.from([FORMAT_VERSION]), size, noncePrefix]);
  return { header: { keyId, keyVersion: kv.readUInt32BE(0), wrapped: Buffer.from(wrapped), noncePrefix, aad }, length: at };
}

/** AES-256-GCM open of `sealed` (ciphertext ‖ tag); `undefined` when it does not authenticate. */
function gcmOpen(key: Buffer, nonce: Buffer, sealed: Buffer, aad: Buffer): Buffer | undefined {
  if (sealed.length < TAG) return undefined;
  try {
    const d = createDecipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG });
    d.setAAD(aad);
    d.setAuthTag(sealed.subarray(sealed.length - TAG));
    return Buffer.concat([d.update(sealed.subarray(0, sealed.length - TAG)), d.final()]);
  } catch {
    return undefined;
  }
}

const plainObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === "object" && !Array.isArray(v);

/**
 * A copy of the server's local keyring file
 * (`{"format": 1, "keys": {"<id>": {"primary": 2, "versions": {"1": "<base64 KEK>", …}}}}`),
 * read once. It holds key material: give a node the keys it needs only.
 */
export class Keyring {
  readonly path: string;
  readonly #keys: Map<string, Map<number, Buffer>>;

  private constructor(path: string, keys: Map<string, Map<number, Buffer>>) {
    this.path = path;
    this.#keys = keys;
  }

  /** Reads and checks the file; anything wrong is a ConfigError naming it. */
  static load(path: string): Keyring {
    const bad = (why: string) => new ConfigError(`snapshotKeyring ${JSON.stringify(path)}: ${why}`);
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (e) {
      throw bad(`cannot read it: ${(e as Error).message}`);
    }
    let j: unknown;
    try {
      j = JSON.parse(text);
    } catch (e) {
      throw bad(`not a keyring (not JSON: ${(e as Error).message})`);
    }
    if (!plainObject(j) || !plainObject(j.keys)) throw bad('not a keyring (expected {"format": 1, "keys": {...}})');
    for (const k of Object.keys(j)) if (k !== "format" && k !== "keys") throw bad(`not a keyring (unknown field ${JSON.stringify(k)})`);
    if (j.format !== 1) throw bad(`the keyring has format ${JSON.stringify(j.format)}, this client reads 1`);
    const keys = new Map<string, Map<number, Buffer>>();
    for (const [id, e] of Object.entries(j.keys)) {
      if (!KEY_ID.test(id)) throw bad(`${JSON.stringify(id)} is not a key id`);
      if (!plainObject(e) || !plainObject(e.versions) || !Number.isSafeInteger(e.primary)) {
        throw bad(`key ${JSON.stringify(id)}: expected {"primary": N, "versions": {"N": "<base64>"}}`);
      }
      for (const k of Object.keys(e)) if (k !== "primary" && k !== "versions") throw bad(`key ${JSON.stringify(id)}: unknown field ${JSON.stringify(k)}`);
      const versions = new Map<number, Buffer>();
      for (const [v, kek] of Object.entries(e.versions)) {
        const n = Number(v);
        if (!/^[0-9]{1,10}$/.test(v) || n > 0xffffffff) throw bad(`key ${JSON.stringify(id)}: version ${JSON.stringify(v)} is not a number`);
        const bytes = typeof kek === "string" && /^[A-Za-z0-9+/]*={0,2}$/.test(kek) && kek.length % 4 === 0 ? Buffer.from(kek, "base64") : undefined;
        if (!bytes || bytes.length !== 32) throw bad(`key ${JSON.stringify(id)} version ${v}: not the base64 of 32 bytes`);
        versions.set(n, bytes);
      }
      if (!versions.has(e.primary as number)) throw bad(`key ${JSON.stringify(id)} names primary version ${String(e.primary)} that it lacks`);
      keys.set(id, versions);
    }
    return new Keyring(path, keys);
  }

  /** The data key a header names, unwrapped; a SealError when this keyring cannot. */
  unwrap(h: Header): Buffer {
    if (h.keyVersion === 0) {
      throw new SealError(`its data key is wrapped by the KMS key ${JSON.stringify(h.keyId)} (version 0): a keyring cannot unwrap it`);
    }
    const versions = this.#keys.get(h.keyId);
    if (!versions) throw new SealError(`the keyring ${this.path} has no key ${JSON.stringify(h.keyId)}`);
    const kek = versions.get(h.keyVersion);
    if (!kek) throw new SealError(`key ${JSON.stringify(h.keyId)} of the keyring ${this.path} has no version ${h.keyVersion} (retired?)`);
    const refused = () => new SealError(`the data key does not unwrap with key ${JSON.stringify(h.keyId)} version ${h.keyVersion}: altered or not its own`);
    if (h.wrapped.length !== WRAP_NONCE + 32 + TAG) throw refused();
    const v = Buffer.alloc(4);
    v.writeUInt32BE(h.keyVersion, 0);
    const aad = Buffer.concat([Buffer.from("imprint-keyring-v1"), Buffer.from([0]), Buffer.from(h.keyId, "latin1"), Buffer.from([0]), v]);
    const key = gcmOpen(kek, h.wrapped.subarray(0, WRAP_NONCE), h.wrapped.subarray(WRAP_NONCE), aad);
    if (!key || key.length !== 32) throw refused();
    return key;
  }
}

/** Opens the chunks after a header: `push` sealed bytes, use what it returns, then `finish`. */
export class Opener {
  readonly #key: Buffer;
  readonly #h: Header;
  #buf: Buffer = Buffer.alloc(0);
  #chunk = 0;
  #failed = false;

  constructor(key: Buffer, header: Header) {
    this.#key = key;
    this.#h = header;
  }

  #open(sealed: Buffer, last: boolean): Buffer {
    if (this.#failed || this.#chunk > 0xffffffff) throw this.#altered();
    const nonce = Buffer.alloc(12);
    this.#h.noncePrefix.copy(nonce, 0);
    nonce.writeUInt32BE(this.#chunk, NONCE_PREFIX);
    nonce[11] = last ? 1 : 0;
    const plain = gcmOpen(this.#key, nonce, sealed, this.#h.aad);
    if (!plain) {
      this.#failed = true;
      throw this.#altered();
    }
    this.#chunk++;
    return plain;
  }

  #altered(): SealError {
    return new SealError(`the sealed payload failed authentication at chunk ${this.#chunk}: it was altered, truncated or reordered`);
  }

  /** The plaintext of the whole chunks so far (holds back at most one chunk: the last may follow). */
  push(sealed: Uint8Array): Buffer {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, sealed]) : Buffer.from(sealed);
    const out: Buffer[] = [];
    let at = 0;
    while (this.#buf.length - at > CHUNK + TAG) {
      out.push(this.#open(this.#buf.subarray(at, at + CHUNK + TAG), false));
      at += CHUNK + TAG;
    }
    if (at) this.#buf = Buffer.from(this.#buf.subarray(at));
    return out.length === 1 ? out[0] : Buffer.concat(out);
  }

  /** The last (flagged) chunk. */
  finish(): Buffer {
    return this.#open(this.#buf, true);
  }
}

/** A whole sealed payload held in memory (a sealed manifest), opened. */
export function openSealed(keyring: Keyring, raw: Buffer): Buffer {
  const parsed = parseHeader(raw);
  if (!parsed) throw new SealError("the sealed payload ends inside its header");
  const o = new Opener(keyring.unwrap(parsed.header), parsed.header);
  const body = o.push(raw.subarray(parsed.length));
  return Buffer.concat([body, o.finish()]);
}

/** The plaintext of a sealed object as it streams (bounded memory: about one chunk); a failure throws. */
export async function* openStream(keyring: Keyring, sealed: AsyncIterable<Uint8Array> | Uint8Array): AsyncGenerator<Buffer> {
  const chunks: AsyncIterable<Uint8Array> =
    sealed instanceof Uint8Array
      ? (async function* () {
          yield sealed;
        })()
      : sealed;
  let head: Buffer | undefined = Buffer.alloc(0);
  let opener: Opener | undefined;
  for await (const c of chunks) {
    if (opener) {
      const out = opener.push(c);
      if (out.length) yield out;
      continue;
    }
    head = Buffer.concat([head!, c]);
    const parsed = parseHeader(head);
    if (!parsed) continue; // the header is bounded: parseHeader throws or completes within ~4.4 KiB
    opener = new Opener(keyring.unwrap(parsed.header), parsed.header);
    const out = opener.push(head.subarray(parsed.length));
    head = undefined;
    if (out.length) yield out;
  }
  if (!opener) throw new SealError("the sealed payload ends inside its header");
  yield opener.finish();
}

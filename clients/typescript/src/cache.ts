/**
 * The disk cache, in the Rust client's layout (a cache directory can be shared by the
 * clients of every language): per topic, the last payload that applied,
 * `<dir>/<topic>/v<version>-<sha256 prefix>.bin`, and `<dir>/<topic>/meta.json` (which
 * file is current, its version and SHA-256). Every write goes to a `.tmp-*` file that is
 * synced, then renamed: a crash leaves the old state or the new one. The previous payload
 * file is kept (a reader handed its path a moment ago can still open it); older ones go.
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, rmSync } from "node:fs";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";

export const META = "meta.json";
const TMP_PREFIX = ".tmp-";
const STALE_TMP_MS = 3600_000;

export interface CacheMeta {
  topic: string;
  version: number;
  sha256: string;
  size: number;
  content_type: string;
  metadata: Record<string, string>;
  /** The payload file's name inside the topic's directory. */
  file: string;
  /** Unix seconds. */
  saved_at: number;
}

export function fileName(version: number, sha256: string): string {
  return `v${version}-${sha256.slice(0, 16)}.bin`;
}

/** SHA-256 (hex) and size of a file, streamed. */
export async function sha256File(file: string): Promise<{ sha256: string; size: number }> {
  const h = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
    h.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: h.digest("hex"), size };
}

async function syncDir(dir: string): Promise<void> {
  // makes the rename durable; not every platform can open a directory, which is fine
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(dir, "r");
    await fh.sync();
  } catch {
    // ignored
  } finally {
    await fh?.close().catch(() => {});
  }
}

/**
 * A directory of per-topic payloads. Without a configured directory it is a private
 * temporary one: downloaded files land there, nothing is read back, and `discard()`
 * removes it.
 */
export class Store {
  readonly root: string;
  readonly persistent: boolean;

  constructor(root: string | undefined) {
    this.persistent = root !== undefined;
    // the private directory is only created when a file payload first needs it
    this.root =
      root !== undefined ? path.resolve(root) : path.join(tmpdir(), `imprint-client-${process.pid}-${randomBytes(6).toString("hex")}`);
  }

  discard(): void {
    if (!this.persistent) rmSync(this.root, { recursive: true, force: true });
  }

  topicDir(topic: string): string {
    // topic names are validated ([a-z0-9][a-z0-9._-]*): never "." or "..", never a "/"
    return path.join(this.root, topic);
  }

  /** Creates the topic's directory and removes stale temporary files in it. */
  async prepare(topic: string): Promise<string> {
    const dir = this.topicDir(topic);
    await fs.mkdir(dir, { recursive: true });
    const now = Date.now();
    for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
      if (!name.startsWith(TMP_PREFIX)) continue;
      try {
        const st = await fs.stat(path.join(dir, name));
        if (now - st.mtimeMs > STALE_TMP_MS) await fs.unlink(path.join(dir, name));
      } catch {
        // another process took it
      }
    }
    return dir;
  }

  tempPath(topic: string): string {
    return path.join(this.topicDir(topic), TMP_PREFIX + randomBytes(8).toString("hex"));
  }

  /** Writes `data` as the topic's payload file (atomically) and returns its path. */
  async writePayload(topic: string, version: number, sha256: string, data: Uint8Array): Promise<string> {
    const dir = await this.prepare(topic);
    const final = path.join(dir, fileName(version, sha256));
    const tmp = this.tempPath(topic);
    try {
      const fh = await fs.open(tmp, "w");
      try {
        await fh.writeFile(data);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.rename(tmp, final);
    } catch (e) {
      await fs.unlink(tmp).catch(() => {});
      throw e;
    }
    await syncDir(dir);
    return final;
  }

  /** Moves a downloaded (and verified, synced) temporary file into place. */
  async adoptFile(topic: string, version: number, sha256: string, tmp: string): Promise<string> {
    const final = path.join(this.topicDir(topic), fileName(version, sha256));
    await fs.rename(tmp, final);
    await syncDir(path.dirname(final));
    return final;
  }

  /** Makes `meta.file` the topic's current payload; keeps the previous one, removes older ones. */
  async commit(meta: CacheMeta): Promise<void> {
    const dir = await this.prepare(meta.topic);
    const previous = await this.loadMeta(meta.topic);
    const tmp = this.tempPath(meta.topic);
    try {
      const fh = await fs.open(tmp, "w");
      try {
        await fh.writeFile(JSON.stringify(meta, null, 2));
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.rename(tmp, path.join(dir, META));
    } catch (e) {
      await fs.unlink(tmp).catch(() => {});
      throw e;
    }
    await syncDir(dir);
    const keep = new Set([meta.file, previous?.file]);
    for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
      if (name.endsWith(".bin") && !keep.has(name)) await fs.unlink(path.join(dir, name)).catch(() => {});
    }
  }

  async loadMeta(topic: string): Promise<CacheMeta | undefined> {
    let raw: Record<string, unknown>;
    try {
      raw = JSON.parse(await fs.readFile(path.join(this.topicDir(topic), META), "utf8"));
    } catch {
      return undefined;
    }
    const m = raw as Partial<CacheMeta>;
    if (
      !raw ||
      m.topic !== topic ||
      !Number.isSafeInteger(m.version) ||
      typeof m.sha256 !== "string" ||
      !Number.isSafeInteger(m.size) ||
      typeof m.file !== "string" ||
      m.file.includes("/") ||
      m.file.includes("\\") ||
      m.file.startsWith(".")
    ) {
      return undefined;
    }
    return {
      topic,
      version: m.version!,
      sha256: m.sha256,
      size: m.size!,
      file: m.file,
      content_type: typeof m.content_type === "string" ? m.content_type : "",
      metadata: m.metadata && typeof m.metadata === "object" ? { ...m.metadata } : {},
      saved_at: Number(m.saved_at ?? 0),
    };
  }

  /**
   * The cached payload of `topic`, if there is one whose file still has the recorded size
   * and SHA-256 (`reason` says why there is none when there is a damaged entry).
   */
  async load(topic: string): Promise<{ meta: CacheMeta; file: string } | { reason: string } | undefined> {
    if (!this.persistent) return undefined;
    const meta = await this.loadMeta(topic);
    if (!meta) return undefined;
    const file = path.join(this.topicDir(topic), meta.file);
    try {
      const got = await sha256File(file);
      if (got.size !== meta.size || got.sha256 !== meta.sha256) {
        return { reason: `${file} does not match its recorded SHA-256 ${meta.sha256} and size ${meta.size}` };
      }
    } catch (e) {
      return { reason: `cannot read ${file}: ${(e as Error).message}` };
    }
    return { meta, file };
  }
}

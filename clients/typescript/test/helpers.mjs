// Test helpers: a scriptable fake Imprint server, updates as the server sends them, a URL
// where nothing listens, and a patient `eventually`.
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import net from "node:net";

export const sha256 = (b) => createHash("sha256").update(b).digest("hex");

export function update(version, data, { inline = true, sha, pinned = false, topic = "t.a" } = {}) {
  const bytes = Buffer.from(data);
  const u = {
    version,
    pinned,
    metadata: {},
    content_type: "application/json",
    size: bytes.length,
    sha256: sha ?? sha256(bytes),
    data_url: `/api/v1/topics/${topic}/versions/${version}/data`,
  };
  if (inline) u.data_base64 = bytes.toString("base64");
  return u;
}

export const answer = (updates = {}, missing = {}, after = 0) => ({ status: 200, body: { updates, missing, poll_after_ms: after } });

/** A free port on 127.0.0.1 (nothing listens there once this returns). */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export async function deadUrl() {
  return `http://127.0.0.1:${await freePort()}`;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns something truthy (and not an empty array) (a test's patience, not a bound on the code). */
export async function eventually(check, { timeout = 20000, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last && !(Array.isArray(last) && last.length === 0)) return last;
    await sleep(25);
  }
  throw new Error(`${what} not reached within ${timeout} ms (last: ${JSON.stringify(last)})`);
}

export function tempDir(prefix = "imprint-ts-test-") {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(d) {
  rmSync(d, { recursive: true, force: true });
}

/**
 * A scripted stand-in for the server: `onPoll(body) -> {status, body, headers}` (may be
 * async), payloads served from `files` (with Range), every request recorded.
 */
export class Fake {
  polls = [];
  requests = [];
  files = new Map();
  onPoll = () => answer();
  /** `(req, res) => true` to take over a GET (cut a download, stall…). */
  onGet = undefined;

  async start() {
    this.server = createServer(async (req, res) => {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      this.requests.push({ method: req.method, path: req.url, headers: req.headers });
      if (req.method === "POST" && req.url === "/api/v1/poll") {
        const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        this.polls.push(body);
        let out;
        try {
          out = await this.onPoll(body, req);
        } catch (e) {
          out = { status: 500, body: { error: { code: "internal", message: String(e) } } };
        }
        if (res.destroyed) return;
        const text = typeof out.body === "string" ? out.body : JSON.stringify(out.body);
        res.writeHead(out.status ?? 200, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...(out.headers ?? {}) });
        res.end(text);
        return;
      }
      if (req.method === "GET") {
        if (this.onGet && (await this.onGet(req, res))) return;
        const data = this.files.get(req.url.split("?")[0]) ?? this.files.get(req.url);
        if (data === undefined) {
          const text = JSON.stringify({ error: { code: "not_found", message: "no such thing" } });
          res.writeHead(404, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
          res.end(text);
          return;
        }
        const range = req.headers.range;
        if (range) {
          const start = Number(/bytes=(\d+)-/.exec(range)[1]);
          res.writeHead(206, { "content-range": `bytes ${start}-${data.length - 1}/${data.length}`, "content-length": data.length - start });
          res.end(data.subarray(start));
        } else {
          res.writeHead(200, { "content-length": data.length });
          res.end(data);
        }
        return;
      }
      res.writeHead(405);
      res.end();
    });
    await new Promise((r) => this.server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  async close() {
    this.server.closeAllConnections?.();
    await new Promise((r) => this.server.close(r));
  }

  reportsFor(topic) {
    return this.polls.map((p) => p.applied?.[topic]).filter(Boolean);
  }
}

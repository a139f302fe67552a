// A real Imprint server for the integration tests: the binary, on a fresh database of the
// running Postgres, with its own home directory and object store — as the Python client's
// tests/conftest.py starts it — and the admin calls the tests make through its HTTP API.
//
//   IMPRINT_SERVER_BIN   the server binary (default /work/bin/imprint-server, else
//                        <repo>/target/debug/imprint-server)
//   IMPRINT_TEST_PG_URL  an admin connection URL of Postgres (default: DATABASE_URL, else
//                        postgres://postgres@127.0.0.1:54329/postgres)
//   IMPRINT_TEST_PSQL    psql, to create and drop the database (default: psql)
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort, removeDir, sleep, tempDir } from "./helpers.mjs";

const REPO = fileURLToPath(new URL("../../..", import.meta.url));
export const ADMIN_TOKEN = "ts-client-admin-token-" + randomBytes(8).toString("hex");

function withDb(url, db) {
  const u = new URL(url);
  u.pathname = "/" + db;
  return u.toString();
}

export function serverBinary() {
  if (process.env.IMPRINT_SERVER_BIN) return process.env.IMPRINT_SERVER_BIN;
  return existsSync("/work/bin/imprint-server") ? "/work/bin/imprint-server" : join(REPO, "target/debug/imprint-server");
}

function pgAdminUrl() {
  return process.env.IMPRINT_TEST_PG_URL || process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:54329/postgres";
}

function psql(url, sql) {
  const bin = process.env.IMPRINT_TEST_PSQL || "psql";
  return spawnSync(bin, ["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], { encoding: "utf8", timeout: 30000 });
}

/** Why the real server cannot run here (undefined when it can). */
export function unavailable() {
  const bin = serverBinary();
  if (!existsSync(bin)) return `${bin} is missing: build it with \`cargo build -p imprint-server\` (or set IMPRINT_SERVER_BIN)`;
  const r = psql(withDb(pgAdminUrl(), "postgres"), "SELECT 1");
  if (r.error) return `psql cannot run (${r.error.message}); set IMPRINT_TEST_PSQL`;
  if (r.status !== 0) return `Postgres at ${pgAdminUrl()} is not reachable (${(r.stderr || "").trim()}); eval "$(./dev pg-start)" or set IMPRINT_TEST_PG_URL`;
  return undefined;
}

export class Server {
  static async start() {
    const admin = withDb(pgAdminUrl(), "postgres");
    const db = `imprint_tsclient_${randomBytes(4).toString("hex")}`;
    const created = psql(admin, `CREATE DATABASE ${db}`);
    if (created.status !== 0) throw new Error(`CREATE DATABASE ${db}: ${created.stderr}`);
    const home = tempDir("imprint-tsclient-");
    const port = await freePort();
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("IMPRINT_") && !k.startsWith("LEPTOS_")));
    Object.assign(env, {
      DATABASE_URL: withDb(pgAdminUrl(), db),
      IMPRINT_ADDR: `127.0.0.1:${port}`,
      LEPTOS_SITE_ADDR: `127.0.0.1:${port}`,
      IMPRINT_HOME: home,
      IMPRINT_BOOTSTRAP_TOKEN: ADMIN_TOKEN,
      IMPRINT_ADMIN_PASSWORD: "ts-client-" + randomBytes(8).toString("hex"),
      IMPRINT_SNAPSHOT_SECS: "1",
      IMPRINT_ROLLOUT_TICK_MS: "200",
    });
    const log = join(home, "server.log");
    const out = openSync(log, "w");
    const proc = spawn(serverBinary(), ["serve"], { cwd: home, env, stdio: ["ignore", out, out] });
    const s = new Server(`http://127.0.0.1:${port}`, home, proc, log, admin, db);
    const deadline = Date.now() + 120_000;
    for (;;) {
      try {
        const r = await fetch(s.url + "/healthz", { signal: AbortSignal.timeout(2000) });
        await r.arrayBuffer();
        if (r.ok) break;
      } catch {
        // not up yet
      }
      if (proc.exitCode !== null || Date.now() > deadline) {
        await s.stop();
        throw new Error(`the server did not start; its log:\n${readFileSync(log, "utf8").slice(-4000)}`);
      }
      await sleep(200);
    }
    return s;
  }

  constructor(url, home, proc, log, admin, db) {
    Object.assign(this, { url, home, proc, log, admin, db });
    this.objects = join(home, "objects");
  }

  async stop() {
    if (this.proc.exitCode === null) {
      const exited = new Promise((r) => this.proc.once("exit", r));
      this.proc.kill("SIGTERM");
      const t = setTimeout(() => this.proc.kill("SIGKILL"), 15000);
      await exited;
      clearTimeout(t);
    }
    psql(this.admin, `DROP DATABASE IF EXISTS ${this.db} WITH (FORCE)`);
    removeDir(this.home);
  }

  async api(method, path, { body, raw, contentType = "application/json" } = {}) {
    const data = raw ?? (body !== undefined ? JSON.stringify(body) : undefined);
    const headers = { authorization: `Bearer ${ADMIN_TOKEN}` };
    if (data !== undefined) headers["content-type"] = contentType;
    const r = await fetch(this.url + path, { method, headers, body: data, signal: AbortSignal.timeout(30000) });
    const text = await r.text();
    let parsed = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      // not JSON
    }
    return [r.status, parsed];
  }

  async ok(method, path, o) {
    const [status, answer] = await this.api(method, path, o);
    if (status < 200 || status >= 300) throw new Error(`${method} ${path}: ${status} ${JSON.stringify(answer)}`);
    return answer;
  }

  async topic(prefix = "t") {
    const name = `${prefix}.${randomBytes(4).toString("hex")}`;
    await this.ok("POST", "/api/v1/topics", { body: { name } });
    return name;
  }

  async publish(topic, data, scopes) {
    const body = { data: typeof data === "string" ? data : JSON.stringify(data) };
    if (scopes !== undefined) body.scopes = scopes;
    return (await this.ok("POST", `/api/v1/topics/${topic}/versions`, { body })).version;
  }

  async publishRaw(topic, bytes) {
    return (await this.ok("POST", `/api/v1/topics/${topic}/versions`, { raw: bytes, contentType: "application/octet-stream" })).version;
  }

  pin(topic, version, selector = {}) {
    return this.ok("PUT", `/api/v1/topics/${topic}/pins`, { body: { selector, version } });
  }

  unpin(topic) {
    return this.ok("DELETE", `/api/v1/topics/${topic}/pins?selector=`);
  }

  async consumers(topic) {
    return (await this.ok("GET", `/api/v1/topics/${topic}/consumers`)).consumers;
  }

  async consumer(topic, instance) {
    return (await this.consumers(topic)).find((c) => c.instance === instance);
  }
}

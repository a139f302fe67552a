/**
 * The `Client`: settings, the subscriptions, the one background poll loop, and the
 * start-up order of each subscription (disk cache, then the server's first answer within
 * `initialWaitMs`, then the object-store snapshot, then the default).
 */
import { hostname } from "node:os";
import { Store } from "./cache.js";
import type { Core, Settings } from "./core.js";
import { applyFetched, type Update } from "./deliver.js";
import { Aborted, ClosedError, ConfigError, describe } from "./errors.js";
import { Transport } from "./http.js";
import { defaultLogger, type Logger } from "./log.js";
import { Metrics, type MetricsHook } from "./metrics.js";
import { flushReports, run } from "./poller.js";
import { Keyring } from "./sealed.js";
import { openSnapshotStore, type SnapshotStore } from "./snapshot.js";
import { Subscription, type Decoder, type Payload } from "./subscription.js";
import { checkInstance, checkLabels, checkMs, checkServerUrl, checkTopic } from "./validate.js";
import * as fs from "node:fs/promises";

export interface ClientOptions {
  /** The server (`http://imprint:3000`), or several of one deployment, tried in order when a poll fails. */
  url: string | readonly string[];
  /** More servers, tried after `url` when a poll fails (network, timeout, 5xx); the client stays on the one that answers. */
  fallbackUrls?: readonly string[];
  /** A consumer token: `Authorization: Bearer` on every request to the servers above (only to them). */
  token?: string;
  /** This node's name in the consumer audit (default: the host name). */
  instance?: string;
  /** Decide which version this node resolves to: `{ region: "eu-west-1" }`. */
  labels?: Record<string, string>;
  /** Keep the last good payload of each topic here; start from it when the server is unreachable. */
  cacheDir?: string;
  /** The server's payload store (`file:///dir`, or a `SnapshotStore`), read when the server is unreachable and nothing is cached. */
  snapshotStore?: string | SnapshotStore;
  /**
   * A copy of the server's local keyring file (path), to open the sealed snapshots of topics
   * encrypted at rest (docs/encryption.md). Needs `snapshotStore`; read when the client is
   * built. It is key material: give a node a keyring with the keys it needs only.
   */
  snapshotKeyring?: string;
  /** How long `subscribe` waits for the server's first answer (default 5000). */
  initialWaitMs?: number;
  /** How long the server may hold a poll (default 30000, at most 60000). */
  longPollMs?: number;
  /** Bound of each request beyond the long-poll hold; also the bound between two chunks of a download (default 30000). */
  requestTimeoutMs?: number;
  /** Retry delays after network errors and 5xx: exponential from min to max with jitter (default 500 and 30000); 4xx after 2 × max. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** At start-up, when the newest version fails to apply, try this many older ones (default 3; 0 turns it off). */
  startupFallback?: number;
  /** While only a rejected version is on offer, ask about newer ones this often (default 10000). */
  recheckRejectedMs?: number;
  /** Called with every metric's new value. */
  metrics?: MetricsHook;
  /** Where log messages go (default: stderr, levels from `IMPRINT_LOG`, default `warn`). */
  logger?: Logger;
  /**
   * Decrypts payloads of end-to-end encrypted topics (age v1 files; docs/encryption.md)
   * after their SHA-256 (the ciphertext's) is verified; the cache keeps the ciphertext.
   * The client bundles no cryptography: with npm `age-encryption` (ESM),
   * `async (topic, ct) => { const d = new Decrypter(); d.addIdentity(identity); return d.decrypt(ct) }`.
   * Without it such versions are rejected. File subscriptions get the ciphertext file.
   */
  decrypt?: DecryptFn;
}

/** Turns the verified ciphertext of a version of `topic` into its plaintext (a throw rejects the version). */
export type DecryptFn = (topic: string, ciphertext: Uint8Array) => Promise<Uint8Array> | Uint8Array;

export interface SubscribeOptions<T> {
  /** The value until a version applies (default `undefined`). */
  default?: T;
  /**
   * Turns a verified payload into the value (may be async). Default: JSON of the bytes, or
   * the file's path with `file: true`. A throw keeps the old value and reports the version failed.
   */
  decoder?: Decoder<T>;
  /** Stream each version to a file in the cache directory; the decoder gets `payload.path`. */
  file?: boolean;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Ready-made decoders. */
export const decoders = {
  /** The payload parsed as JSON (not UTF-8 or not JSON: the version fails). */
  json: <T = unknown>(p: Payload): T => JSON.parse(utf8.decode(p.data ?? Buffer.alloc(0))) as T,
  /** The payload as UTF-8 text (invalid UTF-8: the version fails). */
  text: (p: Payload): string => utf8.decode(p.data ?? Buffer.alloc(0)),
  /** The raw bytes. */
  bytes: (p: Payload): Buffer => p.data ?? Buffer.alloc(0),
  /** The verified file's path (`file: true`). */
  path: (p: Payload): string => {
    if (p.path === undefined) throw new Error("no file: subscribe with file: true");
    return p.path;
  },
};

function defaultInstance(): string {
  const h = (process.env.HOSTNAME || hostname() || "").trim();
  return h || "imprint-client";
}

/** Counts a setting that is a whole number within bounds. */
function checkCount(name: string, v: unknown, fallback: number, max: number): number {
  if (v === undefined || v === null) return fallback;
  if (!Number.isSafeInteger(v) || (v as number) < 0 || (v as number) > max) {
    throw new ConfigError(`${name} must be a whole number within 0..${max} (got ${JSON.stringify(v)})`);
  }
  return v as number;
}

const KNOWN = new Set([
  "url",
  "fallbackUrls",
  "token",
  "instance",
  "labels",
  "cacheDir",
  "snapshotStore",
  "snapshotKeyring",
  "initialWaitMs",
  "longPollMs",
  "requestTimeoutMs",
  "backoffMinMs",
  "backoffMaxMs",
  "startupFallback",
  "recheckRejectedMs",
  "metrics",
  "logger",
  "decrypt",
]);

/**
 * An Imprint consumer: one background long poll for all of its subscriptions. Call
 * `close()` when done (the poll keeps the process alive until then).
 */
export class Client {
  readonly instance: string;
  readonly labels: Readonly<Record<string, string>>;
  /** The metrics kept so far (`metrics.get(name, labels)`, `metrics.snapshot()`). */
  readonly metrics: Metrics;
  readonly #settings: Settings;
  readonly #http: Transport;
  readonly #store: Store;
  readonly #snapshots: SnapshotStore | undefined;
  readonly #log: Logger;
  readonly #subs = new Map<string, Subscription<unknown>>();
  readonly #starting = new Set<string>();
  readonly #stop = new AbortController();
  #generation = 0;
  #wakers = new Set<() => void>();
  /** The poll in flight (one at a time): a new subscription or close() aborts it. */
  #pollAbort: AbortController | undefined;
  #loop: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  readonly #core: Core;

  constructor(options: ClientOptions) {
    if (!options || typeof options !== "object") throw new ConfigError("new Client({ url, ... }): options are required");
    for (const k of Object.keys(options)) {
      if (!KNOWN.has(k)) throw new ConfigError(`unknown option ${JSON.stringify(k)}`);
    }
    const urls = [...(typeof options.url === "string" ? [options.url] : (options.url ?? [])), ...(options.fallbackUrls ?? [])];
    if (urls.length === 0) throw new ConfigError("url: at least one server URL");
    const bases = urls.map(checkServerUrl);
    this.instance = checkInstance(options.instance ?? defaultInstance());
    this.labels = Object.freeze(checkLabels(options.labels));
    if (options.token !== undefined && typeof options.token !== "string") throw new ConfigError("token must be a string");
    if (options.token !== undefined && !/^[\x21-\x7e]*$/.test(options.token)) {
      throw new ConfigError("token must be printable ASCII without spaces (a bearer token)");
    }
    const backoffMinMs = checkMs("backoffMinMs", options.backoffMinMs, 500, 1, 3600_000);
    const backoffMaxMs = Math.max(backoffMinMs, checkMs("backoffMaxMs", options.backoffMaxMs, 30_000, 1, 3600_000));
    this.#settings = {
      initialWaitMs: checkMs("initialWaitMs", options.initialWaitMs, 5000, 0, 3600_000),
      longPollMs: checkMs("longPollMs", options.longPollMs, 30_000, 0, 60_000),
      requestTimeoutMs: checkMs("requestTimeoutMs", options.requestTimeoutMs, 30_000, 1, 3600_000),
      backoffMinMs,
      backoffMaxMs,
      clientErrorRetryMs: 2 * backoffMaxMs,
      startupFallback: checkCount("startupFallback", options.startupFallback, 3, 100),
      recheckRejectedMs: Math.max(100, checkMs("recheckRejectedMs", options.recheckRejectedMs, 10_000, 0, 3600_000)),
    };
    if (options.cacheDir !== undefined && (typeof options.cacheDir !== "string" || !options.cacheDir)) {
      throw new ConfigError("cacheDir must be a directory path");
    }
    if (options.metrics !== undefined && typeof options.metrics !== "function") throw new ConfigError("metrics must be a function");
    if (options.decrypt !== undefined && typeof options.decrypt !== "function") throw new ConfigError("decrypt must be a function");
    this.#log = options.logger ?? defaultLogger();
    this.#snapshots = options.snapshotStore !== undefined ? openSnapshotStore(options.snapshotStore) : undefined;
    let keyring: Keyring | undefined;
    if (options.snapshotKeyring !== undefined) {
      if (typeof options.snapshotKeyring !== "string" || !options.snapshotKeyring) throw new ConfigError("snapshotKeyring must be a file path");
      if (!this.#snapshots) throw new ConfigError("snapshotKeyring needs snapshotStore (it opens sealed snapshots of that store)");
      keyring = Keyring.load(options.snapshotKeyring);
    }
    this.#http = new Transport(bases, options.token, this.#log);
    this.metrics = new Metrics(options.metrics, this.#log);
    this.#store = new Store(options.cacheDir);
    const self = this;
    this.#core = {
      settings: this.#settings,
      http: this.#http,
      store: this.#store,
      snapshots: this.#snapshots,
      keyring,
      metrics: this.metrics,
      log: this.#log,
      decrypt: options.decrypt,
      instance: this.instance,
      labels: this.labels,
      stopSignal: this.#stop.signal,
      cacheWarned: false,
      get stopped() {
        return self.#stop.signal.aborted;
      },
      get generation() {
        return self.#generation;
      },
      live: () => [...this.#subs.values()],
      pollSignal: (gen) => this.#pollSignal(gen),
      pause: (ms, gen) => this.#pause(ms, gen),
    };
  }

  /** The servers, the first one first. */
  get urls(): readonly string[] {
    return this.#http.bases;
  }

  /** The server polled now (it moves to the next one when a poll fails). */
  get currentUrl(): string {
    return this.#http.base;
  }

  get closed(): boolean {
    return this.#stop.signal.aborted;
  }

  /** The live subscriptions. */
  subscriptions(): Subscription<unknown>[] {
    return [...this.#subs.values()];
  }

  /**
   * Subscribes to `topic`: resolves once the server answered (at most `initialWaitMs`; an
   * unreachable server is an answer), with the cached, snapshot or default value otherwise.
   * The value then follows the server.
   */
  subscribe<T = unknown>(topic: string, options: SubscribeOptions<T> & { default: T }): Promise<Subscription<T>>;
  subscribe<T = unknown>(topic: string, options?: SubscribeOptions<T>): Promise<Subscription<T | undefined>>;
  async subscribe<T>(topic: string, options: SubscribeOptions<T> = {}): Promise<Subscription<T>> {
    checkTopic(topic);
    if (options.decoder !== undefined && typeof options.decoder !== "function") throw new ConfigError("decoder must be a function");
    for (const k of Object.keys(options)) {
      if (!["default", "decoder", "file"].includes(k)) throw new ConfigError(`unknown subscribe option ${JSON.stringify(k)}`);
    }
    if (this.closed) throw new ClosedError("the client is closed");
    if (this.#subs.has(topic) || this.#starting.has(topic)) throw new ConfigError(`${JSON.stringify(topic)} is subscribed already on this client`);
    const kind = options.file ? "file" : "memory";
    const decode = (options.decoder ?? (kind === "file" ? decoders.path : decoders.json)) as Decoder<T>;
    const sub = new Subscription<T>(topic, options.default as T, decode, kind, this.#log);
    this.#starting.add(topic);
    try {
      await this.#startFromCache(sub as Subscription<unknown>);
    } finally {
      this.#starting.delete(topic);
    }
    if (this.closed) throw new ClosedError("the client is closed");
    this.#subs.set(topic, sub as Subscription<unknown>);
    this.#generation++;
    this.#pollAbort?.abort(new Aborted("a topic was subscribed")); // the next poll includes it
    for (const wake of this.#wakers) wake();
    this.#loop ??= run(this.#core).catch((e) => this.#log.error(`imprint: the poll loop stopped: ${describe(e)}`));
    await this.#waitSettled(sub as Subscription<unknown>);
    return sub;
  }

  async #waitSettled(sub: Subscription<unknown>): Promise<void> {
    if (this.#settings.initialWaitMs <= 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([sub.settledPromise, new Promise<void>((resolve) => (timer = setTimeout(resolve, this.#settings.initialWaitMs)))]);
    clearTimeout(timer);
  }

  async #startFromCache(sub: Subscription<unknown>): Promise<void> {
    const cached = await this.#store.load(sub.topic).catch((e) => ({ reason: describe(e) }));
    if (!cached) return;
    if ("reason" in cached) {
      this.#log.warn(`imprint: ignoring the damaged cache entry of ${sub.topic}: ${cached.reason}`);
      return;
    }
    const m = cached.meta;
    const u: Update = {
      version: m.version,
      pinned: false,
      metadata: m.metadata,
      content_type: m.content_type,
      size: m.size,
      sha256: m.sha256,
      data_url: `/api/v1/topics/${sub.topic}/versions/${m.version}/data`,
    };
    try {
      const fetched = sub.kind === "file" ? { path: cached.file } : { data: await fs.readFile(cached.file) };
      await applyFetched(this.#core, sub, u, fetched, "cache");
      this.#log.info(`imprint: ${sub.topic} starts from the disk cache (v${m.version})`);
    } catch (e) {
      this.#log.warn(`imprint: the cached ${sub.topic} v${m.version} is not usable; ignoring it: ${describe(e)}`);
    }
  }

  #pollSignal(gen: number): AbortSignal {
    const ctl = new AbortController();
    if (this.closed) ctl.abort(new Aborted("closed"));
    else if (this.#generation !== gen) ctl.abort(new Aborted("a topic was subscribed"));
    this.#pollAbort = ctl;
    return ctl.signal;
  }

  #pause(ms: number, gen: number): Promise<void> {
    if (this.closed || this.#generation !== gen || ms <= 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wakers.add(done);
    });
  }

  /**
   * Stops polling (aborting a download; a partial file is never used), sends the outcomes
   * not reported yet (one short poll, at most 5 s) and keeps the disk cache. Values already
   * handed out stay valid; the subscriptions' iterators end.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#stop.abort(new Aborted("the client is closed"));
    this.#pollAbort?.abort(new Aborted("the client is closed"));
    for (const wake of this.#wakers) wake();
    await this.#loop;
    const subs = [...this.#subs.values()];
    await flushReports(this.#core, subs);
    for (const s of subs) s.close();
    this.#store.discard();
  }

  toString(): string {
    return `Client(${this.#http.base}, instance=${this.instance}, topics=${this.#subs.size})`;
  }
}

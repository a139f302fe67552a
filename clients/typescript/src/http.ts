/**
 * The HTTP transport over Node's built-in fetch: the server URLs (the first, then the
 * fallbacks), the bearer token (sent to those servers only), JSON in and out with a size
 * bound, streamed bodies with a bound between two chunks, and every request bounded in
 * time and abortable from outside (close(), a new subscription abandoning a long poll).
 */
import { Aborted, ApiError, NetworkError, ProtocolError, TimeoutError, describe } from "./errors.js";
import type { Logger } from "./log.js";

export const USER_AGENT = "imprint-client-node/0.1.0";
/** The largest JSON answer read (a poll answer with many inline payloads stays far below). */
const JSON_LIMIT = 256 * 1024 * 1024;

export interface RequestOptions {
  body?: unknown;
  headers?: Record<string, string>;
  /** Bound until the answer's headers arrive (and, for `json()`, its whole body). */
  timeoutMs: number;
  /** Aborts the request from outside. */
  signal?: AbortSignal;
}

/** An answer whose status was checked (2xx); its body not read yet. */
export class Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly #res: Response;
  readonly #ctl: AbortController;
  readonly #what: string;
  #timer: NodeJS.Timeout | undefined;
  #cleanup: () => void;

  /** @internal */
  constructor(res: Response, ctl: AbortController, what: string, timer: NodeJS.Timeout | undefined, cleanup: () => void) {
    this.status = res.status;
    this.headers = res.headers;
    this.#res = res;
    this.#ctl = ctl;
    this.#what = what;
    this.#timer = timer;
    this.#cleanup = cleanup;
  }

  /** The body as JSON (bounded in size, and in time by the request's bound). */
  async json(): Promise<unknown> {
    const buf = await this.bytes(JSON_LIMIT);
    try {
      return JSON.parse(buf.toString("utf8"));
    } catch (e) {
      throw new ProtocolError(`${this.#what}: the answer is not JSON: ${describe(e)}`);
    }
  }

  /** The whole body, at most `limit` bytes. */
  async bytes(limit: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let n = 0;
    try {
      for await (const c of this.chunks(0)) {
        n += c.length;
        if (n > limit) throw new ProtocolError(`${this.#what}: answer larger than ${limit} bytes`);
        parts.push(c);
      }
    } finally {
      this.close();
    }
    return Buffer.concat(parts);
  }

  /**
   * The body in chunks. With `idleMs` > 0 the request's own bound is lifted and each
   * chunk must come within `idleMs` of the previous one instead.
   */
  async *chunks(idleMs: number): AsyncGenerator<Buffer> {
    const body = this.#res.body;
    if (!body) return;
    if (idleMs > 0 && this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    const reader = body.getReader();
    try {
      for (;;) {
        let idle: NodeJS.Timeout | undefined;
        if (idleMs > 0) {
          idle = setTimeout(() => this.#ctl.abort(new TimeoutError(`${this.#what}: no data for ${idleMs} ms`)), idleMs);
        }
        let r: { done: boolean; value?: Uint8Array };
        try {
          r = await reader.read();
        } catch (e) {
          throw wrap(e, this.#ctl.signal, `${this.#what}: reading the answer`);
        } finally {
          if (idle) clearTimeout(idle);
        }
        if (r.done) return;
        const v = r.value!;
        yield Buffer.from(v.buffer, v.byteOffset, v.byteLength);
      }
    } finally {
      reader.releaseLock();
      this.close();
    }
  }

  /** Stops reading (aborts a body still coming) and releases the timers. */
  close(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (!this.#ctl.signal.aborted) {
      // a body read to its end is finished; one read part-way is dropped
      this.#ctl.abort(new Aborted("closed"));
    }
    this.#cleanup();
  }
}

/** Turns what fetch throws into our errors (the abort reason when we aborted it). */
function wrap(e: unknown, signal: AbortSignal, what: string): Error {
  if (signal.aborted && signal.reason instanceof Error && (signal.reason instanceof NetworkError || signal.reason instanceof Aborted)) {
    return signal.reason;
  }
  if (e instanceof NetworkError || e instanceof Aborted || e instanceof ApiError) return e;
  return new NetworkError(`${what}: ${describe(e)}`, { cause: e });
}

export function parseRetryAfter(v: string | null): number | undefined {
  if (!v) return undefined;
  const s = v.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Math.max(0, Number(s) * 1000);
  const at = Date.parse(s); // an HTTP date (Imprint sends seconds)
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/** `{"error": {code, message}}` of a failed answer, or a short text of whatever it was. */
export function errorFields(status: number, body: Buffer): [string, string] {
  try {
    const e = JSON.parse(body.toString("utf8")).error;
    if (e && typeof e.code === "string") return [e.code, String(e.message ?? "")];
  } catch {
    // not the envelope: fall through
  }
  const text = body.toString("utf8").trim().slice(0, 300);
  return ["http_error", text ? `HTTP ${status}: ${text}` : `HTTP ${status}`];
}

export class Transport {
  readonly bases: readonly string[];
  readonly #token: string | undefined;
  readonly #log: Logger;
  #current = 0;

  constructor(bases: string[], token: string | undefined, log: Logger) {
    this.bases = bases;
    this.#token = token || undefined;
    this.#log = log;
  }

  /** The server polled now. */
  get base(): string {
    return this.bases[this.#current] ?? this.bases[0]!;
  }

  /** After a failed poll: the next server, if there are several (wrapping around). */
  failOver(): void {
    if (this.bases.length > 1) {
      this.#current = (this.#current + 1) % this.bases.length;
      this.#log.warn(`imprint: trying the next server, ${this.base}`);
    }
  }

  /** Whether `url` is on one of the configured servers (the whole origin and path prefix). */
  isOurs(url: string): boolean {
    return this.bases.some((b) => url.startsWith(b) && (url.length === b.length || "/?#".includes(url[b.length]!)));
  }

  url(pathOrUrl: string): string {
    return /^https?:\/\//i.test(pathOrUrl) ? pathOrUrl : this.base + pathOrUrl;
  }

  /** Sends one request; a non-2xx answer throws ApiError (with its Retry-After). */
  async request(method: string, pathOrUrl: string, o: RequestOptions): Promise<Answer> {
    const url = this.url(pathOrUrl);
    const what = `${method} ${url}`;
    const headers: Record<string, string> = { "user-agent": USER_AGENT, accept: "application/json, */*", ...o.headers };
    if (this.#token && this.isOurs(url)) headers.authorization = `Bearer ${this.#token}`;
    let body: string | undefined;
    if (o.body !== undefined) {
      body = JSON.stringify(o.body);
      headers["content-type"] = "application/json";
    }
    const ctl = new AbortController();
    const outer = o.signal;
    const onOuter = () => ctl.abort(outer?.reason instanceof Error ? outer.reason : new Aborted("aborted"));
    if (outer) {
      if (outer.aborted) throw outer.reason instanceof Error ? outer.reason : new Aborted("aborted");
      outer.addEventListener("abort", onOuter, { once: true });
    }
    const cleanup = () => outer?.removeEventListener("abort", onOuter);
    const timer = setTimeout(() => ctl.abort(new TimeoutError(`${what}: no answer within ${o.timeoutMs} ms`)), o.timeoutMs);
    let res: Response;
    try {
      res = await fetch(url, { method, headers, body, signal: ctl.signal, redirect: "follow" });
    } catch (e) {
      clearTimeout(timer);
      cleanup();
      throw wrap(e, ctl.signal, what);
    }
    const answer = new Answer(res, ctl, what, timer, cleanup);
    if (res.status >= 200 && res.status < 300) return answer;
    const retryAfterMs = parseRetryAfter(res.headers.get("retry-after"));
    let text: Buffer;
    try {
      text = await answer.bytes(64 * 1024);
    } catch {
      text = Buffer.alloc(0);
    }
    const [code, message] = errorFields(res.status, text);
    throw new ApiError(res.status, code, message, retryAfterMs);
  }
}

/**
 * A subscription: the value the application reads (swapped whole, never blocking), where
 * it came from, the `change` events and async iterators of its changes, and the poller's
 * bookkeeping for the topic (the outcome to report, the rejected version, whether the
 * first answer came).
 */
import { EventEmitter } from "node:events";
import type { Logger } from "./log.js";

/** Where the value being served came from. */
export type Source = "server" | "cache" | "snapshot" | "default";

/** Value, version, source, checksum, pinned flag and served region of one moment, read together. */
export interface Held<T> {
  readonly value: T;
  /** The version held (whatever its source); `null` while serving the default. */
  readonly version: number | null;
  readonly source: Source;
  readonly sha256: string | null;
  readonly pinned: boolean;
  /**
   * The region whose copy was downloaded (a server with several regions, docs/regions.md);
   * `null` for inline payloads, one region, the cache, the snapshot and the default.
   */
  readonly region: string | null;
}

/** One verified version, as a decoder sees it. */
export interface Payload {
  readonly topic: string;
  readonly version: number;
  readonly sha256: string;
  readonly size: number;
  readonly contentType: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly pinned: boolean;
  readonly source: Exclude<Source, "default">;
  /** The region whose copy was downloaded (see `Held.region`), else `null`. */
  readonly region: string | null;
  /** The bytes (memory subscriptions). */
  readonly data?: Buffer;
  /** The verified file in the cache directory (`file: true` subscriptions). */
  readonly path?: string;
}

/** Turns a verified payload into the value; a throw (or a rejected promise) keeps the old value. */
export type Decoder<T> = (payload: Payload) => T | Promise<T>;

/** A version that did not apply (the `rejected` event). */
export interface Rejection {
  readonly topic: string;
  readonly version: number;
  readonly error: string;
}

export interface ChangesOptions {
  /** Ends the iteration when aborted. */
  signal?: AbortSignal;
  /** Changes kept while the consumer is busy; the oldest are dropped beyond it (default 64). */
  buffer?: number;
}

/** @internal */
export interface Report {
  version: number;
  ok: boolean;
  error?: string;
  /** The region whose copy was downloaded (docs/regions.md). */
  region?: string;
}

/** @internal The poller's view of a subscription. */
export interface SlotState {
  report: Report | undefined;
  rejected: { version: number; pinned: boolean } | undefined;
  /** Only the rejected version is on offer: short polls at the recheck interval. */
  stuck: boolean;
  snapshotTried: boolean;
  settled: boolean;
}

export interface Subscription<T> {
  on(event: "change", listener: (value: T, held: Held<T>) => void): this;
  on(event: "rejected", listener: (rejection: Rejection) => void): this;
  on(event: "close", listener: () => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
  once(event: "change", listener: (value: T, held: Held<T>) => void): this;
  once(event: "rejected", listener: (rejection: Rejection) => void): this;
  once(event: "close", listener: () => void): this;
  once(event: string | symbol, listener: (...args: any[]) => void): this;
  off(event: "change", listener: (value: T, held: Held<T>) => void): this;
  off(event: "rejected", listener: (rejection: Rejection) => void): this;
  off(event: "close", listener: () => void): this;
  off(event: string | symbol, listener: (...args: any[]) => void): this;
}

/**
 * What `Client.subscribe` returns. `get()` never blocks and never throws: the current
 * value or the default. Events: `change` (value, held) after each swap, `rejected`
 * (a version that did not verify or decode; the old value stays), `close` (the client closed).
 */
export class Subscription<T> extends EventEmitter {
  readonly topic: string;
  /** @internal */ readonly kind: "memory" | "file";
  /** @internal */ readonly state: SlotState = {
    report: undefined,
    rejected: undefined,
    stuck: false,
    snapshotTried: false,
    settled: false,
  };
  #held: Held<T>;
  readonly #decode: Decoder<T>;
  readonly #log: Logger;
  #closed = false;
  #settle!: () => void;
  /** @internal Resolves on the first answer of the server (or the first failure to reach it). */
  readonly settledPromise: Promise<void>;

  /** @internal */
  constructor(topic: string, initial: T, decode: Decoder<T>, kind: "memory" | "file", log: Logger) {
    super();
    this.setMaxListeners(0); // every iterator and nextChange() listens; each removes itself
    this.topic = topic;
    this.kind = kind;
    this.#held = Object.freeze({ value: initial, version: null, source: "default", sha256: null, pinned: false, region: null });
    this.#decode = decode;
    this.#log = log;
    this.settledPromise = new Promise((resolve) => (this.#settle = resolve));
  }

  /** The current value (or the default): a plain read, never blocking. */
  get(): T {
    return this.#held.value;
  }

  /** Value, version, source, checksum and pinned flag of one moment. */
  current(): Held<T> {
    return this.#held;
  }

  /** The version held (whatever its source), `null` while serving the default. */
  get version(): number | null {
    return this.#held.version;
  }

  get source(): Source {
    return this.#held.source;
  }

  get pinned(): boolean {
    return this.#held.pinned;
  }

  /** The region whose copy of the held version was downloaded (`Held.region`). */
  get servedRegion(): string | null {
    return this.#held.region;
  }

  /** True once the client is closed: no more changes will come. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * The values swapped in from now on, as an async iterator (`for await (const v of
   * sub.changes())`); it ends when the client closes, `signal` aborts, or the loop breaks.
   */
  changes(options: ChangesOptions = {}): AsyncIterableIterator<T> {
    const limit = Math.max(1, options.buffer ?? 64);
    const queue: T[] = [];
    let waiting: ((r: IteratorResult<T>) => void) | undefined;
    let done = this.#closed;
    const finish = () => {
      if (done) return;
      done = true;
      this.off("change", onChange);
      this.off("close", finish);
      options.signal?.removeEventListener("abort", finish);
      if (waiting) {
        const w = waiting;
        waiting = undefined;
        w({ value: undefined, done: true });
      }
    };
    const onChange = (value: T) => {
      if (waiting) {
        const w = waiting;
        waiting = undefined;
        w({ value, done: false });
        return;
      }
      queue.push(value);
      if (queue.length > limit) queue.shift();
    };
    if (!done) {
      this.on("change", onChange);
      this.on("close", finish);
      if (options.signal?.aborted) finish();
      else options.signal?.addEventListener("abort", finish, { once: true });
    }
    const it: AsyncIterableIterator<T> = {
      next: () => {
        if (queue.length > 0) return Promise.resolve({ value: queue.shift()!, done: false });
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise<IteratorResult<T>>((resolve) => (waiting = resolve));
      },
      return: () => {
        finish();
        queue.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return it;
      },
    };
    return it;
  }

  /** `for await (const value of subscription)`: the same as `changes()`. */
  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this.changes();
  }

  /** Resolves with the next value swapped in; rejects after `timeoutMs` (if given) or when the client closes. */
  nextChange(timeoutMs?: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onChange = (v: T) => {
        cleanup();
        resolve(v);
      };
      const onClose = () => {
        cleanup();
        reject(new Error(`the client of ${this.topic} was closed`));
      };
      const cleanup = () => {
        if (timer) clearTimeout(timer);
        this.off("change", onChange);
        this.off("close", onClose);
      };
      if (this.#closed) return onClose();
      this.on("change", onChange);
      this.on("close", onClose);
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          cleanup();
          reject(new Error(`no change of ${this.topic} within ${timeoutMs} ms`));
        }, timeoutMs);
      }
    });
  }

  // ------------------------------------------------------------ the poller's side ----

  /** @internal */
  decode(p: Payload): T | Promise<T> {
    return this.#decode(p);
  }

  /** @internal Replaces the value (readers see the old one or the new one) and tells the listeners. */
  swap(held: Held<T>): void {
    this.#held = Object.freeze({ ...held });
    this.#tell("change", held.value, this.#held);
  }

  /** @internal The server says what we hold is current: its source becomes the server. */
  confirm(): void {
    const h = this.#held;
    if (h.version !== null && h.source !== "server") this.#held = Object.freeze({ ...h, source: "server" });
  }

  /** @internal */
  rejected(r: Rejection): void {
    this.#tell("rejected", r);
  }

  /** @internal */
  settle(): void {
    if (!this.state.settled) {
      this.state.settled = true;
      this.#settle();
    }
  }

  /** @internal */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.settle();
    this.#tell("close");
  }

  /** Calls each listener; one that throws is logged and does not stop the others or the client. */
  #tell(event: string, ...args: unknown[]): void {
    for (const fn of this.rawListeners(event) as ((...a: unknown[]) => void)[]) {
      try {
        fn.apply(this, args);
      } catch (e) {
        this.#log.error(`imprint: a ${event} listener of ${this.topic} threw: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
      }
    }
  }
}

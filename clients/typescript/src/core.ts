/** @internal What the client shares with its poller and delivery code. */
import type { Store } from "./cache.js";
import type { Transport } from "./http.js";
import type { Logger } from "./log.js";
import type { Metrics } from "./metrics.js";
import type { Keyring } from "./sealed.js";
import type { SnapshotStore } from "./snapshot.js";
import type { Subscription } from "./subscription.js";

export interface Settings {
  initialWaitMs: number;
  longPollMs: number;
  requestTimeoutMs: number;
  backoffMinMs: number;
  backoffMaxMs: number;
  clientErrorRetryMs: number;
  startupFallback: number;
  recheckRejectedMs: number;
}

export interface Core {
  readonly settings: Settings;
  readonly http: Transport;
  readonly store: Store;
  readonly snapshots: SnapshotStore | undefined;
  /** `ClientOptions.snapshotKeyring`, read: opens sealed snapshots. */
  readonly keyring: Keyring | undefined;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** `ClientOptions.decrypt`, for end-to-end encrypted topics. */
  readonly decrypt: ((topic: string, ciphertext: Uint8Array) => Promise<Uint8Array> | Uint8Array) | undefined;
  readonly instance: string;
  readonly labels: Readonly<Record<string, string>>;
  /** Aborted by close(): every request and download stops. */
  readonly stopSignal: AbortSignal;
  readonly stopped: boolean;
  /** Bumped by every new subscription. */
  readonly generation: number;
  cacheWarned: boolean;
  live(): Subscription<unknown>[];
  /** A signal aborted when the client stops or a topic is subscribed after `generation`. */
  pollSignal(generation: number): AbortSignal;
  /** Sleeps `ms`, or less when the client stops or a topic is subscribed after `generation`. */
  pause(ms: number, generation: number): Promise<void>;
}

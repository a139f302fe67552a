/**
 * Imprint's TypeScript/Node consumer client. A node subscribes to topics and always holds
 * a valid, recent value of each: one background long poll for all of a client's
 * subscriptions fetches and verifies each update, decodes it with your function, swaps the
 * value in and reports the outcome to the server. The protocol is docs/protocol.md of the
 * Imprint repository; the Rust `imprint-client` is the reference implementation.
 */
export { Client, decoders, type ClientOptions, type DecryptFn, type SubscribeOptions } from "./client.js";
export { Subscription, type ChangesOptions, type Decoder, type Held, type Payload, type Rejection, type Source } from "./subscription.js";
export { ApiError, ClosedError, ConfigError, ImprintError, NetworkError, ProtocolError, TimeoutError, VerifyError } from "./errors.js";
export { Metrics, type MetricSample, type MetricsHook } from "./metrics.js";
export { defaultLogger, silentLogger, type Logger } from "./log.js";
export { fileSnapshotStore, type SnapshotStore } from "./snapshot.js";
export { fileName as cacheFileName } from "./cache.js";

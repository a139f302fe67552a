/**
 * Metrics under the Rust client's names, kept in memory (`client.metrics.get(...)`,
 * `client.metrics.snapshot()`) and handed to an optional hook, e.g. to feed prom-client
 * or StatsD: `new Client({ ..., metrics: (name, value, labels) => ... })`.
 *
 * - `imprint_client_version{topic}` gauge: version held
 * - `imprint_client_last_poll_success_seconds` gauge: unix time of the last successful poll
 * - `imprint_client_apply_failures_total{topic}` counter
 * - `imprint_client_poll_errors_total{kind}` counter: `network`, `server`, `client`, `download`
 * - `imprint_client_updates_applied_total{topic}` counter
 */
import type { Logger } from "./log.js";

/** Called with every new value of a metric (a counter's running total, a gauge's value). */
export type MetricsHook = (name: string, value: number, labels: Readonly<Record<string, string>>) => void;

export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function key(name: string, labels: Record<string, string>): string {
  const parts = Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`);
  return `${name}{${parts.join(",")}}`;
}

export class Metrics {
  readonly #values = new Map<string, MetricSample>();
  readonly #hook: MetricsHook | undefined;
  readonly #log: Logger;

  /** @internal */
  constructor(hook: MetricsHook | undefined, log: Logger) {
    this.#hook = hook;
    this.#log = log;
  }

  #emit(s: MetricSample): void {
    if (!this.#hook) return;
    try {
      this.#hook(s.name, s.value, { ...s.labels });
    } catch (e) {
      this.#log.error(`imprint: the metrics hook threw: ${String(e)}`);
    }
  }

  /** @internal */
  gauge(name: string, value: number, labels: Record<string, string> = {}): void {
    const s = { name, labels: { ...labels }, value };
    this.#values.set(key(name, labels), s);
    this.#emit(s);
  }

  /** @internal */
  count(name: string, labels: Record<string, string> = {}): void {
    const k = key(name, labels);
    const s = { name, labels: { ...labels }, value: (this.#values.get(k)?.value ?? 0) + 1 };
    this.#values.set(k, s);
    this.#emit(s);
  }

  /** The current value of a metric (0 when it was never set). */
  get(name: string, labels: Record<string, string> = {}): number {
    return this.#values.get(key(name, labels))?.value ?? 0;
  }

  /** Every metric set so far. */
  snapshot(): MetricSample[] {
    return [...this.#values.values()].map((s) => ({ ...s, labels: { ...s.labels } }));
  }
}

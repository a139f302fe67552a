/** The rules the server applies to names, written once for the client's own checks. */
import { ConfigError } from "./errors.js";

const TOPIC = /^[a-z0-9][a-z0-9._-]{0,127}$/;
const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;
const MAX_LABELS = 32;
const MAX_LABEL_BYTES = 4096;

/** A topic name as the server checks it: 1-128 of a-z, 0-9, '.', '_', '-', starting with a letter or digit. */
export function isValidTopic(topic: unknown): topic is string {
  return typeof topic === "string" && TOPIC.test(topic);
}

export function checkTopic(topic: unknown): string {
  if (!isValidTopic(topic)) {
    throw new ConfigError(
      `invalid topic name ${JSON.stringify(topic)}: topic names are 1-128 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit`,
    );
  }
  return topic;
}

function validValue(v: string): boolean {
  // 1-256 characters, no whitespace, control characters, ',', '=' or '*'
  return v.length > 0 && [...v].length <= 256 && !/[\s\p{Cc},=*]/u.test(v);
}

/** The node's labels as the server checks them (the domain's `Labels`). */
export function checkLabels(labels: unknown): Record<string, string> {
  if (labels === undefined || labels === null) return {};
  if (typeof labels !== "object" || Array.isArray(labels)) {
    throw new ConfigError("labels must be an object of string values, e.g. { region: \"eu-west-1\" }");
  }
  const out: Record<string, string> = {};
  let bytes = 0;
  const entries = Object.entries(labels as Record<string, unknown>);
  if (entries.length > MAX_LABELS) throw new ConfigError(`at most ${MAX_LABELS} labels (got ${entries.length})`);
  for (const [k, v] of entries) {
    if (!LABEL_KEY.test(k)) {
      throw new ConfigError(
        `label key ${JSON.stringify(k)} is invalid: keys start with a letter or digit and contain only letters, digits, '.', '_', '-' or '/' (at most 63 characters)`,
      );
    }
    if (typeof v !== "string" || !validValue(v)) {
      throw new ConfigError(
        `label value ${JSON.stringify(v)} for key ${JSON.stringify(k)} is invalid: values are 1 to 256 characters without ',', '=', '*' or whitespace`,
      );
    }
    bytes += Buffer.byteLength(k) + Buffer.byteLength(v);
    out[k] = v;
  }
  if (bytes > MAX_LABEL_BYTES) throw new ConfigError(`labels take at most ${MAX_LABEL_BYTES} bytes (keys and values together)`);
  return out;
}

export function checkInstance(instance: unknown): string {
  if (typeof instance !== "string" || instance.length === 0 || instance.length > 256 || /\p{Cc}/u.test(instance)) {
    throw new ConfigError("the instance name must be 1-256 characters without control characters");
  }
  return instance;
}

/** A server URL without its trailing slash; http:// or https:// only. */
export function checkServerUrl(url: unknown): string {
  if (typeof url !== "string") throw new ConfigError(`server URL ${JSON.stringify(url)}: not a string`);
  const base = url.trim().replace(/\/+$/, "");
  let parsed: URL;
  try {
    parsed = new URL(base);
  } catch {
    throw new ConfigError(`server URL ${JSON.stringify(url)}: not a URL (use http://host[:port] or https://…)`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new ConfigError(`server URL ${JSON.stringify(url)} must be http:// or https://`);
  }
  if (parsed.search || parsed.hash) throw new ConfigError(`server URL ${JSON.stringify(url)}: no query or fragment`);
  return base;
}

/** A duration setting in milliseconds: a finite number within [min, max]. */
export function checkMs(name: string, v: unknown, fallback: number, min: number, max: number): number {
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) {
    throw new ConfigError(`${name} must be a number of milliseconds within ${min}..${max} (got ${JSON.stringify(v)})`);
  }
  return v;
}

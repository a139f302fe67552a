/**
 * The errors the client tells apart: a bad setting (ConfigError), the server refused
 * (ApiError), it could not be reached or did not answer in time (NetworkError,
 * TimeoutError), a payload did not match its size or checksum (VerifyError), an answer
 * that is not what the protocol says (ProtocolError), a closed client (ClosedError).
 */

/** Base of every error this package throws. */
export class ImprintError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A setting the client cannot work with (thrown by the constructor and `subscribe`). */
export class ConfigError extends ImprintError {}

/** `subscribe` on a client that was closed. */
export class ClosedError extends ImprintError {}

/** Connection refused or reset, a broken answer: worth trying again. */
export class NetworkError extends ImprintError {}

/** No answer (or no data) within the request's bound. */
export class TimeoutError extends NetworkError {}

/** The server answered with an error status (its `{"error": {code, message}}`). */
export class ApiError extends ImprintError {
  readonly status: number;
  readonly code: string;
  readonly detail: string;
  /** The answer's `Retry-After`, in milliseconds, when it sent one. */
  readonly retryAfterMs: number | undefined;

  constructor(status: number, code: string, detail: string, retryAfterMs?: number) {
    super(`${detail} (${code}, HTTP ${status})`);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfterMs = retryAfterMs;
  }

  /** 5xx, 429 and 408 are retried with backoff; other 4xx slowly (a refused token…). */
  get transient(): boolean {
    return this.status >= 500 || this.status === 429 || this.status === 408;
  }
}

/** A payload whose size or SHA-256 is not what the update announced. */
export class VerifyError extends ImprintError {}

/** An answer that does not follow the protocol (not JSON, a field of the wrong type…). */
export class ProtocolError extends ImprintError {}

/** @internal This version will not do (does not verify, does not decode): reported as failed. */
export class Rejected extends ImprintError {}

/** @internal The request was abandoned on purpose (client closed, a new subscription). */
export class Aborted extends ImprintError {}

/** @internal Whether a failure is worth retrying after a backoff. */
export function isTransient(e: unknown): boolean {
  if (e instanceof ApiError) return e.transient;
  if (e instanceof NetworkError) return true;
  if (e instanceof ImprintError) return false;
  // Node's file-system errors (a full disk, a vanished directory) carry a string code.
  return typeof (e as { code?: unknown })?.code === "string";
}

/** @internal A short description of any thrown value. */
export function describe(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause;
    const detail = cause instanceof Error ? `: ${(cause as { code?: string }).code ?? cause.message}` : "";
    return e instanceof ImprintError ? e.message : `${e.name}: ${e.message}${detail}`;
  }
  return String(e);
}

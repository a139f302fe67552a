/**
 * Logging: a `Logger` (console-like: `debug`, `info`, `warn`, `error`) given in the
 * client's options, or the default one, which writes to stderr the levels at or above
 * `IMPRINT_LOG` (`debug`, `info`, `warn` — the default —, `error`, `off`).
 */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

const LEVELS = ["debug", "info", "warn", "error", "off"] as const;

/** The default logger, filtered by `IMPRINT_LOG` (read once, when the client is built). */
export function defaultLogger(level: string | undefined = process.env.IMPRINT_LOG): Logger {
  const wanted = (LEVELS as readonly string[]).indexOf((level ?? "warn").toLowerCase());
  const min = wanted < 0 ? 2 : wanted;
  const at = (i: number) => (message: string) => {
    if (i >= min) process.stderr.write(`${new Date().toISOString()} ${LEVELS[i]} ${message}\n`);
  };
  return { debug: at(0), info: at(1), warn: at(2), error: at(3) };
}

/** A logger that says nothing. */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

// Structured JSON logging, one object per line on stdout; the logger masks anything that
// looks like a credential so that no token, code, secret or cookie reaches a log line.
import { DrizzleQueryError } from "drizzle-orm/errors";

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  child(fields: LogFields): Logger;
  /** Whether a line at `level` would be written: lets a hot path skip building fields nobody reads. */
  enabled(level: LogLevel): boolean;
}

const SECRET_KEY = /token|secret|password|code|cookie|authorization|verifier|state|csrf|key/i;
// Our token prefixes, Forgejo's personal and OAuth tokens (the latter are JWTs), bearer credentials.
const SECRET_VALUE = /\b(fmb_(?:at|rt|code|cs|state|csrf)_[A-Za-z0-9_-]{10,}|gt[a-z]_[A-Za-z0-9_-]{10,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_.-]+|Bearer\s+\S+)/g;

/** Masks credential-shaped substrings in free text (child stderr, error messages). */
export function maskSecrets(text: string): string {
  return text.replace(SECRET_VALUE, (match) => (match.startsWith("Bearer") ? "Bearer ***" : `${match.slice(0, 7)}***`));
}

function scrub(fields: LogFields): LogFields {
  const out: LogFields = {};
  for (const [key, value] of Object.entries(fields)) {
    if (SECRET_KEY.test(key) && !/^(status|status_code|error_code)$/.test(key) && typeof value === "string") {
      out[key] = "***";
    } else if (typeof value === "string") {
      out[key] = maskSecrets(value);
    } else if (value instanceof DrizzleQueryError) {
      // Its message holds the statement's parameters (token hashes, sealed tokens): only the database's own reason is logged.
      out[key] = maskSecrets(`database query failed: ${value.cause?.message ?? "no reason given"}`);
    } else if (value instanceof Error) {
      out[key] = maskSecrets(value.message);
    } else {
      out[key] = value;
    }
  }
  return out;
}

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export function createLogger(
  options: { level?: LogLevel; write?: (line: string) => void; base?: LogFields } = {},
): Logger {
  const min = ORDER[options.level ?? "info"];
  const write = options.write ?? ((line: string) => process.stdout.write(line + "\n"));
  const base = options.base ?? {};
  const emit = (level: LogLevel, msg: string, fields?: LogFields) => {
    if (ORDER[level] < min) return;
    write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...scrub({ ...base, ...fields }) }));
  };
  return {
    debug: (msg, fields) => emit("debug", msg, fields),
    info: (msg, fields) => emit("info", msg, fields),
    warn: (msg, fields) => emit("warn", msg, fields),
    error: (msg, fields) => emit("error", msg, fields),
    child: (fields) => createLogger({ ...options, base: { ...base, ...fields } }),
    enabled: (level) => ORDER[level] >= min,
  };
}

/** A logger that keeps its lines, for tests that assert what was (and was not) logged. */
export function createMemoryLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return Object.assign(createLogger({ level: "debug", write: (line) => lines.push(line) }), { lines });
}

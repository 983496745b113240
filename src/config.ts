// Reads the broker's configuration from the environment and validates all of it at once,
// so a misconfigured start-up prints one clear line per problem instead of failing later.
import type { LogLevel } from "./log.ts";
import { parseAddressBlock, type AddressBlock } from "./http/client-address.ts";
import type { SandboxConfig } from "./supervisor/sandbox.ts";

export interface BrokerConfig {
  /** Issuer and resource base, without a trailing slash. Never derived from the Host header. */
  publicUrl: string;
  /** The protected resource: publicUrl + "/mcp". */
  resourceUrl: string;
  host: string;
  port: number;
  dataDir: string;
  /** 32 bytes when given by BROKER_SEALING_KEY; otherwise generated under dataDir. */
  sealingKey: Uint8Array | null;
  forgejo: {
    url: string;
    clientId: string;
    clientSecret: string;
    scopes: string[];
    /** How long the broker waits for each answer from Forgejo before it tells its own caller to retry. */
    timeoutMs: number;
  };
  child: ChildConfig;
  sessions: SessionConfig;
  logLevel: LogLevel;
  inFlight: InFlightLimits;
  /** Reverse proxies whose X-Forwarded-For is believed when keying rate limits; none by default. */
  trustedProxies: AddressBlock[];
}

export interface InFlightLimits {
  /** Requests in flight on one session. */
  perSession: number;
  /** Requests in flight and open GET streams of one Forgejo user, over all their sessions and clients. */
  perUser: number;
}

export interface ChildConfig {
  /** argv, split without a shell. */
  command: string[];
  urlEnv: string;
  tokenEnv: string;
  passthroughEnv: string[];
  stopGraceMs: number;
  /** How each child is wrapped: bubblewrap by default, or explicitly nothing. */
  sandbox: SandboxConfig;
}

export interface SessionConfig {
  maxSessions: number;
  maxSessionsPerUser: number;
  idleTimeoutMs: number;
  refreshLeadMs: number;
  requestTimeoutMs: number;
  maxMessageBytes: number;
  allowedOrigins: string[];
}

/** Forgejo ignores a changed scope string once an app holds a grant, so this stays constant. */
export const DEFAULT_FORGEJO_SCOPES =
  "read:user write:repository write:issue read:organization read:notification";

const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

export type ConfigResult = { ok: true; config: BrokerConfig } | { ok: false; problems: string[] };

type Env = Record<string, string | undefined>;

export function loadConfig(env: Env): ConfigResult {
  const problems: string[] = [];
  const get = (name: string) => {
    const value = env[name]?.trim();
    return value === undefined || value === "" ? undefined : value;
  };
  const problem = (name: string, what: string, example: string) =>
    problems.push(`${name}: ${what} (example: ${name}=${example})`);

  const absoluteUrl = (name: string, fallback: string | undefined, example: string): string => {
    const raw = get(name) ?? fallback;
    if (raw === undefined) {
      problem(name, "is required", example);
      return "";
    }
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      problem(name, `is not an absolute URL: ${JSON.stringify(raw)}`, example);
      return "";
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      problem(name, `must be an http or https URL, got ${url.protocol}`, example);
    } else if (url.search || url.hash || url.username || url.password) {
      problem(name, "must not carry a query, fragment or credentials", example);
    }
    return url.href.replace(/\/+$/, "");
  };

  const integer = (name: string, fallback: number, min: number, max: number, example: string) => {
    const raw = get(name);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < min || value > max) {
      problem(name, `must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`, example);
      return fallback;
    }
    return value;
  };

  const required = (name: string, example: string) => {
    const value = get(name);
    if (value === undefined) problem(name, "is required", example);
    return value ?? "";
  };

  const envName = (name: string, fallback: string) => {
    const value = get(name) ?? fallback;
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(value)) {
      problem(name, `is not an environment variable name: ${JSON.stringify(value)}`, fallback);
    }
    return value;
  };

  const publicUrl = absoluteUrl("BROKER_PUBLIC_URL", "http://127.0.0.1:8080", "https://mcp.example.com");
  const host = get("BROKER_HOST") ?? "127.0.0.1";
  const port = integer("BROKER_PORT", 8080, 0, 65535, "8080");
  const dataDir = get("BROKER_DATA_DIR") ?? "./data";

  let sealingKey: Uint8Array | null = null;
  const rawKey = get("BROKER_SEALING_KEY");
  if (rawKey !== undefined) {
    const decoded = /^[A-Za-z0-9+/]+={0,2}$/.test(rawKey) ? Buffer.from(rawKey, "base64") : null;
    if (decoded === null || decoded.length !== 32) {
      problem("BROKER_SEALING_KEY", "must be 32 bytes in base64 (openssl rand -base64 32)", "q0S3…(44 characters)=");
    } else {
      sealingKey = new Uint8Array(decoded);
    }
  }

  const forgejoUrl = absoluteUrl("FORGEJO_URL", undefined, "https://codeberg.org");
  const clientId = required("FORGEJO_CLIENT_ID", "3f2c…-uuid-of-the-oauth2-application");
  const clientSecret = required("FORGEJO_CLIENT_SECRET", "gto_…");
  const scopes = (get("FORGEJO_SCOPES") ?? DEFAULT_FORGEJO_SCOPES).split(/\s+/).filter(Boolean);
  const forgejoTimeoutMs = integer("FORGEJO_TIMEOUT_S", 20, 1, 600, "20") * 1000;

  const commandLine = get("BROKER_CHILD_COMMAND") ?? "forgejo-mcp --transport stdio";
  const command = splitCommandLine(commandLine);
  if (command === null || command.length === 0) {
    problem("BROKER_CHILD_COMMAND", "is not a command line (unbalanced quotes?)", "\"forgejo-mcp --transport stdio\"");
  }
  const passthroughEnv = (get("BROKER_CHILD_ENV_PASSTHROUGH") ?? "").split(/[\s,]+/).filter(Boolean);
  for (const name of passthroughEnv) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      problem("BROKER_CHILD_ENV_PASSTHROUGH", `has a bad variable name ${JSON.stringify(name)}`, "HOME,LANG");
    } else if (isBrokerSecretName(name)) {
      problem("BROKER_CHILD_ENV_PASSTHROUGH", `must not hand the broker's own ${JSON.stringify(name)} to children`, "HOME,LANG");
    }
  }

  const urlEnv = envName("BROKER_CHILD_URL_ENV", "FORGEJO_URL");
  const tokenEnv = envName("BROKER_CHILD_TOKEN_ENV", "FORGEJO_ACCESS_TOKEN");
  const stopGraceMs = integer("BROKER_CHILD_STOP_GRACE_S", 5, 0, 600, "5") * 1000;
  const sandboxKind = get("BROKER_CHILD_SANDBOX") ?? "bwrap";
  if (sandboxKind !== "bwrap" && sandboxKind !== "none") {
    problem("BROKER_CHILD_SANDBOX", `must be bwrap or none, got ${JSON.stringify(sandboxKind)}`, "bwrap");
  }
  const sandboxBind = (get("BROKER_CHILD_SANDBOX_BIND") ?? "").split(",").map((path) => path.trim()).filter(Boolean);
  for (const path of sandboxBind) {
    if (!path.startsWith("/")) problem("BROKER_CHILD_SANDBOX_BIND", `has ${JSON.stringify(path)}, which is not an absolute path`, "/usr/local/lib/node_modules,/etc/ssl");
  }
  const sessions = {
    maxSessions: integer("BROKER_MAX_SESSIONS", 1000, 1, 1_000_000, "1000"),
    maxSessionsPerUser: integer("BROKER_MAX_SESSIONS_PER_USER", 20, 1, 1_000_000, "20"),
    idleTimeoutMs: integer("BROKER_IDLE_TIMEOUT_S", 900, 1, 86_400 * 7, "900") * 1000,
    refreshLeadMs: integer("BROKER_REFRESH_LEAD_S", 300, 0, 86_400, "300") * 1000,
    requestTimeoutMs: integer("BROKER_REQUEST_TIMEOUT_S", 300, 1, 86_400, "300") * 1000,
    maxMessageBytes: integer("BROKER_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, 1024, 1024 ** 3, "4194304"),
  };

  const inFlight = {
    perSession: integer("BROKER_MAX_IN_FLIGHT", 32, 1, 100_000, "32"),
    perUser: integer("BROKER_MAX_IN_FLIGHT_PER_USER", 64, 1, 1_000_000, "64"),
  };

  const allowedOrigins = (get("BROKER_ALLOWED_ORIGINS") ?? "").split(/[\s,]+/).filter(Boolean);
  for (const origin of allowedOrigins) {
    if (!URL.canParse(origin) || new URL(origin).origin !== origin) {
      problem("BROKER_ALLOWED_ORIGINS", `has ${JSON.stringify(origin)}, which is not an origin`, "https://claude.ai");
    }
  }

  // Upper case (INFO) is how many tools spell levels: accepted and normalised; anything else is refused.
  const rawLogLevel = get("BROKER_LOG_LEVEL") ?? "info";
  const logLevel = LOG_LEVELS.find((level) => level === rawLogLevel.toLowerCase());
  if (logLevel === undefined) problem("BROKER_LOG_LEVEL", `must be one of ${LOG_LEVELS.join(", ")}, got ${JSON.stringify(rawLogLevel)}`, "info");
  const trustedProxies: AddressBlock[] = [];
  for (const entry of (get("BROKER_TRUSTED_PROXIES") ?? "").split(/[\s,]+/).filter(Boolean)) {
    const block = parseAddressBlock(entry);
    if (block === undefined) {
      problem("BROKER_TRUSTED_PROXIES", `has ${JSON.stringify(entry)}, which is not an IP address or CIDR block (host bits must be zero)`, "127.0.0.1,10.0.0.0/8,fd00::/8");
    } else {
      trustedProxies.push(block);
    }
  }

  if (problems.length > 0) return { ok: false, problems };

  return {
    ok: true,
    config: {
      publicUrl,
      resourceUrl: `${publicUrl}/mcp`,
      host,
      port,
      dataDir,
      sealingKey,
      forgejo: { url: forgejoUrl, clientId, clientSecret, scopes, timeoutMs: forgejoTimeoutMs },
      child: {
        command: command ?? [],
        urlEnv,
        tokenEnv,
        passthroughEnv,
        stopGraceMs,
        sandbox: { kind: sandboxKind === "none" ? "none" : "bwrap", bind: sandboxBind },
      },
      sessions: {
        ...sessions,
        allowedOrigins: allowedOrigins.length > 0 ? allowedOrigins : [new URL(publicUrl).origin],
      },
      logLevel: logLevel ?? "info",
      inFlight,
      trustedProxies,
    },
  };
}

/**
 * The broker's own configuration, whose secrets (BROKER_SEALING_KEY and any BROKER_* secret to come) a
 * child must never see, and its Forgejo client secret; a child gets only its user's token.
 */
function isBrokerSecretName(name: string): boolean {
  return name.startsWith("BROKER_") || name === "FORGEJO_CLIENT_SECRET";
}

/** Splits a command line into argv the way a POSIX shell would for plain words and quotes, and nothing more. */
export function splitCommandLine(line: string): string[] | null {
  const argv: string[] = [];
  let current = "";
  let inWord = false;
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (quote !== null) {
      if (ch === quote) quote = null;
      else if (ch === "\\" && quote === '"' && (line[i + 1] === '"' || line[i + 1] === "\\")) current += line[++i];
      else current += ch;
    } else if (ch === '"' || ch === "'") {
      quote = ch;
      inWord = true;
    } else if (ch === "\\" && i + 1 < line.length) {
      current += line[++i];
      inWord = true;
    } else if (/\s/.test(ch)) {
      if (inWord) argv.push(current);
      current = "";
      inWord = false;
    } else {
      current += ch;
      inWord = true;
    }
  }
  if (quote !== null) return null;
  if (inWord) argv.push(current);
  return argv;
}

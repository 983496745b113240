// Reads the broker's configuration from the environment and validates all of it at once,
// so a misconfigured start-up prints one clear line per problem instead of failing later.
import { closeSync, constants, fstatSync, openSync, readFileSync } from "node:fs";
import { isAbsolute, relative, resolve, sep } from "node:path";
import type { LogLevel } from "./log.ts";
import { secretFileExposure } from "./crypto.ts";
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
  /** The files secrets were read from (FORGEJO_CLIENT_SECRET_FILE, BROKER_SEALING_KEY_FILE): kept out of every child's sight. */
  secretFiles: string[];
  /** 32 bytes when given by BROKER_SEALING_KEY or BROKER_SEALING_KEY_FILE; otherwise generated under dataDir. */
  sealingKey: Uint8Array | null;
  /** postgres:// URL of the database replicas share (BROKER_DATABASE_URL); null: the SQLite file in dataDir. */
  databaseUrl: string | null;
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
  observability: ObservabilityConfig;
  clients: ClientPolicy;
  /** Shared with the other replicas through Redis; undefined when BROKER_REDIS_URL is unset (one box). */
  redis: RedisConfig | undefined;
}

export interface RedisConfig {
  /** redis:// or rediss://, credentials included: never logged. */
  url: string;
  /** Before every key and channel, so that several brokers (or test runs) share one Redis. */
  prefix: string;
  /** The address the other replicas use to reach this one. */
  replicaUrl: string;
}

export interface ObservabilityConfig {
  /** BROKER_METRICS_ADDR: a listener of its own for /metrics; null: none. */
  metricsAddr: { host: string; port: number } | null;
  /** BROKER_METRICS_TOKEN: /metrics on the main listener for this bearer token; null: not there. */
  metricsToken: string | null;
  /** OTEL_EXPORTER_OTLP_ENDPOINT: where traces go over OTLP/HTTP; null: no tracing at all. */
  otlpEndpoint: string | null;
  /** OTEL_SERVICE_NAME, the traces' service.name. */
  serviceName: string;
}

export interface ClientPolicy {
  /** `host:port` entries whose client metadata documents may be fetched over http and from loopback: tests and local development only. */
  insecureMetadataHosts: string[];
  /** A client whose grants have all been revoked or expired this long is deleted. */
  idleMs: number;
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
  /** Which MCP era a modern caller's child speaks: probed once per command (auto), or as the operator says. */
  era: ChildEraSetting;
}

export type ChildEraSetting = "auto" | "legacy" | "modern";
const CHILD_ERAS: readonly ChildEraSetting[] = ["auto", "legacy", "modern"];

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

/** A secret file as loadConfig judges it: its text and its st_mode. Throws when the file cannot be read. */
export type SecretFileReader = (path: string) => { text: string; mode: number };

/** A secret is a line, not a document: a larger file is refused before it is read. */
const SECRET_FILE_MAX_BYTES = 64 * 1024;

/** Reads a secret file through one descriptor, so that the mode judged and the text used are of the same file. */
export const readSecretFile: SecretFileReader = (path) => {
  // Non-blocking, so that a FIFO named by mistake is refused below instead of hanging the start-up.
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new Error("not a regular file");
    if (stat.size > SECRET_FILE_MAX_BYTES) throw new Error(`larger than ${SECRET_FILE_MAX_BYTES} bytes`);
    return { text: readFileSync(fd, "utf8"), mode: stat.mode };
  } finally {
    closeSync(fd);
  }
};

export function loadConfig(env: Env, readSecret: SecretFileReader = readSecretFile): ConfigResult {
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

  /**
   * A secret given either in `name` or in a file named by `name_FILE` (the convention systemd's LoadCredential= fits),
   * so that it need not sit in /proc/<pid>/environ. Problem lines name the file, never a byte of what it holds.
   */
  const secretFiles: string[] = [];
  const secret = (name: string, secretName: string): string | undefined => {
    const fileName = `${name}_FILE`;
    const fileExample = credentialPath(name);
    const value = get(name);
    const path = get(fileName);
    if (path === undefined) return value;
    secretFiles.push(path);
    if (value !== undefined) {
      problem(fileName, `and ${name} are both set; keep only one`, fileExample);
      return undefined;
    }
    let file: { text: string; mode: number };
    try {
      file = readSecret(path);
    } catch (error) {
      // Node's "ENOENT: no such file or directory, open '<path>'" without the path said already.
      const reason = error instanceof Error ? error.message.replace(/, \w+ '.*'$/, "") : String(error);
      problem(fileName, `cannot read ${path}: ${reason}`, fileExample);
      return undefined;
    }
    // systemd's credentials directory is the unit's own; a file there shows 0440 when systemd grants the unit's
    // user read access with an ACL, and that says nothing about other users.
    const credentials = get("CREDENTIALS_DIRECTORY");
    const inCredentials = credentials !== undefined && isWithin(resolve(credentials), resolve(path));
    const exposure = inCredentials ? null : secretFileExposure(path, file.mode, secretName);
    if (exposure !== null) {
      problem(fileName, exposure.message, fileExample);
      return undefined;
    }
    const text = file.text.trim();
    if (text === "") {
      problem(fileName, `${path} is empty; it must hold ${secretName}`, fileExample);
      return undefined;
    }
    return text;
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
  const dataDir = dataDirFrom(env);

  let sealingKey: Uint8Array | null = null;
  const keyFile = get("BROKER_SEALING_KEY_FILE");
  const rawKey = secret("BROKER_SEALING_KEY", "the sealing key");
  if (rawKey !== undefined) {
    const decoded = /^[A-Za-z0-9+/]+={0,2}$/.test(rawKey) ? Buffer.from(rawKey, "base64") : null;
    if (decoded === null || decoded.length !== 32) {
      if (keyFile === undefined) problem("BROKER_SEALING_KEY", "must be 32 bytes in base64 (openssl rand -base64 32)", "q0S3…(44 characters)=");
      else problem("BROKER_SEALING_KEY_FILE", `${keyFile} must hold 32 bytes in base64 (openssl rand -base64 32)`, credentialPath("BROKER_SEALING_KEY"));
    } else {
      sealingKey = new Uint8Array(decoded);
    }
  }

  // It may carry the database password, so it is read like a secret (or from BROKER_DATABASE_URL_FILE) and never echoed.
  const databaseUrl = secret("BROKER_DATABASE_URL", "the database URL") ?? null;
  if (databaseUrl !== null && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    problem("BROKER_DATABASE_URL", "must be a postgres:// URL", "postgres://broker@db.example.com/broker");
  } else if (databaseUrl !== null && rawKey === undefined) {
    // Every replica must unseal what another sealed, and a key generated in one replica's data directory is that replica's alone.
    problem("BROKER_SEALING_KEY", "is required with BROKER_DATABASE_URL, the same on every replica", "q0S3…(44 characters)=");
  }

  const forgejoUrl = absoluteUrl("FORGEJO_URL", undefined, "https://codeberg.org");
  const clientId = required("FORGEJO_CLIENT_ID", "3f2c…-uuid-of-the-oauth2-application");
  const clientSecret = secret("FORGEJO_CLIENT_SECRET", "the Forgejo client secret");
  if (clientSecret === undefined && get("FORGEJO_CLIENT_SECRET_FILE") === undefined) problem("FORGEJO_CLIENT_SECRET", "is required", "gto_…");
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
  // Only modern callers' children are affected: a legacy session initializes its own child either way.
  const rawChildEra = get("BROKER_CHILD_ERA") ?? "auto";
  const childEra = CHILD_ERAS.find((era) => era === rawChildEra);
  if (childEra === undefined) problem("BROKER_CHILD_ERA", `must be one of ${CHILD_ERAS.join(", ")}, got ${JSON.stringify(rawChildEra)}`, "auto");
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

  const metricsAddrRaw = get("BROKER_METRICS_ADDR");
  let metricsAddr: ObservabilityConfig["metricsAddr"] = null;
  if (metricsAddrRaw !== undefined) {
    const parts = /^(\[[0-9A-Fa-f:.]+\]|[^\s:[\]]+):(\d{1,5})$/.exec(metricsAddrRaw);
    if (parts === null || Number(parts[2]) > 65535) problem("BROKER_METRICS_ADDR", `must be host:port, got ${JSON.stringify(metricsAddrRaw)}`, "127.0.0.1:9464");
    else metricsAddr = { host: parts[1]!.replace(/^\[|\]$/g, ""), port: Number(parts[2]) };
  }
  // Sent by every scraper in a header: a short or guessable one would make the main listener's /metrics public.
  const metricsToken = secret("BROKER_METRICS_TOKEN", "the metrics bearer token") ?? null;
  if (metricsToken !== null && !/^[\x21-\x7e]{16,}$/.test(metricsToken)) {
    problem("BROKER_METRICS_TOKEN", "must be at least 16 printable characters without spaces (openssl rand -hex 24)", "3f9c…(48 hex characters)");
  }
  const otlpEndpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT") === undefined ? null : absoluteUrl("OTEL_EXPORTER_OTLP_ENDPOINT", undefined, "http://127.0.0.1:4318");
  const insecureMetadataHosts = (get("BROKER_CIMD_INSECURE_HOSTS") ?? "").split(/[\s,]+/).filter(Boolean);
  for (const entry of insecureMetadataHosts) {
    if (!/^(\[[0-9a-f:.]+\]|[a-z0-9.-]+):\d{1,5}$/i.test(entry)) problem("BROKER_CIMD_INSECURE_HOSTS", `has ${JSON.stringify(entry)}, which is not host:port`, "localhost:8443");
  }
  const clientIdleDays = integer("BROKER_CLIENT_IDLE_DAYS", 90, 1, 36_500, "90");

  // It may carry Redis's password, so it is read like a secret (or from BROKER_REDIS_URL_FILE) and never echoed.
  const redisUrl = secret("BROKER_REDIS_URL", "the Redis URL");
  if (redisUrl !== undefined && !/^rediss?:\/\/[^\s/]+(\/\d*)?$/.test(redisUrl)) {
    // Not echoed: the URL may carry a password.
    problem("BROKER_REDIS_URL", "must be a redis:// or rediss:// URL naming a host (and at most a database number)", "redis://127.0.0.1:6379");
  }
  const redisPrefix = get("BROKER_REDIS_PREFIX") ?? "fmb:";
  if (!/^[A-Za-z0-9:_.-]{1,64}$/.test(redisPrefix)) {
    problem("BROKER_REDIS_PREFIX", `must be 1 to 64 letters, digits or ":_.-", got ${JSON.stringify(redisPrefix)}`, "fmb:");
  }
  const replicaUrl = absoluteUrl("BROKER_REPLICA_URL", `http://${host.includes(":") ? `[${host}]` : host}:${port}`, "http://10.0.0.5:8080");

  if (problems.length > 0) return { ok: false, problems };

  return {
    ok: true,
    config: {
      publicUrl,
      resourceUrl: `${publicUrl}/mcp`,
      host,
      port,
      dataDir,
      secretFiles,
      sealingKey,
      databaseUrl,
      forgejo: { url: forgejoUrl, clientId, clientSecret: clientSecret ?? "", scopes, timeoutMs: forgejoTimeoutMs },
      child: {
        command: command ?? [],
        urlEnv,
        tokenEnv,
        passthroughEnv,
        stopGraceMs,
        sandbox: { kind: sandboxKind === "none" ? "none" : "bwrap", bind: sandboxBind },
        era: childEra ?? "auto",
      },
      sessions: {
        ...sessions,
        allowedOrigins: allowedOrigins.length > 0 ? allowedOrigins : [new URL(publicUrl).origin],
      },
      logLevel: logLevel ?? "info",
      inFlight,
      trustedProxies,
      observability: { metricsAddr, metricsToken, otlpEndpoint, serviceName: get("OTEL_SERVICE_NAME") ?? "forgejo-mcp-broker" },
      clients: { insecureMetadataHosts: insecureMetadataHosts.map((entry) => entry.toLowerCase()), idleMs: clientIdleDays * 86_400_000 },
      redis: redisUrl === undefined ? undefined : { url: redisUrl, prefix: redisPrefix, replicaUrl },
    },
  };
}

/** Where the systemd unit in deploy/ has the credential for `name` appear: `%d/<name in lower case>`. */
const credentialPath = (name: string) => `/run/credentials/forgejo-mcp-broker.service/${name.toLowerCase()}`;

/** Whether `path` lies inside `dir` (both absolute), by path components, so `/a/bc` is not inside `/a/b`. */
function isWithin(dir: string, path: string): boolean {
  const rest = relative(dir, path);
  return rest !== "" && rest !== ".." && !rest.startsWith(`..${sep}`) && !isAbsolute(rest);
}

/**
 * The broker's own configuration, whose secrets (BROKER_SEALING_KEY and any BROKER_* secret to come) a
 * child must never see, and its Forgejo client secret; a child gets only its user's token.
 */
function isBrokerSecretName(name: string): boolean {
  return name.startsWith("BROKER_") || name === "FORGEJO_CLIENT_SECRET" || name === "FORGEJO_CLIENT_SECRET_FILE";
}

/** Splits a command line into argv the way a POSIX shell would for plain words and quotes, and nothing more. */
/** What no child may see even where it lies under a path bound into the sandbox: the data directory and the secret files. */
/**
 * BROKER_DATA_DIR as the broker reads it: for the admin command, which needs nothing else of the
 * configuration and must work where the broker's secret files are not readable (systemd credentials).
 */
export function dataDirFrom(env: Env): string {
  return env.BROKER_DATA_DIR?.trim() || "./data";
}

export function hiddenFromChildren(config: Pick<BrokerConfig, "dataDir" | "secretFiles">): string[] {
  return [config.dataDir, ...config.secretFiles];
}

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

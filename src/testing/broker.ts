// A real broker for a test suite: its configuration as typed options, a free loopback port, a temporary
// data directory, the stand-in MCP child by default; stop() ends every child and listener and removes the data.
import { existsSync, mkdtempSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { startBroker as startRunningBroker, type BrokerOptions, type RunningBroker } from "../broker.ts";
import { hiddenFromChildren, loadConfig, type BrokerConfig } from "../config.ts";
import { createMemoryLogger } from "../log.ts";
import type { RateLimitPolicy } from "../oauth/rate-limit.ts";
import { probeSandbox } from "../supervisor/sandbox.ts";

/** The Forgejo the broker signs users in with: a stand-in from startForgejoStandIn, or a real one's OAuth2 app. */
export interface ForgejoApp {
  url: string;
  clientId: string;
  clientSecret: string;
}

/**
 * The broker's environment variables as options: the name without BROKER_ in camelCase (BROKER_MAX_SESSIONS is
 * maxSessions), FORGEJO_ and OTEL_ ones keeping their prefix (FORGEJO_SCOPES is forgejoScopes). Lists are arrays.
 * The README's configuration table says what each one does.
 */
export interface BrokerSettings {
  host?: string;
  logLevel?: "debug" | "info" | "warn" | "error";
  allowedOrigins?: string[];
  trustedProxies?: string[];
  childEnvPassthrough?: string[];
  childEra?: "auto" | "legacy" | "modern";
  /** bwrap (the default, as in production) or none. */
  childSandbox?: "bwrap" | "none";
  /** Paths bound into the sandbox besides those the stand-in child needs. */
  childSandboxBind?: string[];
  childStopGraceS?: number;
  childTokenEnv?: string;
  childUrlEnv?: string;
  cimdInsecureHosts?: string[];
  clientIdleDays?: number;
  idleTimeoutS?: number;
  maxInFlight?: number;
  maxInFlightPerUser?: number;
  maxMessageBytes?: number;
  maxSessions?: number;
  maxSessionsPerUser?: number;
  metricsAddr?: string;
  metricsToken?: string;
  redisPrefix?: string;
  redisUrl?: string;
  refreshLeadS?: number;
  replicaUrl?: string;
  requestTimeoutS?: number;
  sealingKey?: string;
  forgejoScopes?: string;
  forgejoTimeoutS?: number;
  otelExporterOtlpEndpoint?: string;
  otelServiceName?: string;
}

export interface StartBrokerOptions extends BrokerSettings {
  forgejo: ForgejoApp;
  /** The MCP server each session runs, as argv; the stand-in child (whoami, list_my_repos, echo, slow_count, ask_user) by default. */
  child?: string[];
  /** The listening port; a free one by default. */
  port?: number;
  /** Any other environment variable, verbatim; the typed options win. */
  env?: Record<string, string>;
  /**
   * The per-address limit on the OAuth endpoints: production's (a burst of 30, then 1 a second) by default, which
   * a suite signing in more often than that meets as a 429 at registration.
   */
  rateLimit?: RateLimitPolicy;
}

export interface TestingBroker {
  /** The broker's base URL, which is also its OAuth issuer. */
  url: string;
  issuer: string;
  /** The MCP endpoint: url + /mcp. */
  mcpUrl: string;
  forgejo: ForgejoApp;
  config: BrokerConfig;
  /** The broker's log lines (JSON), for a test to read. */
  logs: string[];
  /** Ends every child and waits for it, closes every listener and the database, and removes the data directory. */
  stop(): Promise<void>;
}

/** The stand-in MCP child: src/testing/mcp-child.ts, run by the Bun that runs the tests. */
export const STAND_IN_CHILD_SCRIPT = join(import.meta.dir, "mcp-child.ts");

const PACKAGE_ROOT = join(import.meta.dir, "..", "..");

/**
 * What the stand-in child must see in its sandbox besides the system and Bun: this package (its script) and every
 * node_modules its imports can resolve from — the package's own and those of the directories above it.
 */
export function standInChildBinds(packageRoot = PACKAGE_ROOT): string[] {
  const binds = [realpathSync(packageRoot)];
  for (let dir = packageRoot; ; dir = dirname(dir)) {
    const modules = join(dir, "node_modules");
    if (existsSync(modules)) binds.push(realpathSync(modules));
    if (dirname(dir) === dir) return [...new Set(binds)];
  }
}

/** The environment of a broker on a loopback port that signs users in through the given Forgejo. */
export function brokerEnv(forgejo: ForgejoApp, port: number, dataDir: string): Record<string, string> {
  return {
    BROKER_PUBLIC_URL: `http://127.0.0.1:${port}`,
    BROKER_PORT: String(port),
    BROKER_DATA_DIR: dataDir,
    FORGEJO_URL: forgejo.url,
    FORGEJO_CLIENT_ID: forgejo.clientId,
    FORGEJO_CLIENT_SECRET: forgejo.clientSecret,
    BROKER_CHILD_SANDBOX_BIND: standInChildBinds().join(","),
  };
}

/** maxSessionsPerUser → BROKER_MAX_SESSIONS_PER_USER; forgejoScopes → FORGEJO_SCOPES. */
export function settingEnvName(option: string): string {
  const upper = option.replace(/[A-Z]/g, (letter) => `_${letter}`).toUpperCase();
  return /^(FORGEJO|OTEL)_/.test(upper) ? upper : `BROKER_${upper}`;
}

export function settingsEnv(settings: BrokerSettings): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [option, value] of Object.entries(settings)) {
    if (value !== undefined) env[settingEnvName(option)] = Array.isArray(value) ? value.join(",") : String(value);
  }
  return env;
}

/** Loads the configuration as the broker would from its environment; throws with every problem it has. */
export function configFromEnv(env: Record<string, string>): BrokerConfig {
  const result = loadConfig(env);
  if (!result.ok) throw new Error(`the broker's configuration is not valid:\n${result.problems.join("\n")}`);
  return result.config;
}

/** Starts the broker of a configuration with its children wrapped as the host allows. */
export async function startConfiguredBroker(config: BrokerConfig, options: Partial<BrokerOptions> & Pick<BrokerOptions, "logger">): Promise<RunningBroker> {
  const sandbox = await probeSandbox(config.child.sandbox, hiddenFromChildren(config), { path: process.env.PATH ?? "" });
  return await startRunningBroker(config, { sandbox, ...options });
}

export async function startBroker(options: StartBrokerOptions): Promise<TestingBroker> {
  const { forgejo, child, port: askedPort, env: extraEnv, childSandboxBind, rateLimit, ...settings } = options;
  const port = askedPort ?? (await freePort());
  const dataDir = mkdtempSync(join(tmpdir(), "forgejo-mcp-broker-"));
  try {
    const base = brokerEnv(forgejo, port, dataDir);
    const bind = [base.BROKER_CHILD_SANDBOX_BIND!, ...(childSandboxBind ?? [])].join(",");
    const loaded = configFromEnv({ ...base, ...extraEnv, ...settingsEnv(settings), BROKER_CHILD_SANDBOX_BIND: bind });
    const config: BrokerConfig = { ...loaded, child: { ...loaded.child, command: child ?? [process.execPath, STAND_IN_CHILD_SCRIPT] } };
    const logger = createMemoryLogger();
    const running = await startConfiguredBroker(config, { logger, ...(rateLimit === undefined ? {} : { rateLimit }) });
    return {
      url: running.url,
      issuer: config.publicUrl,
      mcpUrl: config.resourceUrl,
      forgejo,
      config,
      logs: logger.lines,
      async stop() {
        try {
          await running.stop();
        } finally {
          rmSync(dataDir, { recursive: true, force: true });
        }
      },
    };
  } catch (error) {
    rmSync(dataDir, { recursive: true, force: true });
    throw error;
  }
}

/** The issuer must be known before listening, so the OS is asked for a free port first. */
export async function freePort(): Promise<number> {
  const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response() });
  const port = probe.port!;
  await probe.stop(true);
  return port;
}

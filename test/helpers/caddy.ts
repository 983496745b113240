// Real Caddy running deploy/Caddyfile as shipped in front of brokers, only its placeholders set (plain HTTP on a loopback
// port, no admin endpoint, its state and access log in a directory of its own), and the environment replicas behind it share.
import type { Subprocess } from "bun";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { outputLines, type OutputLines } from "./output.ts";
import { REDIS_URL } from "./redis.ts";

export const CADDY = "/usr/bin/caddy";
export const DEPLOY_DIR = join(import.meta.dir, "..", "..", "deploy");
const CADDYFILE = join(DEPLOY_DIR, "Caddyfile");

/** Caddy's environment: its own state (certificates, autosaved config) goes under `home`, then the Caddyfile's placeholders. */
export function caddyEnv(home: string, placeholders: Record<string, string> = {}): Record<string, string> {
  return { PATH: process.env.PATH ?? "", HOME: home, XDG_DATA_HOME: join(home, "data"), XDG_CONFIG_HOME: join(home, "config"), ...placeholders };
}

/**
 * What every replica behind the proxy shares, as an operator sets it for scale-out: the proxy's public URL, one
 * database, one sealing key, one Redis prefix, and the proxy (on loopback) trusted for X-Forwarded-For.
 */
export function sharedReplicaEnv(options: { publicUrl: string; databaseUrl: string; redisPrefix: string }): Record<string, string> {
  return {
    BROKER_PUBLIC_URL: options.publicUrl,
    BROKER_DATABASE_URL: options.databaseUrl,
    BROKER_SEALING_KEY: randomBytes(32).toString("base64"),
    BROKER_REDIS_URL: REDIS_URL,
    BROKER_REDIS_PREFIX: options.redisPrefix,
    BROKER_TRUSTED_PROXIES: "127.0.0.1",
  };
}

export interface CaddyOptions {
  /** BROKER_SITE: where Caddy listens, the brokers' public URL. */
  publicUrl: string;
  /** BROKER_UPSTREAMS: each broker's host:port. */
  upstreams: string[];
  /** More placeholders (CADDY_HEALTH_INTERVAL, …). */
  placeholders?: Record<string, string>;
  /** Called with the process as soon as it is spawned, before it serves (to track it for a later kill). */
  spawned?: (proc: Subprocess) => void;
}

export interface RunningCaddy {
  proc: Subprocess;
  /** Its log (stderr), line by line as it comes. */
  log: OutputLines;
  /** CADDY_ACCESS_LOG. */
  accessLog: string;
  /** SIGTERM unless it has exited, waits for the exit, removes its directory. */
  stop(): Promise<void>;
}

/** Resolves once Caddy says it serves its configuration; throws with its log if it exits first. */
export async function startCaddy(options: CaddyOptions): Promise<RunningCaddy> {
  const home = mkdtempSync(join(tmpdir(), "fmb-caddy-"));
  const accessLog = join(home, "access.log");
  const proc = Bun.spawn([CADDY, "run", "--config", CADDYFILE, "--adapter", "caddyfile"], {
    env: caddyEnv(home, {
      BROKER_SITE: options.publicUrl,
      BROKER_UPSTREAMS: options.upstreams.join(" "),
      CADDY_ACCESS_LOG: accessLog,
      CADDY_ADMIN: "off",
      ...options.placeholders,
    }),
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  options.spawned?.(proc);
  const log = outputLines(proc.stderr);
  outputLines(proc.stdout);
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
    await proc.exited;
    rmSync(home, { recursive: true, force: true });
  };
  if ((await log.waitFor((line) => line.includes("serving initial configuration"))) === null) {
    await stop();
    throw new Error(`caddy exited before it served: ${log.lines.join("\n")}`);
  }
  return { proc, log, accessLog, stop };
}

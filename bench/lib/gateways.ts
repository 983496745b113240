// The HTTP targets, each started fresh as its own process: supergateway (the peer), the bare relay
// (bench/relay: the runtime's floor) and this broker (a subprocess `bun src/index.ts` against the
// Forgejo stand-in, with a token minted through the real OAuth flow; children sandboxed or not). Every gateway is stopped with SIGTERM, then SIGKILL, and any descendant it
// left behind is killed by pid (checked against its start time), so a run leaves nothing running.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { brokerEnvFor, freePort } from "../../test/helpers/broker.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import type { FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { probeMcp } from "./mcp-probe.ts";
import { descendantsOf, procStat } from "./proc.ts";

export const REPO_ROOT = resolve(import.meta.dir, "../..");

export interface Gateway {
  pid: number;
  url: string;
  token?: string;
  /** The broker only: signs in again through the OAuth flow, a new grant (principal) each time. */
  newToken?: () => Promise<string>;
  /** notifications/progress seen by the start-up probe for one progress call (5 expected). */
  progressNotifications: number;
  stop(): Promise<StopReport>;
}

export interface StopReport {
  /** Descendants still alive after the gateway exited, killed by the harness. */
  stragglers: number;
  /** How the gateway ended: "SIGTERM" when it exited on its own after SIGTERM. */
  ended: string;
}

/** A target that cannot be measured now (not an error in the harness): the row says why. */
export class Unavailable extends Error {}

const live = new Set<Subprocess>();

/** A process the bench started besides a gateway (a proxy in front of brokers): stopped by stopAllGateways on Ctrl-C too. */
export function trackProcess(proc: Subprocess): Subprocess {
  live.add(proc);
  return proc;
}

export async function waitFor(check: () => Promise<boolean>, proc: Subprocess, ms: number, what: string, log?: string): Promise<void> {
  const deadline = performance.now() + ms;
  while (performance.now() < deadline) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Unavailable(`${what} exited (${proc.exitCode ?? proc.signalCode}) before it was ready${log ? `: ${tail(log)}` : ""}`);
    }
    if (await check().catch(() => false)) return;
    await Bun.sleep(25);
  }
  throw new Unavailable(`${what} was not ready within ${ms} ms${log ? `: ${tail(log)}` : ""}`);
}

function tail(path: string): string {
  try {
    return readFileSync(path, "utf8").trim().split("\n").slice(-3).join(" | ").slice(0, 400);
  } catch {
    return "(no log)";
  }
}

/** SIGTERM, up to `graceMs` to exit, SIGKILL; then SIGKILL any descendant that outlived it. */
export async function stopProcess(proc: Subprocess, graceMs: number): Promise<StopReport> {
  const snapshot = descendantsOf(proc.pid).map((pid) => procStat(pid)).filter((s) => s !== null);
  let ended = "SIGTERM";
  if (proc.exitCode === null && proc.signalCode === null) {
    proc.kill("SIGTERM");
    const exited = await Promise.race([proc.exited.then(() => true), Bun.sleep(graceMs).then(() => false)]);
    if (!exited) {
      ended = "SIGKILL";
      proc.kill("SIGKILL");
      await proc.exited;
    }
  } else ended = `already exited (${proc.exitCode ?? proc.signalCode})`;
  live.delete(proc);
  let stragglers = 0;
  for (const before of snapshot) {
    const now = procStat(before.pid);
    if (now === null || now.startTime !== before.startTime || now.state === "Z") continue;
    stragglers++;
    try {
      process.kill(before.pid, "SIGKILL");
    } catch {
      // gone in between
    }
  }
  return { stragglers, ended };
}

/** For Ctrl-C and fatal errors: stop every gateway still running. */
export async function stopAllGateways(): Promise<void> {
  await Promise.all([...live].map((proc) => stopProcess(proc, 3000)));
}

export interface ChildSpec {
  name: string;
  argv: string[];
}

/** The child as one command line, for supergateway (run by a shell) and BROKER_CHILD_COMMAND (split without one). */
export function commandLine(argv: string[]): string {
  return argv.map((arg) => (/^[A-Za-z0-9_./=:-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`)).join(" ");
}

/** supergateway's own entry point, run by node: what `npx supergateway` runs, without npx's wrapper processes. */
export function supergatewayEntry(): string {
  return join(REPO_ROOT, "node_modules/supergateway/dist/index.js");
}

/** A gateway that needs no token: spawn it, wait until it answers HTTP, probe it, or stop it and say why not. */
async function startPlainGateway(what: string, argv: string[], port: number, env?: Record<string, string>): Promise<Gateway> {
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "ignore", stderr: "ignore", cwd: REPO_ROOT, env });
  live.add(proc);
  const url = `http://127.0.0.1:${port}/mcp`;
  try {
    await waitFor(async () => (await fetch(url, { signal: AbortSignal.timeout(1000) })).status > 0, proc, 15_000, what);
    const probe = await probeMcp(url, undefined);
    if (!probe.ok) throw new Unavailable(probe.reason);
    return { pid: proc.pid, url, progressNotifications: probe.progressNotifications, stop: () => stopProcess(proc, 8000) };
  } catch (error) {
    await stopProcess(proc, 3000);
    throw error;
  }
}

export async function startSupergateway(child: ChildSpec): Promise<Gateway> {
  const port = await freePort();
  const node = Bun.which("node");
  if (node === null) throw new Unavailable("node is not on PATH (supergateway is a Node program)");
  return startPlainGateway(
    "supergateway",
    [node, supergatewayEntry(), "--stdio", commandLine(child.argv), "--outputTransport", "streamableHttp", "--stateful", "--logLevel", "none", "--port", String(port)],
    port,
  );
}

export const RELAY_ENTRY = join(REPO_ROOT, "bench/relay/relay.ts");

/** The bare relay (bench/relay/relay.ts) run by this bun: the runtime's HTTP + pipe floor, no auth. The child argv goes after `--`, unsplit. */
export async function startRelay(child: ChildSpec): Promise<Gateway> {
  const port = await freePort();
  // The broker's clean environment, so nothing of the harness's (BUN_CONFIG_MAX_HTTP_REQUESTS) leaks in.
  const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/tmp" };
  return startPlainGateway("the relay", [process.execPath, RELAY_ENTRY, "--port", String(port), "--", ...child.argv], port, env);
}

export interface BrokerOptions {
  child: ChildSpec;
  forgejo: FakeForgejo;
  /** BROKER_MAX_SESSIONS, BROKER_MAX_SESSIONS_PER_USER and BROKER_MAX_IN_FLIGHT_PER_USER: all the bench's load is one user's, and the caps must not be what is measured. */
  maxSessions: number;
  logLevel: string;
  /** BROKER_CHILD_SANDBOX: each child under bwrap (the default an operator gets), or unsandboxed. */
  sandbox: "bwrap" | "none";
  /** Extra bun flags (profiling) and a wrapper command (a profiler): measured figures then describe the profiled broker. */
  flags?: string[];
  wrapper?: string[];
  /** The broker's entry point: this checkout's src/index.ts unless another (broker-previous) is given. */
  entry?: string;
  /** More variables for the broker (OTEL_EXPORTER_OTLP_ENDPOINT for broker-otel). */
  env?: Record<string, string>;
  /** Where it listens: a free port unless given (a replica names its own address in its environment first). */
  port?: number;
}

/** A broker process as the bench starts it, not yet known to answer: its log, and a stop that removes its data directory. */
export interface SpawnedBroker {
  proc: Subprocess;
  /** Where it listens itself (not through any proxy). */
  directUrl: string;
  log: string;
  stop(): Promise<StopReport>;
}

/** `bun src/index.ts` on a free port with a data directory of its own; `env` adds to (and overrides) the bench's settings. */
export async function spawnBroker(options: BrokerOptions): Promise<SpawnedBroker> {
  const port = options.port ?? (await freePort());
  const dataDir = mkdtempSync(join(tmpdir(), "fmb-bench-"));
  const log = join(dataDir, "broker.log");
  // One append descriptor for both streams, so stdout and stderr lines interleave instead of overwriting.
  const logFd = openSync(log, "a");
  const argv = [...(options.wrapper ?? []), process.execPath, ...(options.flags ?? []), options.entry ?? join(REPO_ROOT, "src/index.ts")];
  const proc = Bun.spawn(argv, {
    cwd: REPO_ROOT,
    stdin: "ignore",
    stdout: logFd,
    stderr: logFd,
    // A clean environment: nothing of the harness's (BUN_CONFIG_MAX_HTTP_REQUESTS among it) leaks in.
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? "/tmp",
      ...brokerEnvFor(options.forgejo, port, dataDir),
      BROKER_HOST: "127.0.0.1",
      BROKER_CHILD_COMMAND: commandLine(options.child.argv),
      BROKER_MAX_SESSIONS: String(options.maxSessions),
      BROKER_MAX_SESSIONS_PER_USER: String(options.maxSessions),
      BROKER_MAX_IN_FLIGHT_PER_USER: String(options.maxSessions),
      BROKER_LOG_LEVEL: options.logLevel,
      BROKER_CHILD_SANDBOX: options.sandbox,
      ...options.env,
    },
  });
  closeSync(logFd);
  live.add(proc);
  const stop = async () => {
    // A profiler writes its file at exit: give a wrapped or profiled broker longer before SIGKILL.
    const report = await stopProcess(proc, (options.wrapper?.length ?? 0) > 0 || (options.flags?.length ?? 0) > 0 ? 60_000 : 8000);
    rmSync(dataDir, { recursive: true, force: true });
    return report;
  };
  return { proc, directUrl: `http://127.0.0.1:${port}`, log, stop };
}

/** Until the broker's own /healthz answers 200 (or it exits, or the time is up: Unavailable with its log's tail). */
export async function brokerReady(broker: SpawnedBroker, options: Pick<BrokerOptions, "wrapper">): Promise<void> {
  const startMs = (options.wrapper?.length ?? 0) > 0 ? 120_000 : 15_000;
  await waitFor(async () => (await fetch(`${broker.directUrl}/healthz`, { signal: AbortSignal.timeout(1000) })).ok, broker.proc, startMs, "the broker", broker.log);
}

/** A token minted through the OAuth flow at `publicUrl` and one probed session on its /mcp: the gateway as the load generator gets it. */
export async function signedInGateway(publicUrl: string, pid: number, stop: () => Promise<StopReport>): Promise<Gateway> {
  let token: string;
  try {
    token = (await obtainTokens(publicUrl)).accessToken;
  } catch (error) {
    throw new Unavailable(`the OAuth flow failed: ${error instanceof Error ? error.message : String(error)}`);
  }
  if (!token) throw new Unavailable("the OAuth flow returned no access token");
  const url = `${publicUrl}/mcp`;
  const probe = await probeMcp(url, token);
  if (!probe.ok) throw new Unavailable(probe.reason);
  const newToken = async () => (await obtainTokens(publicUrl)).accessToken;
  return { pid, url, token, newToken, progressNotifications: probe.progressNotifications, stop };
}

export async function startBroker(options: BrokerOptions): Promise<Gateway> {
  const broker = await spawnBroker(options);
  try {
    await brokerReady(broker, options);
    return await signedInGateway(broker.directUrl, broker.proc.pid, broker.stop);
  } catch (error) {
    await broker.stop();
    throw error instanceof Unavailable ? error : new Unavailable(error instanceof Error ? error.message : String(error));
  }
}

// The broker as an operator runs it, `bun src/index.ts` in a process of its own, for tests that watch
// the process itself: its output line by line as it comes, its resident memory, its exit code.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { brokerEnvFor, freePort } from "./broker.ts";
import { outputLines, type OutputLines } from "./output.ts";

const ENTRY = join(import.meta.dir, "..", "..", "src", "index.ts");

/** The log line that says the broker has started and listens. */
export const listening = (line: string) => line.includes('"msg":"broker listening"');

export interface SpawnedBroker {
  pid: number;
  /** Its log (stdout) and its configuration errors (stderr), read as they come: a full pipe would block the broker. */
  stdout: OutputLines;
  stderr: OutputLines;
  /** Resolves with the exit code once the process has exited and both outputs have ended. */
  exited: Promise<number>;
  /** Every line logged so far; all of them once `exited` has resolved. */
  log(): string;
  /** Sends `signal` unless the process has already exited; resolves like `exited`. Safe to call again. */
  stop(signal?: NodeJS.Signals): Promise<number>;
}

export interface BrokerProcess extends SpawnedBroker {
  url: string;
  mcpUrl: string;
  /** VmRSS from /proc: what the broker holds in memory now. */
  rssBytes(): number;
}

/**
 * Spawns `bun src/index.ts` with PATH and `env` (which may replace PATH) as its whole environment, under
 * `umask` when given (a service's usual 022, say), and returns at once: for brokers that must refuse to start.
 */
export function spawnBroker(env: Record<string, string>, options: { umask?: number } = {}): SpawnedBroker {
  const previous = options.umask === undefined ? undefined : process.umask(options.umask);
  let proc;
  try {
    proc = Bun.spawn([process.execPath, ENTRY], { env: { PATH: process.env.PATH ?? "", ...env }, stdout: "pipe", stderr: "pipe" });
  } finally {
    if (previous !== undefined) process.umask(previous);
  }
  const stdout = outputLines(proc.stdout);
  const stderr = outputLines(proc.stderr);
  // A wanted line that never comes: waitFor resolves (with null) when the output ends.
  const ended = (output: OutputLines) => output.waitFor(() => false);
  const exited = Promise.all([proc.exited, ended(stdout), ended(stderr)]).then(([code]) => code);
  return {
    pid: proc.pid,
    stdout,
    stderr,
    exited,
    log: () => stdout.lines.join("\n"),
    stop(signal = "SIGTERM") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

/**
 * Starts the broker on a free port against the Forgejo stand-in, in `dataDir`; resolves once it logs that it
 * listens (at BROKER_LOG_LEVEL info, the default; src/index.ts logs it once its signal handlers are in
 * place, so the test may signal it from then on), or throws with its exit code and stderr if it exits first.
 */
export async function startBrokerProcess(
  forgejo: Pick<FakeForgejo, "url" | "clientId" | "clientSecret">,
  dataDir: string,
  env: Record<string, string>,
  options: { umask?: number } = {},
): Promise<BrokerProcess> {
  if (env.BROKER_LOG_LEVEL !== undefined && !["debug", "info"].includes(env.BROKER_LOG_LEVEL)) {
    throw new Error(`startBrokerProcess awaits the broker's info line "broker listening": BROKER_LOG_LEVEL=${env.BROKER_LOG_LEVEL} hides it`);
  }
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const broker = spawnBroker({ ...brokerEnvFor(forgejo, port, dataDir), ...env }, options);
  if ((await broker.stdout.waitFor(listening)) === null) {
    throw new Error(`the broker exited (${await broker.exited}) before it listened: ${broker.stderr.lines.join("\n")}`);
  }
  return {
    ...broker,
    url,
    mcpUrl: `${url}/mcp`,
    rssBytes: () => {
      const status = readFileSync(`/proc/${broker.pid}/status`, "utf8");
      return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)![1]) * 1024;
    },
  };
}

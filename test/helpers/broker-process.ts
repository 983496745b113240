// The broker as an operator runs it, `bun src/index.ts` in a process of its own, for tests that watch
// the process itself: its log as it comes, its resident memory, its exit code.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { FakeForgejo } from "../fixtures/forgejo.ts";
import { brokerEnvFor, freePort } from "./broker.ts";
import { waitWhile } from "./promises.ts";

const ENTRY = join(import.meta.dir, "..", "..", "src", "index.ts");

export interface BrokerProcess {
  pid: number;
  url: string;
  mcpUrl: string;
  /** Every line the broker has logged so far. */
  log(): string;
  /** VmRSS from /proc: what the broker holds in memory now. */
  rssBytes(): number;
  /** SIGTERM; resolves with the exit code. */
  stop(): Promise<number>;
}

/** Starts the broker on a free port against the Forgejo stand-in, in `dataDir`; resolves once /healthz answers. */
export async function startBrokerProcess(forgejo: FakeForgejo, dataDir: string, env: Record<string, string>): Promise<BrokerProcess> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const proc = Bun.spawn([process.execPath, ENTRY], {
    env: { PATH: process.env.PATH ?? "", ...brokerEnvFor(forgejo, port, dataDir), ...env },
    stdout: "pipe",
    stderr: "inherit",
  });
  let log = "";
  // Read as it comes: a broker whose stdout pipe fills would block on logging.
  const decoder = new TextDecoder();
  void (async () => {
    for await (const chunk of proc.stdout) log += decoder.decode(chunk, { stream: true });
  })();
  const healthy = async () => (await fetch(`${url}/healthz`).catch(() => null))?.ok === true;
  await waitWhile(async () => proc.exitCode === null && !(await healthy()), 200, 50);
  if (!(await healthy())) throw new Error(`the broker did not become healthy (exit ${proc.exitCode}): ${log}`);
  return {
    pid: proc.pid,
    url,
    mcpUrl: `${url}/mcp`,
    log: () => log,
    rssBytes: () => {
      const status = readFileSync(`/proc/${proc.pid}/status`, "utf8");
      return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)![1]) * 1024;
    },
    stop: async () => {
      proc.kill("SIGTERM");
      return await proc.exited;
    },
  };
}

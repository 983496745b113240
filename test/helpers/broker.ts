// Starts a real broker on a loopback port against the Forgejo stand-in, in a fresh data
// directory, with a logger whose lines the test can read; everything stops with stop().
import { mkdtempSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBroker, type BrokerOptions, type RunningBroker } from "../../src/broker.ts";
import { hiddenFromChildren, loadConfig, type BrokerConfig } from "../../src/config.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { probeSandbox } from "../../src/supervisor/sandbox.ts";
import { startFakeForgejo, type FakeForgejo, type FakeForgejoOptions } from "../../src/testing/forgejo-stand-in.ts";

export interface TestBroker {
  broker: RunningBroker;
  forgejo: FakeForgejo;
  config: BrokerConfig;
  dataDir: string;
  logs: string[];
  /** The MCP resource URL (publicUrl + /mcp). */
  mcpUrl: string;
  /** Stops the broker only (the data directory and Forgejo stay), for restart tests. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

const REPO_ROOT = join(import.meta.dir, "..", "..");

/**
 * What the stand-in children see in their sandbox besides the system and bun itself: the repository (their
 * scripts) and the node_modules it links to. The data directories are under /tmp, which the sandbox replaces.
 */
export const CHILD_SANDBOX_BIND = [REPO_ROOT, realpathSync(join(REPO_ROOT, "node_modules"))].join(",");

/** The environment of a broker on a loopback port that signs users in through the Forgejo stand-in. */
export function brokerEnvFor(forgejo: Pick<FakeForgejo, "url" | "clientId" | "clientSecret">, port: number, dataDir: string): Record<string, string> {
  return {
    BROKER_PUBLIC_URL: `http://127.0.0.1:${port}`,
    BROKER_PORT: String(port),
    BROKER_DATA_DIR: dataDir,
    FORGEJO_URL: forgejo.url,
    FORGEJO_CLIENT_ID: forgejo.clientId,
    FORGEJO_CLIENT_SECRET: forgejo.clientSecret,
    BROKER_CHILD_SANDBOX_BIND: CHILD_SANDBOX_BIND,
  };
}

export async function startTestBroker(
  options: { forgejo?: FakeForgejoOptions; env?: Record<string, string>; broker?: Partial<BrokerOptions>; dataDir?: string } = {},
): Promise<TestBroker> {
  const forgejo = await startFakeForgejo(options.forgejo);
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), "fmb-test-"));
  const port = await freePort();
  const result = loadConfig({ ...brokerEnvFor(forgejo, port, dataDir), ...options.env });
  if (!result.ok) throw new Error(result.problems.join("\n"));
  const config = result.config;
  const logger = createMemoryLogger();
  const sandbox = await probeSandbox(config.child.sandbox, hiddenFromChildren(config), { path: process.env.PATH ?? "" });
  const start = () => startBroker(config, { logger, sandbox, ...options.broker });
  const handle: TestBroker = {
    broker: await start(),
    forgejo,
    config,
    dataDir,
    logs: logger.lines,
    mcpUrl: config.resourceUrl,
    async restart() {
      await handle.broker.stop();
      handle.broker = await start();
    },
    async stop() {
      await handle.broker.stop();
      await forgejo.stop();
      if (options.dataDir === undefined) rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return handle;
}

/** The issuer must be known before listening, so the test asks the OS for a free port first. */
export async function freePort(): Promise<number> {
  const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response() });
  const port = probe.port!;
  await probe.stop(true);
  return port;
}

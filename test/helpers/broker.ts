// Starts a real broker on a loopback port against the Forgejo stand-in, in a fresh data
// directory, with a logger whose lines the test can read; everything stops with stop().
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BrokerOptions, RunningBroker } from "../../src/broker.ts";
import type { BrokerConfig } from "../../src/config.ts";
import { hashToken } from "../../src/crypto.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { brokerEnv as brokerEnvFor, configFromEnv, freePort, standInChildBinds, startConfiguredBroker } from "../../src/testing/broker.ts";
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

/** What the stand-in children see in their sandbox besides the system and bun itself (see standInChildBinds). */
export const CHILD_SANDBOX_BIND = standInChildBinds().join(",");

export { brokerEnvFor, freePort };

export async function startTestBroker(
  options: { forgejo?: FakeForgejoOptions; env?: Record<string, string>; broker?: Partial<BrokerOptions>; dataDir?: string } = {},
): Promise<TestBroker> {
  const forgejo = await startFakeForgejo(options.forgejo);
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), "fmb-test-"));
  const port = await freePort();
  const config = configFromEnv({ ...brokerEnvFor(forgejo, port, dataDir), ...options.env });
  const logger = createMemoryLogger();
  const start = () => startConfiguredBroker(config, { logger, ...options.broker });
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

/** Who an access token stands for, as the broker's store says (it must be live). */
export async function identityOf(t: TestBroker, accessToken: string) {
  return (await t.broker.store.findAccessIdentity(hashToken(accessToken), Date.now()))!;
}

/** The principal child serving the grant an access token belongs to (one must be serving). */
export async function principalChildOf(t: TestBroker, accessToken: string) {
  return t.broker.principals.childOf((await identityOf(t, accessToken)).grantId)!;
}

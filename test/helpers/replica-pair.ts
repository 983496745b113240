// A second replica beside a test broker, as behind a load balancer: the same public URL, Redis and sealing
// key, A's database file standing in for PostgreSQL; started once both say Redis is connected.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBroker, type BrokerOptions, type RunningBroker } from "../../src/broker.ts";
import { hiddenFromChildren, loadConfig } from "../../src/config.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { probeSandbox } from "../../src/supervisor/sandbox.ts";
import { brokerEnvFor, freePort, type TestBroker } from "./broker.ts";
import { waitWhile } from "./promises.ts";

export interface SecondReplica {
  broker: RunningBroker;
  /** Stops the replica and removes its data directory. */
  stop(): Promise<void>;
}

export async function startSecondReplica(a: TestBroker, env: Record<string, string>, options: Partial<BrokerOptions> = {}): Promise<SecondReplica> {
  const dataDir = mkdtempSync(join(tmpdir(), "fmb-test-"));
  const loaded = loadConfig({ ...brokerEnvFor(a.forgejo, await freePort(), dataDir), ...env, BROKER_PUBLIC_URL: a.config.publicUrl });
  if (!loaded.ok) throw new Error(loaded.problems.join("\n"));
  const sandbox = await probeSandbox(loaded.config.child.sandbox, hiddenFromChildren(loaded.config), { path: process.env.PATH ?? "" });
  const broker = await startBroker(loaded.config, { logger: createMemoryLogger(), sandbox, ...options, storePath: join(a.dataDir, "broker.sqlite") });
  // Each replica connects to Redis in the background: wait until both say they are connected.
  const healthy = async (url: string) => (await fetch(`${url}/healthz`)).status === 200;
  await waitWhile(async () => !(await healthy(a.config.publicUrl)) || !(await healthy(broker.url)), 100, 20);
  return {
    broker,
    async stop() {
      await broker.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

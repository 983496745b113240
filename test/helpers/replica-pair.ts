// Two replicas in this process, as behind a load balancer: the same public URL, Redis prefix (the run's own) and
// sealing key, A's database (its file, or PostgreSQL when the env names one); started once both say Redis is connected.
import { RedisClient } from "bun";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBroker, type BrokerOptions, type RunningBroker } from "../../src/broker.ts";
import { hiddenFromChildren, loadConfig } from "../../src/config.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { probeSandbox } from "../../src/supervisor/sandbox.ts";
import { brokerEnvFor, freePort, startTestBroker, type TestBroker } from "./broker.ts";
import { childCommand } from "./mcp.ts";
import { waitWhile } from "./promises.ts";
import { deleteKeys, REDIS_URL } from "./redis.ts";

export interface ReplicaPair {
  a: TestBroker;
  b: RunningBroker;
  /** The run's Redis key prefix, and a connection of the test's for reading and writing under it. */
  prefix: string;
  redis: RedisClient;
  /** The environment both replicas run with (BROKER_SEALING_KEY, …). */
  env: Record<string, string>;
  /** Stops B and A, removes B's data directory and the run's Redis keys, closes the connection. */
  stop(): Promise<void>;
}

export interface ReplicaPairOptions {
  /** More environment of both replicas (BROKER_DATABASE_URL, BROKER_TRUSTED_PROXIES, …). */
  env?: Record<string, string>;
  /** Options of both replicas' startBroker (a rate limit, …). */
  broker?: Partial<BrokerOptions>;
  /** Options of B's alone (a logger the test reads, …). */
  b?: Partial<BrokerOptions>;
}

export async function startReplicaPair(options: ReplicaPairOptions = {}): Promise<ReplicaPair> {
  const prefix = `fmb-test-${randomUUID()}:`;
  const env = {
    BROKER_REDIS_URL: REDIS_URL,
    BROKER_REDIS_PREFIX: prefix,
    BROKER_SEALING_KEY: randomBytes(32).toString("base64"),
    BROKER_CHILD_COMMAND: childCommand(),
    ...options.env,
  };
  const redis = new RedisClient(REDIS_URL);
  const cleanups: (() => Promise<unknown> | unknown)[] = [
    async () => {
      await deleteKeys(redis, `${prefix}*`);
      redis.close();
    },
  ];
  const stop = async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  };
  try {
    const a = await startTestBroker({ env, broker: options.broker });
    cleanups.push(() => a.stop());
    const b = await startSecondReplica(a, env, { ...options.broker, ...options.b });
    cleanups.push(b.stop);
    // Each replica connects to Redis in the background: wait until both say they are connected.
    const healthy = async (url: string) => (await fetch(`${url}/healthz`)).status === 200;
    await waitWhile(async () => !(await healthy(a.config.publicUrl)) || !(await healthy(b.broker.url)), 100, 20);
    return { a, b: b.broker, prefix, redis, env, stop };
  } catch (error) {
    await stop().catch(() => {});
    throw error;
  }
}

/** B: a replica answering for A's public URL on a port of its own, in a data directory of its own over A's database. */
async function startSecondReplica(a: TestBroker, env: Record<string, string>, options: Partial<BrokerOptions>): Promise<{ broker: RunningBroker; stop(): Promise<void> }> {
  const dataDir = mkdtempSync(join(tmpdir(), "fmb-test-"));
  const loaded = loadConfig({ ...brokerEnvFor(a.forgejo, await freePort(), dataDir), ...env, BROKER_PUBLIC_URL: a.config.publicUrl });
  if (!loaded.ok) throw new Error(loaded.problems.join("\n"));
  const sandbox = await probeSandbox(loaded.config.child.sandbox, hiddenFromChildren(loaded.config), { path: process.env.PATH ?? "" });
  // storePath is A's SQLite file; with BROKER_DATABASE_URL both use PostgreSQL and it goes unused.
  const broker = await startBroker(loaded.config, { logger: createMemoryLogger(), sandbox, ...options, storePath: join(a.dataDir, "broker.sqlite") });
  return {
    broker,
    async stop() {
      await broker.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

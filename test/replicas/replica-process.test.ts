// A replica as an operator runs it (`bun src/index.ts`): its liveness key names its BROKER_REPLICA_URL
// while it runs, and SIGTERM removes it rather than leaving the others to wait for its expiry.
import { afterAll, expect, test } from "bun:test";
import { RedisClient } from "bun";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startFakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { startBrokerProcess } from "../helpers/broker-process.ts";
import { childCommand } from "../helpers/mcp.ts";
import { waitWhile } from "../helpers/promises.ts";
import { deleteKeys, REDIS_URL } from "../helpers/redis.ts";

const prefix = `fmb-test-${randomUUID()}:`;
const redis = new RedisClient(REDIS_URL);

afterAll(async () => {
  await deleteKeys(redis, `${prefix}*`);
  redis.close();
});

test("SIGTERM deletes the replica's liveness key", async () => {
  const forgejo = await startFakeForgejo();
  const dataDir = mkdtempSync(join(tmpdir(), "fmb-test-"));
  const replicaUrl = "http://replica-7.internal:8080";
  const broker = await startBrokerProcess(forgejo, dataDir, {
    BROKER_REDIS_URL: REDIS_URL,
    BROKER_REDIS_PREFIX: prefix,
    BROKER_REPLICA_URL: replicaUrl,
    BROKER_CHILD_COMMAND: childCommand(),
  });
  try {
    // Connected once /healthz says so; the key is written before the connection counts as up.
    await waitWhile(async () => (await fetch(`${broker.url}/healthz`)).status !== 200, 50, 20);
    const keys = (await redis.send("KEYS", [`${prefix}replica:*`])) as string[];
    expect(keys).toHaveLength(1);
    expect(await redis.get(keys[0]!)).toBe(replicaUrl);
    expect(await broker.stop("SIGTERM")).toBe(0);
    expect(await redis.exists(keys[0]!)).toBe(false);
    // The Redis URL is not in the log; the replica's own URL is.
    expect(broker.log()).not.toContain("redis://");
    expect(broker.log()).toContain(replicaUrl);
  } finally {
    await broker.stop("SIGKILL");
    await forgejo.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}, 30_000);

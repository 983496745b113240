// Two replicas on PostgreSQL and Redis: a revocation reaches the other replica once, through Redis alone,
// and the revoking replica runs its own revocation path once (no echo back through the other).
import { afterAll, beforeAll, expect, test } from "bun:test";
import { RedisClient } from "bun";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBroker, type RunningBroker } from "../../src/broker.ts";
import { hiddenFromChildren, loadConfig } from "../../src/config.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { probeSandbox } from "../../src/supervisor/sandbox.ts";
import { postForm } from "../../src/testing/oauth-client.ts";
import { brokerEnvFor, freePort, startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, connectAs } from "../helpers/mcp.ts";
import { createTestDatabase, type TestDatabase } from "../helpers/postgres.ts";
import { waitWhile } from "../helpers/promises.ts";

const REDIS_URL = "redis://127.0.0.1:6379";
const prefix = `fmb-test-${randomUUID()}:`;
let database: TestDatabase;
let a: TestBroker;
let b: RunningBroker;
let bDataDir: string;

/** Each grant the broker's revocation path ran for, in order, and a wait for the next one. */
function countRevocations(broker: RunningBroker): { runs: string[]; next: () => Promise<string> } {
  const runs: string[] = [];
  const waiting: ((grantId: string) => void)[] = [];
  const original = broker.registry.grantRevoked.bind(broker.registry);
  broker.registry.grantRevoked = (grantId) => {
    runs.push(grantId);
    for (const resolve of waiting.splice(0)) resolve(grantId);
    return original(grantId);
  };
  return { runs, next: () => new Promise((resolve) => waiting.push(resolve)) };
}

beforeAll(async () => {
  database = await createTestDatabase();
  const shared = {
    BROKER_DATABASE_URL: database.url,
    BROKER_SEALING_KEY: randomBytes(32).toString("base64"),
    BROKER_REDIS_URL: REDIS_URL,
    BROKER_REDIS_PREFIX: prefix,
    BROKER_CHILD_COMMAND: childCommand(),
  };
  a = await startTestBroker({ env: shared });
  bDataDir = mkdtempSync(join(tmpdir(), "fmb-test-"));
  const loaded = loadConfig({ ...brokerEnvFor(a.forgejo, await freePort(), bDataDir), ...shared, BROKER_PUBLIC_URL: a.config.publicUrl });
  if (!loaded.ok) throw new Error(loaded.problems.join("\n"));
  const sandbox = await probeSandbox(loaded.config.child.sandbox, hiddenFromChildren(loaded.config), { path: process.env.PATH ?? "" });
  b = await startBroker(loaded.config, { logger: createMemoryLogger(), sandbox });
  // Each replica subscribes to Redis in the background: wait until both say they are connected.
  const healthy = async (url: string) => (await fetch(`${url}/healthz`)).status === 200;
  await waitWhile(async () => !(await healthy(a.config.publicUrl)) || !(await healthy(b.url)), 100, 20);
});

afterAll(async () => {
  await b?.stop();
  await a?.stop();
  rmSync(bDataDir, { recursive: true, force: true });
  await database?.drop();
  const redis = new RedisClient(REDIS_URL);
  const left = (await redis.send("KEYS", [`${prefix}*`])) as string[];
  if (left.length > 0) await redis.del(...left);
  redis.close();
});

test("with Redis and PostgreSQL, a grant revoked on A runs B's revocation path once, and A's once", async () => {
  const onA = countRevocations(a.broker);
  const onB = countRevocations(b);
  const revoke = async (login: string) => {
    const signedIn = await connectAs(a, login);
    await signedIn.client.close();
    const revoked = await postForm(`${a.config.publicUrl}/oauth/revoke`, {
      token: signedIn.provider.savedTokens!.refresh_token!,
      client_id: signedIn.provider.clientInformation()!.client_id,
    });
    expect(revoked.status).toBe(200);
  };

  const heardFirst = onB.next();
  await revoke("alice");
  const aliceGrant = await heardFirst;
  // A second revocation, announced after the first in every channel: once B has heard it, any copy of the first has arrived too.
  let heardBob = onB.next();
  await revoke("bob");
  while ((await heardBob) === aliceGrant) heardBob = onB.next();
  // An echo (B announcing again what it heard) would have been sent to A before Bob's sign-in began.

  expect(onB.runs.filter((grantId) => grantId === aliceGrant)).toHaveLength(1);
  expect(onA.runs.filter((grantId) => grantId === aliceGrant)).toHaveLength(1);
}, 30_000);

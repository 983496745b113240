// Two replicas on PostgreSQL and Redis: a revocation reaches the other replica once, through Redis alone,
// and the revoking replica runs its own revocation path once (no echo back through the other).
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { RunningBroker } from "../../src/broker.ts";
import { postForm } from "../../src/testing/oauth-client.ts";
import type { TestBroker } from "../helpers/broker.ts";
import { connectAs } from "../helpers/mcp.ts";
import { createTestDatabase, type TestDatabase } from "../helpers/postgres.ts";
import { startReplicaPair, type ReplicaPair } from "../helpers/replica-pair.ts";

let database: TestDatabase;
let pair: ReplicaPair;
let a: TestBroker;
let b: RunningBroker;

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
  ({ a, b } = pair = await startReplicaPair({ env: { BROKER_DATABASE_URL: database.url } }));
});

afterAll(async () => {
  await pair?.stop();
  await database?.drop();
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

// A revocation committed by one replica reaches every other replica's store (LISTEN/NOTIFY) within a
// second: its listeners hear the grant, and its identity cache refuses the token on its next use.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { AccessIdentityCache } from "../../src/oauth/identity-cache.ts";
import { PgStore } from "../../src/store/pg-store.ts";
import { createTestDatabase, type TestDatabase } from "../helpers/postgres.ts";

let database: TestDatabase;
let here: PgStore;
let there: PgStore;

beforeAll(async () => {
  database = await createTestDatabase();
  [here, there] = await Promise.all([PgStore.open(database.url, { maxConnections: 2 }), PgStore.open(database.url, { maxConnections: 2 })]);
});
afterAll(async () => {
  // Dropped even when a replica failed to open.
  await Promise.allSettled([here?.close(), there?.close()]);
  await database.drop();
});

/** The next grant `store` hears revoked, or a rejection after `withinMs`. */
function nextRevocation(store: PgStore, withinMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (stop(), reject(new Error(`no revocation heard within ${withinMs} ms`))), withinMs);
    const stop = store.onRevocation((grantId) => {
      clearTimeout(timer);
      stop();
      resolve(grantId);
    });
  });
}

test("a token revoked on one replica is refused by another's identity cache within 1 s", async () => {
  const now = Date.now();
  await here.createClient({ id: "c1", secretHash: null, tokenEndpointAuthMethod: "none", name: "C", redirectUris: [], metadata: {}, createdAt: 0 });
  const grant = await here.findOrCreateGrant({ id: "g1", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now });
  const pair = (n: number) => ({ grantId: grant.id, familyId: `f${n}`, clientId: "c1", resource: "r", scope: "mcp", accessTokenHash: `a${n}`, accessExpiresAt: now + 3600_000, refreshTokenHash: `r${n}`, refreshExpiresAt: now + 86_400_000 });
  await here.insertTokenPair(pair(1), now);
  await here.insertTokenPair(pair(2), now);
  const cache = new AccessIdentityCache(there, { ttlMs: 60_000, maxEntries: 10 });
  expect((await cache.lookup("a1", now))?.forgejoLogin).toBe("alice");

  const heardThere = nextRevocation(there, 1000);
  expect(await here.revokeToken("a1", "c1", now)).toBe("access");
  expect(await heardThere).toBe(grant.id);
  expect(await cache.lookup("a1", now)).toBeUndefined();

  // A whole grant, revoked the other way round.
  const cacheHere = new AccessIdentityCache(here, { ttlMs: 60_000, maxEntries: 10 });
  expect((await cacheHere.lookup("a2", now))?.forgejoLogin).toBe("alice");
  const heardHere = nextRevocation(here, 1000);
  await there.revokeGrantsOfUser(7, now);
  expect(await heardHere).toBe(grant.id);
  expect(await cacheHere.lookup("a2", now)).toBeUndefined();
});

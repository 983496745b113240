// A revocation committed by one replica reaches every other replica's store (LISTEN/NOTIFY) within a
// second: its listeners hear the grant, and its identity cache refuses the token on its next use; with
// Redis configured, NOTIFY stays silent, since Redis's channel already carries it.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { AccessIdentityCache } from "../../src/oauth/identity-cache.ts";
import { openStore, type OpenedStore } from "../../src/store/open.ts";
import { PgStore } from "../../src/store/pg-store.ts";
import type { Store } from "../../src/store/store.ts";
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

describe("the fan-out the configuration picks", () => {
  const redis = { url: "redis://127.0.0.1:6379", prefix: "fmb:", replicaUrl: "http://127.0.0.1:1" };
  const opened: OpenedStore[] = [];
  beforeEach(() => database.truncate());
  afterEach(async () => {
    await Promise.all(opened.splice(0).map(({ store }) => store.close()));
  });

  async function replicaStores(config: { redis: typeof redis | undefined }): Promise<[Store, Store]> {
    const open = () => openStore({ dataDir: "/nonexistent", databaseUrl: database.url, ...config });
    opened.push(await open(), await open());
    return [opened[0]!.store, opened[1]!.store];
  }

  async function grantOf(store: Store): Promise<string> {
    await store.createClient({ id: "c1", secretHash: null, tokenEndpointAuthMethod: "none", name: "C", redirectUris: [], metadata: {}, createdAt: 0 });
    return (await store.findOrCreateGrant({ id: "g1", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now: Date.now() })).id;
  }

  test("with Redis configured, a revocation goes out on Redis alone: nothing on NOTIFY, so the other replica's revocation path runs once", async () => {
    const [here, there] = await replicaStores({ redis });
    const heardThere: string[] = [];
    there.onRevocation((grantId) => heardThere.push(grantId));
    // An observer of the channel: what it hears before its own marker is everything the revocation announced.
    const observer = new SQL({ url: database.url, max: 1 });
    const announced: string[] = [];
    let markerHeard!: () => void;
    const marker = new Promise<void>((resolve) => (markerHeard = resolve));
    const subscription = await observer.listen("fmb_revocations", (payload) => (payload === "marker" ? markerHeard() : announced.push(payload)));
    try {
      const grantId = await grantOf(here);
      await here.revokeGrant(grantId, Date.now());
      await observer`SELECT pg_notify('fmb_revocations', 'marker')`;
      await marker;
      expect(announced).toEqual([]);
      expect(heardThere).toEqual([]);
      expect(there.revocationCount).toBe(0);
    } finally {
      await subscription.unlisten();
      await observer.close();
    }
  });

  test("without Redis, the other replica hears the revocation through NOTIFY", async () => {
    const [here, there] = await replicaStores({ redis: undefined });
    const grantId = await grantOf(here);
    const heardThere = nextRevocation(there as PgStore, 1000);
    await here.revokeGrant(grantId, Date.now());
    expect(await heardThere).toBe(grantId);
  });
});

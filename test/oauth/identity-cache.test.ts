import { describe, expect, test } from "bun:test";
import { AccessIdentityCache } from "../../src/oauth/identity-cache.ts";
import { SqliteStore } from "../../src/store/sqlite-store.ts";
import { type Store, type TokenIdentity } from "../../src/store/store.ts";

const identityOf = (expiresAt: number): TokenIdentity => ({
  tokenHash: "h",
  grantId: "g1",
  clientId: "c1",
  forgejoUserId: 1,
  forgejoLogin: "alice",
  scopes: ["mcp"],
  resource: "http://broker.test/mcp",
  expiresAt,
});

/** A store whose tokens and revocations the test sets, counting the queries the cache lets through. */
function storeWith(tokens: Record<string, TokenIdentity>) {
  const store = {
    queries: 0,
    revocationCount: 0,
    async findAccessIdentity(hash: string, now: number) {
      store.queries++;
      const identity = tokens[hash];
      return identity !== undefined && identity.expiresAt > now ? identity : undefined;
    },
    revoke(hash: string) {
      delete tokens[hash];
      store.revocationCount++;
    },
  };
  return store;
}

describe("AccessIdentityCache", () => {
  test("a grant revoked on another replica (this store's counter unchanged) is looked up again; other grants stay cached", async () => {
    const tokens = { h1: identityOf(100_000), h2: { ...identityOf(100_000), grantId: "g2" } };
    const store = storeWith(tokens);
    const cache = new AccessIdentityCache(store, { ttlMs: 5_000, maxEntries: 10 });
    await cache.lookup("h1", 1_000);
    await cache.lookup("h2", 1_000);
    // The other replica revoked g1 in the shared database.
    delete (tokens as Record<string, TokenIdentity>).h1;
    cache.forgetGrant("g1");
    expect(await cache.lookup("h1", 1_001)).toBeUndefined();
    expect((await cache.lookup("h2", 1_001))?.grantId).toBe("g2");
    expect(store.queries).toBe(3);
  });

  test("a lookup under way when another replica's revocation of its grant arrives keeps no answer: the next one asks again", async () => {
    const tokens: Record<string, TokenIdentity> = { h1: identityOf(100_000) };
    const store = storeWith(tokens);
    const cache = new AccessIdentityCache(store, { ttlMs: 5_000, maxEntries: 10 });
    const asking = cache.lookup("h1", 1_000);
    // The database answered before the revocation; the notice lands while that answer is on its way.
    delete tokens.h1;
    cache.forgetGrant("g1");
    expect((await asking)?.grantId).toBe("g1");
    expect(await cache.lookup("h1", 1_001)).toBeUndefined();
    expect(store.queries).toBe(2);
  });

  test("a token seen within the TTL is answered without a query", async () => {
    const store = storeWith({ h1: identityOf(100_000) });
    const cache = new AccessIdentityCache(store, { ttlMs: 5_000, maxEntries: 10 });
    expect((await cache.lookup("h1", 1_000))?.forgejoLogin).toBe("alice");
    expect((await cache.lookup("h1", 5_999))?.forgejoLogin).toBe("alice");
    expect(store.queries).toBe(1);
  });

  test("after the TTL the store is asked again", async () => {
    const store = storeWith({ h1: identityOf(100_000) });
    const cache = new AccessIdentityCache(store, { ttlMs: 5_000, maxEntries: 10 });
    await cache.lookup("h1", 1_000);
    expect((await cache.lookup("h1", 6_000))?.forgejoLogin).toBe("alice");
    expect(store.queries).toBe(2);
  });

  test("a token is refused from the millisecond it expires, whatever the TTL", async () => {
    const store = storeWith({ h1: identityOf(2_000) });
    const cache = new AccessIdentityCache(store, { ttlMs: 60_000, maxEntries: 10 });
    expect(await cache.lookup("h1", 1_999)).toBeDefined();
    expect(await cache.lookup("h1", 2_000)).toBeUndefined();
  });

  test("any revocation through the store makes every cached answer be looked up again", async () => {
    const store = storeWith({ h1: identityOf(100_000), h2: identityOf(100_000) });
    const cache = new AccessIdentityCache(store, { ttlMs: 60_000, maxEntries: 10 });
    await cache.lookup("h1", 1_000);
    await cache.lookup("h2", 1_000);
    store.revoke("h1");
    expect(await cache.lookup("h1", 1_001)).toBeUndefined();
    expect((await cache.lookup("h2", 1_001))?.forgejoLogin).toBe("alice");
    expect(store.queries).toBe(4);
  });

  test("unknown tokens are never remembered: each is asked about", async () => {
    const store = storeWith({});
    const cache = new AccessIdentityCache(store, { ttlMs: 60_000, maxEntries: 10 });
    expect(await cache.lookup("nope", 1)).toBeUndefined();
    expect(await cache.lookup("nope", 2)).toBeUndefined();
    expect(store.queries).toBe(2);
  });

  test("past maxEntries the oldest answer is forgotten", async () => {
    const store = storeWith({ a: identityOf(100_000), b: identityOf(100_000), c: identityOf(100_000) });
    const cache = new AccessIdentityCache(store, { ttlMs: 60_000, maxEntries: 2 });
    for (const hash of ["a", "b", "c"]) await cache.lookup(hash, 1);
    expect(store.queries).toBe(3);
    await cache.lookup("c", 2);
    await cache.lookup("b", 2);
    expect(store.queries).toBe(3);
    await cache.lookup("a", 2);
    expect(store.queries).toBe(4);
  });
});

describe("AccessIdentityCache over the real store", () => {
  const seeded = async () => {
    const store = SqliteStore.open(":memory:");
    await store.createClient({ id: "c1", secretHash: null, tokenEndpointAuthMethod: "none", name: "C", redirectUris: ["http://localhost/cb"], metadata: {}, createdAt: 0 });
    await store.findOrCreateGrant({ id: "g1", clientId: "c1", forgejoUserId: 1, forgejoLogin: "alice", scope: "mcp", now: 0 });
    await store.insertTokenPair(
      {
        grantId: "g1",
        familyId: "f1",
        clientId: "c1",
        resource: "http://broker.test/mcp",
        scope: "mcp",
        accessTokenHash: "a1",
        accessExpiresAt: 100_000,
        refreshTokenHash: "r1",
        refreshExpiresAt: 1_000_000,
      },
      0,
    );
    return { store, cache: new AccessIdentityCache(store, { ttlMs: 60_000, maxEntries: 10 }) };
  };

  test.each([
    ["revoking the access token (RFC 7009)", (store: Store) => store.revokeToken("a1", "c1", 10)],
    ["revoking its refresh token, which ends the family", (store: Store) => store.revokeToken("r1", "c1", 10)],
    ["revoking the grant", (store: Store) => store.revokeGrant("g1", 10)],
    ["revoking every grant of the user", (store: Store): Promise<unknown> => store.revokeGrantsOfUser(1, 10)],
  ])("%s refuses the cached token on its very next use", async (_name, revoke) => {
    const { store, cache } = await seeded();
    expect((await cache.lookup("a1", 5))?.forgejoLogin).toBe("alice");
    await revoke(store);
    expect(await cache.lookup("a1", 11)).toBeUndefined();
  });
});

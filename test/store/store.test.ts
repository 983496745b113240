// The store's guarantees the OAuth endpoints lean on: single-use rules hold under repetition,
// revocation reaches every token of a grant, and expired rows are purged but replays still caught.
import { describe, expect, test } from "bun:test";
import { Store } from "../../src/store/store.ts";

function seeded() {
  const store = Store.open(":memory:");
  store.createClient({ id: "c1", secretHash: null, tokenEndpointAuthMethod: "none", name: "C", redirectUris: ["http://localhost/cb"], metadata: {}, createdAt: 0 });
  const grant = store.findOrCreateGrant({ id: "g1", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now: 0 });
  const pair = (family: string, n: number, accessExpiresAt = 1000, refreshExpiresAt = 10_000) =>
    store.insertTokenPair(
      { grantId: grant.id, familyId: family, clientId: "c1", resource: "r", scope: "mcp", accessTokenHash: `a${n}`, accessExpiresAt, refreshTokenHash: `r${n}`, refreshExpiresAt },
      0,
    );
  return { store, grant, pair };
}

describe("Store", () => {
  test("WAL mode, foreign keys and busy timeout are on for a file database", () => {
    const path = `${require("node:os").tmpdir()}/fmb-store-${crypto.randomUUID()}.sqlite`;
    const store = Store.open(path);
    const pragma = (name: string) => Object.values((store.db as unknown as { $client: import("bun:sqlite").Database }).$client.query(`PRAGMA ${name}`).get() as object)[0];
    expect(pragma("journal_mode")).toBe("wal");
    expect(pragma("foreign_keys")).toBe(1);
    expect(pragma("busy_timeout")).toBe(5000);
    expect(pragma("synchronous")).toBe(1);
    store.close();
  });

  test("one active grant per (client, user): a second sign-in reuses it; after revocation a new one is made", () => {
    const { store, grant } = seeded();
    expect(store.findOrCreateGrant({ id: "g2", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice2", scope: "mcp", now: 1 }).id).toBe(grant.id);
    store.revokeGrant(grant.id, 2);
    expect(store.findOrCreateGrant({ id: "g3", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now: 3 }).id).toBe("g3");
  });

  test("an authorization code redeems once; the replay revokes its family", () => {
    const { store, grant, pair } = seeded();
    store.createAuthCode({ codeHash: "k", grantId: grant.id, clientId: "c1", redirectUri: "u", codeChallenge: "x", resource: "r", scope: "mcp", familyId: "f1", expiresAt: 60, usedAt: null });
    expect(store.redeemAuthCode("k", 1).status).toBe("redeemed");
    pair("f1", 1);
    expect(store.findAccessIdentity("a1", 2)).toBeDefined();
    expect(store.redeemAuthCode("k", 2).status).toBe("replayed");
    expect(store.findAccessIdentity("a1", 3)).toBeUndefined();
    expect(store.redeemAuthCode("nope", 3).status).toBe("unknown");
    store.createAuthCode({ codeHash: "late", grantId: grant.id, clientId: "c1", redirectUri: "u", codeChallenge: "x", resource: "r", scope: "mcp", familyId: "f2", expiresAt: 60, usedAt: null });
    expect(store.redeemAuthCode("late", 61).status).toBe("expired");
  });

  test("revoking a grant (or all of a user's grants) kills every token under it", () => {
    const { store, grant, pair } = seeded();
    pair("f1", 1);
    pair("f2", 2);
    expect(store.revokeGrantsOfUser(7, 5)).toEqual([grant.id]);
    expect(store.findAccessIdentity("a1", 6)).toBeUndefined();
    expect(store.findAccessIdentity("a2", 6)).toBeUndefined();
    expect(store.rotateRefreshToken("r2", "c1", 6, 10_000).status).toBe("invalid");
  });

  test("a grant has live tokens while a live access token or an unrotated, unexpired refresh token is left", () => {
    const { store, grant, pair } = seeded();
    pair("f1", 1, 1000, 10_000);
    pair("f2", 2, 1000, 10_000);
    const live = (now: number) => store.grantHasLiveTokens(grant.id, now);
    expect(live(1)).toBe(true);
    // The access tokens expired: the refresh tokens can still get new ones.
    expect(live(2000)).toBe(true);
    store.revokeToken("r1", "c1", 2);
    expect(live(2000)).toBe(true);
    // Rotated refresh tokens live on only through their successors, which are not here.
    store.rotateRefreshToken("r2", "c1", 3, 60_000);
    expect(live(2000)).toBe(false);
    expect(live(1)).toBe(true);
    store.revokeToken("a2", "c1", 4);
    expect(live(1)).toBe(false);
    expect(live(20_000)).toBe(false);
  });

  test("every revocation reports its grant once committed; unknown tokens report nothing", () => {
    const { store, grant, pair } = seeded();
    pair("f1", 1);
    pair("f2", 2);
    const heard: { grantId: string; accessLive: boolean }[] = [];
    // The listener reads the store as it is after the revocation: committed, not half done.
    const stop = store.onRevocation((grantId) => heard.push({ grantId, accessLive: store.findAccessIdentity("a1", 1) !== undefined }));
    expect(store.revokeToken("nope", "c1", 1)).toBe("unknown");
    expect(heard).toEqual([]);
    expect(store.revokeToken("r1", "c1", 1)).toBe("refresh");
    expect(store.revokeToken("a2", "c1", 1)).toBe("access");
    store.revokeGrantsOfUser(7, 2);
    expect(heard).toEqual([
      { grantId: grant.id, accessLive: false },
      { grantId: grant.id, accessLive: false },
      { grantId: grant.id, accessLive: false },
    ]);
    stop();
    store.revokeGrant(grant.id, 3);
    expect(heard).toHaveLength(3);
  });

  test("purge removes what expired and keeps live rows, rotated tokens included until they expire", () => {
    const { store, pair } = seeded();
    pair("f1", 1, 100, 200);
    pair("f2", 2, 1000, 10_000);
    expect(store.rotateRefreshToken("r2", "c1", 50, 10).status).toBe("rotated");
    expect(store.purgeExpired(300)).toBe(2);
    expect(store.findAccessIdentity("a2", 300)).toBeDefined();
    const replay = store.rotateRefreshToken("r2", "c1", 400, 10);
    expect(replay).toMatchObject({ status: "replayed", grantRevoked: true });
  });
});

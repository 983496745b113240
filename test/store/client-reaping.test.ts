// Clients that clean up after themselves: one never used is deleted 24 h after registering, one with
// nothing live for the idle period is deleted with its grants and tokens, and neither while someone signs in.
import { describe, expect, test } from "bun:test";
import { s256Challenge } from "../../src/oauth/pkce.ts";
import { Store } from "../../src/store/store.ts";

const HOUR = 3600_000;
const DAY = 24 * HOUR;
const RULES = { unusedMs: DAY, idleMs: 90 * DAY, stampEveryMs: HOUR };

function storeWithClient(createdAt = 0) {
  const store = Store.open(":memory:");
  store.createClient({ id: "c1", secretHash: null, tokenEndpointAuthMethod: "none", name: "C", redirectUris: ["http://localhost/cb"], metadata: {}, createdAt });
  const exists = () => store.getClient("c1") !== undefined;
  const signIn = (now: number, accessExpiresAt: number, refreshExpiresAt: number) => {
    const grant = store.findOrCreateGrant({ id: `g${now}`, clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now });
    store.insertTokenPair(
      { grantId: grant.id, familyId: `f${now}`, clientId: "c1", resource: "r", scope: "mcp", accessTokenHash: `a${now}`, accessExpiresAt, refreshTokenHash: `r${now}`, refreshExpiresAt },
      now,
    );
    return grant;
  };
  const startSignIn = (now: number) =>
    store.createAuthorization(
      {
        id: `z${now}`,
        clientId: "c1",
        redirectUri: "http://localhost/cb",
        codeChallenge: s256Challenge("v".repeat(43)),
        clientState: null,
        resource: "r",
        scope: "mcp",
        csrfHash: "h",
        browserHash: "b",
        upstreamStateHash: null,
        upstreamVerifierSealed: null,
        createdAt: now,
        expiresAt: now + 10 * 60_000,
        consumedAt: null,
      },
      10,
    );
  return { store, exists, signIn, startSignIn };
}

describe("reaping clients", () => {
  test("a client with no grant is kept for 24 h after registering, then deleted", () => {
    const { store, exists } = storeWithClient(1_000);
    expect(store.reapClients(1_000 + DAY, RULES)).toEqual({ unused: 0, idle: 0 });
    expect(exists()).toBe(true);
    expect(store.reapClients(1_000 + DAY + 1, RULES)).toEqual({ unused: 1, idle: 0 });
    expect(exists()).toBe(false);
  });

  test("a sign-in in progress keeps an unused client", () => {
    const { store, exists, startSignIn } = storeWithClient();
    startSignIn(DAY);
    expect(store.reapClients(DAY + 1, RULES).unused).toBe(0);
    expect(exists()).toBe(true);
    // Once that flow has expired, nothing holds it.
    expect(store.reapClients(DAY + 11 * 60_000, RULES).unused).toBe(1);
  });

  test("a client whose tokens stay live is never deleted, however old", () => {
    const { store, exists, signIn } = storeWithClient();
    signIn(HOUR, HOUR + 1000, 400 * DAY);
    for (let day = 1; day < 390; day += 7) store.reapClients(day * DAY, RULES);
    expect(exists()).toBe(true);
  });

  test("a client is deleted, with its grants and tokens, once nothing of it has been live for the idle period", () => {
    const { store, exists, signIn } = storeWithClient();
    const grant = signIn(0, HOUR, 30 * DAY);
    // Reaped while its refresh token lives: that use is written down.
    store.reapClients(29 * DAY, RULES);
    expect(store.reapClients(29 * DAY + 90 * DAY, RULES)).toEqual({ unused: 0, idle: 0 });
    expect(exists()).toBe(true);
    expect(store.reapClients(29 * DAY + 90 * DAY + 1, RULES)).toEqual({ unused: 0, idle: 1 });
    expect(exists()).toBe(false);
    expect(store.grantHasLiveTokens(grant.id, 0)).toBe(false);
    const left = (store.db as unknown as { $client: import("bun:sqlite").Database }).$client;
    for (const table of ["grants", "access_tokens", "refresh_tokens"]) expect(left.query(`SELECT count(*) AS n FROM ${table}`).get()).toEqual({ n: 0 });
  });

  test("a revoked grant counts as unused from its last use", () => {
    const { store, exists, signIn } = storeWithClient();
    const grant = signIn(0, HOUR, 30 * DAY);
    store.revokeGrant(grant.id, 2 * HOUR);
    expect(store.reapClients(90 * DAY, RULES).idle).toBe(0);
    expect(store.reapClients(90 * DAY + 1, RULES).idle).toBe(1);
    expect(exists()).toBe(false);
  });

  test("a client used again within the idle period starts counting again", () => {
    const { store, exists, signIn } = storeWithClient();
    signIn(0, HOUR, 2 * HOUR);
    signIn(80 * DAY, 80 * DAY + HOUR, 80 * DAY + 2 * HOUR);
    expect(store.reapClients(100 * DAY, RULES).idle).toBe(0);
    expect(exists()).toBe(true);
  });
});

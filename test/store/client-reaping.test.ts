// Clients that clean up after themselves: one never used is deleted 24 h after registering, one with
// nothing live for the idle period is deleted with its grants and tokens, and neither while someone signs in.
import { describe, expect, test } from "bun:test";
import { s256Challenge } from "../../src/oauth/pkce.ts";
import type { Store } from "../../src/store/store.ts";
import { storeDialects, type StoreDialect } from "../helpers/store-dialects.ts";

const HOUR = 3600_000;
const DAY = 24 * HOUR;
const RULES = { unusedMs: DAY, idleMs: 90 * DAY, stampEveryMs: HOUR };

const dialects = await storeDialects();

async function storeWithClient(dialect: StoreDialect, createdAt = 0) {
  const store: Store = await dialect.open();
  await store.createClient({ id: "c1", secretHash: null, tokenEndpointAuthMethod: "none", name: "C", redirectUris: ["http://localhost/cb"], metadata: {}, createdAt });
  const exists = async () => (await store.getClient("c1")) !== undefined;
  const signIn = async (now: number, accessExpiresAt: number, refreshExpiresAt: number) => {
    const grant = await store.findOrCreateGrant({ id: `g${now}`, clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now });
    await store.insertTokenPair(
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

describe.each(dialects)("reaping clients on %s", (_name, dialect) => {
  test("a client with no grant is kept for 24 h after registering, then deleted", async () => {
    const { store, exists } = await storeWithClient(dialect, 1_000);
    expect(await store.reapClients(1_000 + DAY, RULES)).toEqual({ unused: 0, idle: 0 });
    expect(await exists()).toBe(true);
    expect(await store.reapClients(1_000 + DAY + 1, RULES)).toEqual({ unused: 1, idle: 0 });
    expect(await exists()).toBe(false);
  });

  test("a sign-in in progress keeps an unused client", async () => {
    const { store, exists, startSignIn } = await storeWithClient(dialect);
    await startSignIn(DAY);
    expect((await store.reapClients(DAY + 1, RULES)).unused).toBe(0);
    expect(await exists()).toBe(true);
    // Once that flow has expired, nothing holds it.
    expect((await store.reapClients(DAY + 11 * 60_000, RULES)).unused).toBe(1);
  });

  test("a client whose tokens stay live is never deleted, however old", async () => {
    const { store, exists, signIn } = await storeWithClient(dialect);
    await signIn(HOUR, HOUR + 1000, 400 * DAY);
    for (let day = 1; day < 390; day += 7) await store.reapClients(day * DAY, RULES);
    expect(await exists()).toBe(true);
  });

  test("a client is deleted, with its grants and tokens, once nothing of it has been live for the idle period", async () => {
    const { store, exists, signIn } = await storeWithClient(dialect);
    const grant = await signIn(0, HOUR, 30 * DAY);
    // Reaped while its refresh token lives: that use is written down.
    await store.reapClients(29 * DAY, RULES);
    expect(await store.reapClients(29 * DAY + 90 * DAY, RULES)).toEqual({ unused: 0, idle: 0 });
    expect(await exists()).toBe(true);
    expect(await store.reapClients(29 * DAY + 90 * DAY + 1, RULES)).toEqual({ unused: 0, idle: 1 });
    expect(await exists()).toBe(false);
    expect(await store.grantHasLiveTokens(grant.id, 0)).toBe(false);
    for (const table of ["grants", "access_tokens", "refresh_tokens"]) expect(await dialect.rowCount(store, table)).toBe(0);
  });

  test("a revoked grant counts as unused from its last use", async () => {
    const { store, exists, signIn } = await storeWithClient(dialect);
    const grant = await signIn(0, HOUR, 30 * DAY);
    await store.revokeGrant(grant.id, 2 * HOUR);
    expect((await store.reapClients(90 * DAY, RULES)).idle).toBe(0);
    expect((await store.reapClients(90 * DAY + 1, RULES)).idle).toBe(1);
    expect(await exists()).toBe(false);
  });

  test("a client used again within the idle period starts counting again", async () => {
    const { store, exists, signIn } = await storeWithClient(dialect);
    await signIn(0, HOUR, 2 * HOUR);
    await signIn(80 * DAY, 80 * DAY + HOUR, 80 * DAY + 2 * HOUR);
    expect((await store.reapClients(100 * DAY, RULES)).idle).toBe(0);
    expect(await exists()).toBe(true);
  });
});

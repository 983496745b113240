// The store's guarantees the OAuth endpoints lean on: single-use rules hold under repetition,
// revocation reaches every token of a grant, and expired rows are purged but replays still caught.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { s256Challenge } from "../../src/oauth/pkce.ts";
import { SqliteStore } from "../../src/store/sqlite-store.ts";
import type { ClientRow, NewTokenHashes, Store } from "../../src/store/store.ts";
import { storeDialects } from "../helpers/store-dialects.ts";

const VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const client = (id: string, metadata: Record<string, unknown> = {}): ClientRow => ({
  id,
  secretHash: null,
  tokenEndpointAuthMethod: "none",
  name: "C",
  redirectUris: ["http://localhost/cb"],
  metadata,
  createdAt: 0,
  lastUsedAt: null,
});
/** The hashes of a new pair numbered n; the store never sees the tokens themselves. */
const newPair = (n: number, accessExpiresAt = 1000, refreshExpiresAt = 10_000): NewTokenHashes => ({
  accessTokenHash: `a${n}`,
  accessExpiresAt,
  refreshTokenHash: `r${n}`,
  refreshExpiresAt,
});

/** A fresh store of one dialect, with one client and one grant, and shorthands for what the tests do with it. */
async function seeded(open: () => Promise<Store>) {
  const store = await open();
  const c1 = client("c1");
  await store.createClient(c1);
  const grant = await store.findOrCreateGrant({ id: "g1", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now: 0 });
  const pair = (family: string, n: number, accessExpiresAt = 1000, refreshExpiresAt = 10_000) =>
    store.insertTokenPair({ grantId: grant.id, familyId: family, clientId: "c1", resource: "r", scope: "mcp", ...newPair(n, accessExpiresAt, refreshExpiresAt) }, 0);
  const code = (codeHash: string, family: string, grantId = grant.id, clientId = "c1") =>
    store.createAuthCode({ codeHash, grantId, clientId, redirectUri: "u", codeChallenge: s256Challenge(VERIFIER), resource: "r", scope: "mcp", familyId: family, expiresAt: 60, usedAt: null });
  const exchangeCode = (codeHash: string, n: number, now: number, overrides: Partial<Parameters<Store["exchangeCode"]>[0]> = {}) =>
    store.exchangeCode({ client: c1, codeHash, codeVerifier: VERIFIER, redirectUri: "u", resource: "r", tokens: newPair(n), now, ...overrides });
  const exchangeRefresh = (refreshTokenHash: string, n: number, now: number, overrides: Partial<Parameters<Store["exchangeRefresh"]>[0]> = {}) =>
    store.exchangeRefresh({ client: c1, refreshTokenHash, scope: undefined, resource: undefined, tokens: newPair(n), now, graceMs: 10_000, ...overrides });
  return { store, grant, pair, code, exchangeCode, exchangeRefresh };
}

describe("the SQLite store", () => {
  test("WAL mode, foreign keys and busy timeout are on for a file database", () => {
    const dir = mkdtempSync(join(tmpdir(), "fmb-store-"));
    const store = SqliteStore.open(join(dir, "broker.sqlite"));
    try {
      const pragma = (name: string) => Object.values((store.db as unknown as { $client: import("bun:sqlite").Database }).$client.query(`PRAGMA ${name}`).get() as object)[0];
      expect(pragma("journal_mode")).toBe("wal");
      expect(pragma("foreign_keys")).toBe(1);
      expect(pragma("busy_timeout")).toBe(5000);
      expect(pragma("synchronous")).toBe(1);
    } finally {
      store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

const dialects = await storeDialects();

describe.each(dialects)("Store on %s", (_dialect, { open, indexedColumns }) => {
  // Every /oauth/authorize looks up the browser's unfinished flows to keep only its newest few.
  test("a browser's flows are found through an index, not a scan of every flow in progress", async () => {
    expect(await indexedColumns(await open(), "authorizations")).toContainEqual(["browser_hash"]);
  });

  test("one active grant per (client, user): a second sign-in reuses it; after revocation a new one is made", async () => {
    const { store, grant } = await seeded(open);
    expect((await store.findOrCreateGrant({ id: "g2", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice2", scope: "mcp", now: 1 })).id).toBe(grant.id);
    await store.revokeGrant(grant.id, 2);
    expect((await store.findOrCreateGrant({ id: "g3", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now: 3 })).id).toBe("g3");
  });

  test("an authorization code is exchanged once; a replay with its verifier revokes what it issued", async () => {
    const { store, code, exchangeCode } = await seeded(open);
    await code("k", "f1");
    expect(await exchangeCode("k", 1, 1)).toEqual({ ok: true, scope: "mcp", refreshIssued: true });
    expect(await store.findAccessIdentity("a1", 2)).toBeDefined();
    expect(await exchangeCode("k", 2, 2)).toEqual({ ok: false, error: "invalid_grant", description: "The authorization code was already used", revoked: "family" });
    expect(await store.findAccessIdentity("a1", 3)).toBeUndefined();
    expect(await exchangeCode("nope", 3, 3)).toMatchObject({ ok: false, error: "invalid_grant" });
    await code("late", "f2");
    expect(await exchangeCode("late", 4, 61)).toMatchObject({ ok: false, error: "invalid_grant", description: "The authorization code is invalid or expired" });
  });

  test("a code presented by another client or with a wrong verifier, redirect_uri or resource stays spendable by its own client", async () => {
    const { store, code, exchangeCode } = await seeded(open);
    await store.createClient(client("c2"));
    await code("k", "f1");
    const wrong: [Partial<Parameters<Store["exchangeCode"]>[0]>, string][] = [
      [{ client: client("c2") }, "invalid_grant"],
      [{ codeVerifier: "x".repeat(43) }, "invalid_grant"],
      [{ redirectUri: "http://localhost/other" }, "invalid_grant"],
      [{ resource: "https://other.example/mcp" }, "invalid_target"],
    ];
    for (const [overrides, error] of wrong) {
      expect(await exchangeCode("k", 1, 1, overrides)).toMatchObject({ ok: false, error, revoked: undefined });
    }
    expect(await exchangeCode("k", 1, 2)).toMatchObject({ ok: true });
    // Once spent, a presentation without the verifier is refused but proves no theft: nothing is revoked.
    expect(await exchangeCode("k", 2, 3, { codeVerifier: "x".repeat(43) })).toMatchObject({ ok: false, error: "invalid_grant", revoked: undefined });
    expect(await store.findAccessIdentity("a1", 4)).toBeDefined();
    // With the verifier it does prove theft, whatever else the request gets wrong.
    expect(await exchangeCode("k", 3, 5, { resource: "https://other.example/mcp" })).toMatchObject({ ok: false, error: "invalid_grant", revoked: "family" });
    expect(await store.findAccessIdentity("a1", 6)).toBeUndefined();
  });

  test("a client that did not register refresh_token gets an access token only, and its grant dies with it", async () => {
    const { store } = await seeded(open);
    const accessOnly = client("c3", { grant_types: ["authorization_code"] });
    await store.createClient(accessOnly);
    const grant = await store.findOrCreateGrant({ id: "g3", clientId: "c3", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now: 0 });
    await store.createAuthCode({ codeHash: "k3", grantId: grant.id, clientId: "c3", redirectUri: "u", codeChallenge: s256Challenge(VERIFIER), resource: "r", scope: "mcp", familyId: "f3", expiresAt: 60, usedAt: null });
    const exchanged = await store.exchangeCode({ client: accessOnly, codeHash: "k3", codeVerifier: VERIFIER, redirectUri: undefined, resource: undefined, tokens: newPair(3), now: 1 });
    expect(exchanged).toEqual({ ok: true, scope: "mcp", refreshIssued: false });
    expect(await store.grantHasLiveTokens(grant.id, 999)).toBe(true);
    expect(await store.grantHasLiveTokens(grant.id, 1000)).toBe(false);
    expect(await store.exchangeRefresh({ client: accessOnly, refreshTokenHash: "r3", scope: undefined, resource: undefined, tokens: newPair(4), now: 2, graceMs: 0 })).toMatchObject({
      ok: false,
      error: "unauthorized_client",
    });
  });

  test("a refused refresh (another resource) leaves the refresh token usable", async () => {
    const { store, pair, exchangeRefresh } = await seeded(open);
    await pair("f1", 1);
    expect(await exchangeRefresh("r1", 2, 2, { resource: "https://other.example/mcp" })).toMatchObject({ ok: false, error: "invalid_target" });
    // Past the grace window, where a token the refusals had rotated would now revoke the grant.
    expect(await exchangeRefresh("r1", 2, 5_000, { scope: "mcp", graceMs: 10, tokens: newPair(2, 9_000) })).toEqual({ ok: true, scope: "mcp", refreshIssued: true });
    expect(await store.findAccessIdentity("a2", 5_001)).toBeDefined();
    expect(await exchangeRefresh("r2", 3, 5_002)).toMatchObject({ ok: true });
  });

  test("marking used and inserting the pair commit together: a failed insert leaves the code and the refresh token unspent", async () => {
    const { pair, code, exchangeCode, exchangeRefresh } = await seeded(open);
    await pair("f1", 1);
    await code("k", "f2");
    // A new pair whose access-token hash is already taken makes the insert fail after the mark.
    expect(exchangeCode("k", 1, 1)).rejects.toThrow();
    expect(exchangeRefresh("r1", 1, 1)).rejects.toThrow();
    expect(await exchangeCode("k", 2, 2)).toMatchObject({ ok: true });
    expect(await exchangeRefresh("r1", 3, 3)).toMatchObject({ ok: true });
  });

  test("revoking a grant (or all of a user's grants) kills every token under it", async () => {
    const { store, grant, pair, exchangeRefresh } = await seeded(open);
    await pair("f1", 1);
    await pair("f2", 2);
    expect(await store.revokeGrantsOfUser(7, 5)).toEqual([grant.id]);
    expect(await store.findAccessIdentity("a1", 6)).toBeUndefined();
    expect(await store.findAccessIdentity("a2", 6)).toBeUndefined();
    expect(await exchangeRefresh("r2", 3, 6)).toMatchObject({ ok: false, error: "invalid_grant", description: "The refresh token is invalid, expired or revoked" });
  });

  test("a grant has live tokens while a live access token or an unrotated, unexpired refresh token is left", async () => {
    const { store, grant, pair, exchangeRefresh } = await seeded(open);
    await pair("f1", 1, 1000, 10_000);
    await pair("f2", 2, 1000, 10_000);
    const live = (now: number) => store.grantHasLiveTokens(grant.id, now);
    expect(await live(1)).toBe(true);
    // The access tokens expired: the refresh tokens can still get new ones.
    expect(await live(2000)).toBe(true);
    await store.revokeToken("r1", "c1", 2);
    expect(await live(2000)).toBe(true);
    // A rotated refresh token lives on only through its successor, here one that expires at 1500.
    expect(await exchangeRefresh("r2", 3, 3, { tokens: newPair(3, 1000, 1500) })).toMatchObject({ ok: true });
    expect(await live(1200)).toBe(true);
    expect(await live(2000)).toBe(false);
    await store.revokeToken("r3", "c1", 4);
    expect(await live(1)).toBe(false);
    expect(await live(20_000)).toBe(false);
  });

  test("every revocation reports its grant once committed; unknown tokens report nothing", async () => {
    const { store, grant, pair } = await seeded(open);
    await pair("f1", 1);
    await pair("f2", 2);
    const heard: Promise<{ grantId: string; accessLive: boolean }>[] = [];
    // The listener reads the store as it is after the revocation: committed, not half done.
    const stop = store.onRevocation((grantId) => heard.push(store.findAccessIdentity("a1", 1).then((identity) => ({ grantId, accessLive: identity !== undefined }))));
    expect(await store.revokeToken("nope", "c1", 1)).toBe("unknown");
    expect(heard).toHaveLength(0);
    expect(await store.revokeToken("r1", "c1", 1)).toBe("refresh");
    expect(await store.revokeToken("a2", "c1", 1)).toBe("access");
    await store.revokeGrantsOfUser(7, 2);
    expect(await Promise.all(heard)).toEqual([
      { grantId: grant.id, accessLive: false },
      { grantId: grant.id, accessLive: false },
      { grantId: grant.id, accessLive: false },
    ]);
    stop();
    await store.revokeGrant(grant.id, 3);
    expect(heard).toHaveLength(3);
  });

  test("purge removes what expired and keeps live rows, rotated tokens included until they expire", async () => {
    const { store, pair, exchangeRefresh } = await seeded(open);
    await pair("f1", 1, 100, 200);
    await pair("f2", 2, 1000, 10_000);
    expect(await exchangeRefresh("r2", 3, 50, { graceMs: 10 })).toMatchObject({ ok: true });
    expect(await store.purgeExpired(300)).toBe(2);
    expect(await store.findAccessIdentity("a2", 300)).toBeDefined();
    expect(await exchangeRefresh("r2", 4, 400, { graceMs: 10 })).toMatchObject({ ok: false, error: "invalid_grant", revoked: "grant" });
    expect(await store.findAccessIdentity("a3", 400)).toBeUndefined();
  });
});

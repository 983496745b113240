// UpstreamCredentials with a real store, real sealing and the Forgejo stand-in: tokens sealed at rest,
// one refresh per user however many callers, stored before use, and the right outcome for each refusal.
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { DEFAULT_FORGEJO_SCOPES } from "../../src/config.ts";
import { randomBase64Url, TokenSealer } from "../../src/crypto.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { eq } from "drizzle-orm";
import * as schema from "../../src/store/schema.ts";
import { SqliteStore } from "../../src/store/sqlite-store.ts";
import { realTimers } from "../../src/supervisor/timers.ts";
import { UpstreamCredentialLostError, UpstreamCredentials, type CredentialEvent } from "../../src/upstream/credentials.ts";
import {
  ForgejoClient,
  UpstreamUnavailableError,
  type ForgejoUser,
  type UpstreamTokens,
} from "../../src/upstream/forgejo.ts";
import { MIN_REFRESH_INTERVAL_MS } from "../../src/upstream/refresh-timing.ts";
import { startFakeForgejo, type FakeForgejo, type FakeForgejoOptions } from "../../src/testing/forgejo-stand-in.ts";
import { rejection, waitWhile } from "../helpers/promises.ts";

/** When the grant was revoked (null: live), read straight from the table: the broker itself never asks. */
const grantRevokedAt = (grantId: string) => store.db.select().from(schema.grants).where(eq(schema.grants.id, grantId)).get()!.revokedAt;

const REDIRECT = "http://127.0.0.1:9/oauth/callback";
const HOUR = 3600_000;
const LEAD = 5 * 60_000;
/** Past the minimum spacing, a forced refresh goes to Forgejo. */
const SPACING = MIN_REFRESH_INTERVAL_MS;
const ALICE: ForgejoUser = { id: 1, login: "alice" };
const BOB: ForgejoUser = { id: 2, login: "bob" };

let clock: number;
let forgejo: FakeForgejo;
let client: ForgejoClient;
let store: SqliteStore;
let sealer: TokenSealer;
let logger: ReturnType<typeof createMemoryLogger>;
let credentials: UpstreamCredentials;
let events: CredentialEvent[];

const makeClient = (clientSecret: string) =>
  new ForgejoClient({
    url: forgejo.url,
    clientId: forgejo.clientId,
    clientSecret,
    redirectUri: REDIRECT,
    scopes: DEFAULT_FORGEJO_SCOPES.split(" "),
    fetch,
    now: () => clock,
    timeoutMs: 5000,
    timers: realTimers,
  });

const makeCredentials = (refresher: Pick<ForgejoClient, "refresh">, waitMs = 5000) =>
  new UpstreamCredentials({
    store,
    sealer,
    forgejo: refresher,
    logger,
    now: () => clock,
    waitMs,
    timers: realTimers,
    timing: { leadMs: LEAD, minIntervalMs: SPACING },
  });

/** A stand-in Forgejo on the test's clock, and the credentials that refresh through it. */
async function useForgejo(options: FakeForgejoOptions = {}): Promise<void> {
  forgejo = await startFakeForgejo({ now: () => clock, redirectUri: REDIRECT, ...options });
  client = makeClient(forgejo.clientSecret);
  credentials = makeCredentials(client);
  events = [];
  credentials.onChange((event) => events.push(event));
}

beforeEach(async () => {
  clock = 1_700_000_000_000;
  store = SqliteStore.open(":memory:");
  sealer = await TokenSealer.fromRawKey(new Uint8Array(32));
  logger = createMemoryLogger();
  await useForgejo();
});
afterEach(async () => {
  store.close();
  await forgejo.stop();
});

/** A full Forgejo sign-in of `user` through the stand-in, as the callback would do it. */
async function forgejoSignIn(user: ForgejoUser): Promise<UpstreamTokens> {
  forgejo.setCurrentUser(user.login);
  const verifier = randomBase64Url(32);
  const response = await fetch(client.authorizationUrl(randomBase64Url(16), verifier), { redirect: "manual" });
  const code = new URL(response.headers.get("Location")!).searchParams.get("code")!;
  return client.exchangeCode(code, verifier);
}

async function signIn(user: ForgejoUser): Promise<UpstreamTokens> {
  const tokens = await forgejoSignIn(user);
  await credentials.saveFromSignIn(user, tokens);
  return tokens;
}

async function grantFor(user: ForgejoUser): Promise<string> {
  const clientId = `client-${randomBase64Url(6)}`;
  await store.createClient({
    id: clientId,
    secretHash: null,
    tokenEndpointAuthMethod: "none",
    name: "Test client",
    redirectUris: ["http://127.0.0.1:9/cb"],
    metadata: {},
    createdAt: clock,
  });
  return (await store.findOrCreateGrant({ id: randomBase64Url(12), clientId, forgejoUserId: user.id, forgejoLogin: user.login, scope: "mcp", now: clock })).id;
}

const userAnswer = async (accessToken: string) =>
  (await fetch(`${forgejo.url}/api/v1/user`, { headers: { Authorization: `token ${accessToken}` } })).status;

describe("at rest", () => {
  test("the stored row holds neither token in plaintext, and unseals to the signed-in pair", async () => {
    const tokens = await signIn(ALICE);
    const row = (await store.getUpstreamCredential(ALICE.id))!;
    const raw = JSON.stringify(row);
    expect(raw).not.toContain(tokens.accessToken);
    expect(raw).not.toContain(tokens.refreshToken!);
    expect(row).toMatchObject({ forgejoLogin: "alice", accessExpiresAt: clock + HOUR, version: 1 });
    expect(await credentials.accessTokenFor(ALICE.id)).toEqual({
      accessToken: tokens.accessToken,
      accessExpiresAt: clock + HOUR,
    });
    expect(forgejo.stats.refreshes).toBe(0);
  });

  test("a sealed token moved to another user's row does not unseal there", async () => {
    await signIn(ALICE);
    await signIn(BOB);
    const alice = (await store.getUpstreamCredential(ALICE.id))!;
    const bob = (await store.getUpstreamCredential(BOB.id))!;
    await store.replaceUpstreamCredential(BOB.id, bob.version, { ...bob, accessTokenSealed: alice.accessTokenSealed });
    const error = await rejection(credentials.accessTokenFor(BOB.id));
    expect(error).toBeInstanceOf(UpstreamCredentialLostError);
    expect((error as UpstreamCredentialLostError).reason).toBe("unreadable");
    expect((await credentials.accessTokenFor(ALICE.id)).accessToken).toBe(forgejo.issuedAccessTokens("alice")[0]!);
  });

  test("a second sign-in replaces the user's one credential", async () => {
    await signIn(ALICE);
    const second = await signIn(ALICE);
    expect((await store.getUpstreamCredential(ALICE.id))!.version).toBe(2);
    expect((await credentials.accessTokenFor(ALICE.id)).accessToken).toBe(second.accessToken);
  });
});

describe("refresh", () => {
  test("a token about to expire is refreshed, and the new pair is stored before it is handed out", async () => {
    const first = await signIn(ALICE);
    clock += HOUR - LEAD + 1;
    const access = await credentials.accessTokenFor(ALICE.id);
    expect(access.accessToken).not.toBe(first.accessToken);
    expect(access.accessExpiresAt).toBe(clock + HOUR);
    expect(await userAnswer(access.accessToken)).toBe(200);
    expect(forgejo.stats.refreshes).toBe(1);

    const row = (await store.getUpstreamCredential(ALICE.id))!;
    expect(row.version).toBe(2);
    const fresh = makeCredentials(client);
    expect((await fresh.accessTokenFor(ALICE.id)).accessToken).toBe(access.accessToken);
    // The stored refresh token is the new one: the next refresh succeeds where the old one would be refused.
    clock += SPACING;
    expect((await credentials.refreshNow(ALICE.id)).accessToken).not.toBe(access.accessToken);
    expect(events.filter((e) => e.type === "rotated").map((e) => e.forgejoUserId)).toEqual([1, 1, 1]);
  });

  test("20 concurrent callers on a nearly expired credential cause one refresh and all get its token", async () => {
    await signIn(ALICE);
    clock += HOUR - 1000;
    const results = await Promise.all(
      Array.from({ length: 20 }, () => credentials.accessTokenFor(ALICE.id)),
    );
    expect(forgejo.stats.refreshes).toBe(1);
    const tokens = new Set(results.map((r) => r.accessToken));
    expect(tokens.size).toBe(1);
    const [token] = tokens;
    expect(token).toBe(forgejo.issuedAccessTokens("alice")[1]!);
    expect(await userAnswer(token!)).toBe(200);
  });

  test("forced refreshes and expiry refreshes of one user share one flight; other users refresh on their own", async () => {
    await signIn(ALICE);
    await signIn(BOB);
    clock += HOUR - LEAD;
    const [forced, viaExpiry, bob] = await Promise.all([
      credentials.refreshNow(ALICE.id),
      credentials.accessTokenFor(ALICE.id),
      credentials.refreshNow(BOB.id),
    ]);
    expect(viaExpiry.accessToken).toBe(forced.accessToken);
    expect(bob.accessToken).toBe(forgejo.issuedAccessTokens("bob")[1]!);
    expect(forgejo.stats.refreshes).toBe(2);
  });

  test("a credential still valid long enough is handed out without asking Forgejo", async () => {
    const tokens = await signIn(ALICE);
    clock += HOUR - LEAD - 1000;
    expect((await credentials.accessTokenFor(ALICE.id)).accessToken).toBe(tokens.accessToken);
    expect(forgejo.stats.refreshes).toBe(0);
  });

  test("when a sign-in stores a newer credential during the refresh, the newer one wins and no second refresh happens", async () => {
    await signIn(ALICE);
    clock += SPACING;
    let newer: UpstreamTokens | undefined;
    const racing = makeCredentials({
      refresh: async (refreshToken) => {
        const refreshed = await client.refresh(refreshToken);
        newer = await signIn(ALICE);
        return refreshed;
      },
    });
    const access = await racing.refreshNow(ALICE.id);
    expect(access.accessToken).toBe(newer!.accessToken);
    expect(forgejo.stats.refreshes).toBe(1);
    // What is stored is the sign-in's pair, so the next refresh uses a refresh token Forgejo still honours.
    clock += SPACING;
    expect(await userAnswer((await credentials.refreshNow(ALICE.id)).accessToken)).toBe(200);
  });

  test("when a sign-in retires the refresh token in flight, the refusal costs nothing: the newer credential is used", async () => {
    await signIn(ALICE);
    clock += SPACING;
    const grantId = await grantFor(ALICE);
    let newer: UpstreamTokens | undefined;
    const racing = makeCredentials({
      refresh: async (refreshToken) => {
        newer = await signIn(ALICE);
        return client.refresh(refreshToken);
      },
    });
    const access = await racing.refreshNow(ALICE.id);
    expect(access.accessToken).toBe(newer!.accessToken);
    expect(grantRevokedAt(grantId)).toBeNull();
    expect(events.some((e) => e.type === "lost")).toBe(false);
  });
});

describe("how often", () => {
  const SECOND = 1000;

  test("session starts leave a 20 s token alone for half its life, then refresh it once for all of them", async () => {
    await forgejo.stop();
    await useForgejo({ accessTokenTtlS: 20 });
    const tokens = await signIn(ALICE);
    for (let second = 0; second < 10; second++) {
      expect((await credentials.accessTokenFor(ALICE.id)).accessToken).toBe(tokens.accessToken);
      clock += SECOND;
    }
    expect(forgejo.stats.refreshes).toBe(0);

    const starts = await Promise.all(Array.from({ length: 10 }, () => credentials.accessTokenFor(ALICE.id)));
    expect(forgejo.stats.refreshes).toBe(1);
    const [refreshed] = new Set(starts.map((access) => access.accessToken));
    expect(starts.every((access) => access.accessToken === refreshed)).toBe(true);
    expect(refreshed).not.toBe(tokens.accessToken);
    // The new token lives 20 s too: the next session starts get it as it is.
    clock += 9 * SECOND;
    expect((await credentials.accessTokenFor(ALICE.id)).accessToken).toBe(refreshed!);
    expect(forgejo.stats.refreshes).toBe(1);
    clock += SECOND;
    expect((await credentials.accessTokenFor(ALICE.id)).accessToken).not.toBe(refreshed);
    expect(forgejo.stats.refreshes).toBe(2);
  });

  test("a forced refresh within the minimum spacing hands out the pair just stored, without asking Forgejo", async () => {
    const tokens = await signIn(ALICE);
    clock += SPACING - 1;
    expect((await credentials.refreshNow(ALICE.id)).accessToken).toBe(tokens.accessToken);
    expect(forgejo.stats.refreshes).toBe(0);
    clock += 1;
    const refreshed = await credentials.refreshNow(ALICE.id);
    expect(refreshed.accessToken).not.toBe(tokens.accessToken);
    expect(forgejo.stats.refreshes).toBe(1);
    // The scheduler's refresh right after a session start's: one upstream refresh between them.
    expect(await credentials.refreshNow(ALICE.id)).toEqual(refreshed);
    expect(forgejo.stats.refreshes).toBe(1);
  });

  test("a token that expired when it came is refreshed no more often than the minimum spacing", async () => {
    await forgejo.stop();
    await useForgejo({ accessTokenTtlS: 0 });
    await signIn(ALICE);
    await Promise.all(Array.from({ length: 5 }, () => credentials.accessTokenFor(ALICE.id)));
    expect(forgejo.stats.refreshes).toBe(0);
    clock += SPACING;
    await Promise.all(Array.from({ length: 5 }, () => credentials.accessTokenFor(ALICE.id)));
    await credentials.accessTokenFor(ALICE.id);
    expect(forgejo.stats.refreshes).toBe(1);
  });
});

describe("refusal and unavailability", () => {
  test("a refused refresh deletes the credential, revokes the user's grants and says why", async () => {
    await signIn(ALICE);
    await signIn(BOB);
    const aliceGrant = await grantFor(ALICE);
    const bobGrant = await grantFor(BOB);
    forgejo.revokeUser("alice");
    clock += HOUR;

    const error = await rejection(credentials.accessTokenFor(ALICE.id));
    expect(error).toBeInstanceOf(UpstreamCredentialLostError);
    expect(error).toMatchObject({ forgejoUserId: 1, reason: "refused", upstreamCode: "invalid_grant", revokedGrantIds: [aliceGrant] });
    expect(await store.getUpstreamCredential(ALICE.id)).toBeUndefined();
    expect(grantRevokedAt(aliceGrant)).toBe(clock);
    expect(grantRevokedAt(bobGrant)).toBeNull();
    expect(events.at(-1)).toEqual({ type: "lost", forgejoUserId: 1, reason: "refused", revokedGrantIds: [aliceGrant] });

    const again = await rejection(credentials.accessTokenFor(ALICE.id));
    expect(again).toMatchObject({ reason: "missing" });
  });

  test("a refresh token that somebody else already used is a refusal too", async () => {
    const tokens = await signIn(ALICE);
    await client.refresh(tokens.refreshToken!);
    clock += SPACING;
    const error = await rejection(credentials.refreshNow(ALICE.id));
    expect(error).toMatchObject({ reason: "refused", upstreamCode: "unauthorized_client" });
    expect(await store.getUpstreamCredential(ALICE.id)).toBeUndefined();
  });

  test("a 503 keeps the credential and the grants, and every waiting caller hears it", async () => {
    const tokens = await signIn(ALICE);
    const grantId = await grantFor(ALICE);
    forgejo.failTokenEndpoint(503);
    clock += HOUR;
    const outcomes = await Promise.allSettled(
      Array.from({ length: 5 }, () => credentials.accessTokenFor(ALICE.id)),
    );
    expect(outcomes.every((o) => o.status === "rejected" && o.reason instanceof UpstreamUnavailableError)).toBe(true);
    expect(forgejo.stats.refreshes).toBe(1);
    expect((await store.getUpstreamCredential(ALICE.id))!.version).toBe(1);
    expect(grantRevokedAt(grantId)).toBeNull();

    forgejo.failTokenEndpoint(null);
    const access = await credentials.accessTokenFor(ALICE.id);
    expect(access.accessToken).not.toBe(tokens.accessToken);
    expect(await userAnswer(access.accessToken)).toBe(200);
  });

  test("a refresh Forgejo answers only after the wait: callers hear a timeout, no second refresh is sent, the late pair is kept", async () => {
    const tokens = await signIn(ALICE);
    const grantId = await grantFor(ALICE);
    const impatient = makeCredentials(client, 200);
    const rotated: CredentialEvent[] = [];
    impatient.onChange((event) => rotated.push(event));
    clock += HOUR;
    forgejo.delayTokenEndpoint(700);

    const first = await rejection(impatient.accessTokenFor(ALICE.id));
    expect(first).toBeInstanceOf(UpstreamUnavailableError);
    expect((first as UpstreamUnavailableError).reason).toBe("timeout");
    expect(first.message).toBe("Forgejo's token endpoint (refreshing the user's token) did not answer within 0.2 s");
    // Still in flight: this caller waits for the same refresh instead of spending the refresh token a second time.
    expect(await rejection(impatient.refreshNow(ALICE.id))).toBeInstanceOf(UpstreamUnavailableError);

    await waitWhile(async () => (await store.getUpstreamCredential(ALICE.id))!.version === 1, 80, 25);
    // Long enough for a second refresh, had one been sent at the second caller's time, to have arrived too.
    await Bun.sleep(400);
    forgejo.delayTokenEndpoint(0);
    expect(forgejo.stats.refreshes).toBe(1);
    expect((await store.getUpstreamCredential(ALICE.id))!.version).toBe(2);
    expect(rotated.map((event) => event.type)).toEqual(["rotated"]);
    const access = await impatient.accessTokenFor(ALICE.id);
    expect(access.accessToken).not.toBe(tokens.accessToken);
    expect(await userAnswer(access.accessToken)).toBe(200);
    expect(forgejo.stats.refreshes).toBe(1);
    expect(grantRevokedAt(grantId)).toBeNull();
  });

  test("a wrong client secret keeps the user's credential: it works again once the broker is fixed", async () => {
    await signIn(ALICE);
    const grantId = await grantFor(ALICE);
    const misconfigured = makeCredentials(makeClient("not-the-secret"));
    clock += SPACING;
    const error = await rejection(misconfigured.refreshNow(ALICE.id));
    expect(error).toBeInstanceOf(UpstreamUnavailableError);
    expect(await store.getUpstreamCredential(ALICE.id)).toBeDefined();
    expect(grantRevokedAt(grantId)).toBeNull();
    expect(await userAnswer((await credentials.refreshNow(ALICE.id)).accessToken)).toBe(200);
  });

  test("a user who never signed in has no credential", async () => {
    const error = await rejection(credentials.accessTokenFor(BOB.id));
    expect(error).toMatchObject({ forgejoUserId: 2, reason: "missing" });
  });

  test("no log line carries a Forgejo token", async () => {
    await signIn(ALICE);
    clock += SPACING;
    await credentials.refreshNow(ALICE.id);
    forgejo.revokeUser("alice");
    clock += SPACING;
    await rejection(credentials.refreshNow(ALICE.id));
    expect(logger.lines.length).toBeGreaterThan(1);
    const log = logger.lines.join("\n");
    for (const token of [...forgejo.issuedAccessTokens("alice"), ...forgejo.issuedRefreshTokens("alice")]) {
      expect(log).not.toContain(token);
    }
  });

  test("a listener that throws does not break a refresh", async () => {
    await signIn(ALICE);
    credentials.onChange(() => {
      throw new Error("listener bug");
    });
    clock += SPACING;
    expect(await userAnswer((await credentials.refreshNow(ALICE.id)).accessToken)).toBe(200);
    expect(logger.lines.some((line) => line.includes("credential listener failed"))).toBe(true);
  });
});

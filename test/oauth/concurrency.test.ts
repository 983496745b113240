// Races a client can cause: one code or refresh token spent by processes at the same moment, and
// floods of registration and token requests from one address.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { s256Challenge } from "../../src/oauth/pkce.ts";
import { SqliteStore } from "../../src/store/sqlite-store.ts";
import { RACED_CODE_VERIFIER, raceExchanges, type RacedKind } from "../fixtures/exchange-racer.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { postForm } from "../../src/testing/oauth-client.ts";

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker({ broker: { rateLimit: { burst: 60, perSecond: 0.5 } } });
});
afterAll(async () => {
  await t.stop();
});

const refresh = (refreshToken: string, clientId: string) =>
  postForm(`${t.config.publicUrl}/oauth/token`, { grant_type: "refresh_token", refresh_token: refreshToken, client_id: clientId });

describe("single use under real concurrency: processes racing on one SQLite file", () => {
  const RACERS = 4;
  const TOKENS = 100;

  /** A store file with one client, one grant, and TOKENS unspent codes or refresh tokens. */
  async function seeded(kind: RacedKind) {
    const dir = mkdtempSync(join(tmpdir(), "fmb-race-"));
    const path = join(dir, "broker.sqlite");
    const store = SqliteStore.open(path);
    await store.createClient({ id: "c1", secretHash: null, tokenEndpointAuthMethod: "none", name: "C", redirectUris: ["http://localhost/cb"], metadata: {}, createdAt: 0 });
    const grant = await store.findOrCreateGrant({ id: "g1", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now: 0 });
    const far = Date.now() + 3600_000;
    const hashes = Array.from({ length: TOKENS }, (_, i) => `${kind}-${i}`);
    for (const [i, hash] of hashes.entries()) {
      const row = { grantId: grant.id, familyId: `f${i}`, clientId: "c1", resource: "r", scope: "mcp" };
      if (kind === "code") await store.createAuthCode({ ...row, codeHash: hash, redirectUri: "u", codeChallenge: s256Challenge(RACED_CODE_VERIFIER), expiresAt: far, usedAt: null });
      else await store.insertTokenPair({ ...row, accessTokenHash: `a-${hash}`, accessExpiresAt: far, refreshTokenHash: hash, refreshExpiresAt: far }, 0);
    }
    return { store, path, hashes, cleanUp: () => (store.close(), rmSync(dir, { recursive: true, force: true })) };
  }

  test.each(["refresh", "code"] as const)("%s: each of 100, released to 4 processes at once, is won exactly once", async (kind) => {
    const { store, path, hashes, cleanUp } = await seeded(kind);
    try {
      const reports = await raceExchanges({ path, clientId: "c1", kind, hashes, racers: RACERS });
      // Each hash was released to every racer at once, and not always the same one got there first.
      expect(reports.filter((r) => r.won.length > 0).length).toBeGreaterThan(1);

      const winners = new Map<string, string[]>();
      for (const { racer, won } of reports) for (const hash of won) winners.set(hash, [...(winners.get(hash) ?? []), racer]);
      expect(hashes.filter((hash) => winners.get(hash)?.length !== 1)).toEqual([]);
      const refusals = reports.flatMap((r) => r.refused);
      expect(refusals).toHaveLength(TOKENS * (RACERS - 1));
      const alreadyUsed = kind === "code" ? "invalid_grant: The authorization code was already used" : "invalid_grant: The refresh token was already used";
      expect(refusals.filter((refusal) => refusal !== alreadyUsed)).toEqual([]);
      // Each winner's pair was committed with its win; a code's losers are replays, which revoke it again.
      const live: string[] = [];
      for (const hash of hashes) if ((await store.findAccessIdentity(`at:${winners.get(hash)![0]}:${hash}`, Date.now())) !== undefined) live.push(hash);
      expect(live).toHaveLength(kind === "refresh" ? TOKENS : 0);
    } finally {
      cleanUp();
    }
  }, 60_000);
});

describe("rate limits per client address", () => {
  test("registration and token floods get 429 with Retry-After", async () => {
    const attempts = await Promise.all(
      Array.from({ length: 80 }, () =>
        fetch(`${t.config.publicUrl}/oauth/register`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ redirect_uris: ["http://localhost/cb"], token_endpoint_auth_method: "none" }),
        }),
      ),
    );
    const limited = attempts.filter((r) => r.status === 429);
    expect(attempts.filter((r) => r.status === 201).length).toBeLessThanOrEqual(60);
    expect(limited.length).toBeGreaterThanOrEqual(20);
    const first = limited[0]!;
    expect(Number(first.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(await first.json()).toMatchObject({ error: "too_many_requests" });

    const tokenAttempts = await Promise.all(Array.from({ length: 70 }, () => refresh("fmb_rt_x", "fmb_client_x")));
    expect(tokenAttempts.some((r) => r.status === 429 && r.headers.get("retry-after") !== null)).toBe(true);
  });
});

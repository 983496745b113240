// Races that really race on PostgreSQL: stores with connections of their own, as replicas have, spending
// one code or refresh token at once (exactly one wins), and starting at once on an empty database.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { s256Challenge } from "../../src/oauth/pkce.ts";
import { PgStore } from "../../src/store/pg-store.ts";
import type { Exchange, NewTokenHashes } from "../../src/store/store.ts";
import { createTestDatabase, type TestDatabase } from "../helpers/postgres.ts";

const REPLICAS = 4;
const TOKENS = 50;
const VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const client = { id: "c1", metadata: {} };

describe("single use across replicas on PostgreSQL", () => {
  let database: TestDatabase;
  let replicas: PgStore[];

  beforeAll(async () => {
    database = await createTestDatabase();
    replicas = await Promise.all(Array.from({ length: REPLICAS }, () => PgStore.open(database.url, { maxConnections: 2 })));
  });
  afterAll(async () => {
    // Dropped even when a replica failed to open.
    await Promise.allSettled((replicas ?? []).map((store) => store.close()));
    await database.drop();
  });

  /** TOKENS codes or refresh tokens, each released to every replica at once; returns which replicas won each. */
  async function race(kind: "code" | "refresh"): Promise<{ winners: number[][]; refusals: string[] }> {
    await database.truncate();
    const [seed] = replicas;
    await seed!.createClient({ id: "c1", secretHash: null, tokenEndpointAuthMethod: "none", name: "C", redirectUris: [], metadata: {}, createdAt: 0 });
    const grant = await seed!.findOrCreateGrant({ id: "g1", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now: 0 });
    const far = Date.now() + 3600_000;
    const winners: number[][] = [];
    const refusals: string[] = [];
    for (let i = 0; i < TOKENS; i++) {
      const hash = `${kind}-${i}`;
      const row = { grantId: grant.id, familyId: `f${i}`, clientId: "c1", resource: "r", scope: "mcp" };
      if (kind === "code") await seed!.createAuthCode({ ...row, codeHash: hash, redirectUri: "u", codeChallenge: s256Challenge(VERIFIER), expiresAt: far, usedAt: null });
      else await seed!.insertTokenPair({ ...row, accessTokenHash: `a-${hash}`, accessExpiresAt: far, refreshTokenHash: hash, refreshExpiresAt: far }, 0);
      const tokens = (replica: number): NewTokenHashes => ({ accessTokenHash: `at:${replica}:${hash}`, accessExpiresAt: far, refreshTokenHash: `rt:${replica}:${hash}`, refreshExpiresAt: far });
      const now = Date.now();
      const outcomes: Exchange[] = await Promise.all(
        replicas.map((store, replica) =>
          kind === "code"
            ? store.exchangeCode({ client, codeHash: hash, codeVerifier: VERIFIER, redirectUri: undefined, resource: undefined, tokens: tokens(replica), now })
            : store.exchangeRefresh({ client, refreshTokenHash: hash, scope: undefined, resource: undefined, tokens: tokens(replica), now, graceMs: 60_000 }),
        ),
      );
      winners.push(outcomes.flatMap((outcome, replica) => (outcome.ok ? [replica] : [])));
      for (const outcome of outcomes) if (!outcome.ok) refusals.push(`${outcome.error}: ${outcome.description}`);
    }
    return { winners, refusals };
  }

  test.each([
    ["refresh", "invalid_grant: The refresh token was already used"],
    ["code", "invalid_grant: The authorization code was already used"],
  ] as const)("%s: each, spent by every replica at once, is won exactly once", async (kind, alreadyUsed) => {
    const { winners, refusals } = await race(kind);
    expect(winners.filter((won) => won.length !== 1)).toEqual([]);
    // Not always the same replica got there first: the spends really overlapped.
    expect(new Set(winners.map(([replica]) => replica)).size).toBeGreaterThan(1);
    expect(refusals).toHaveLength(TOKENS * (REPLICAS - 1));
    expect(refusals.filter((refusal) => refusal !== alreadyUsed)).toEqual([]);
    // Each winner's pair was committed with its win; a code's losers are replays, which revoke what it issued.
    const live = await Promise.all(winners.map(([replica], i) => replicas[0]!.findAccessIdentity(`at:${replica}:${kind}-${i}`, Date.now())));
    expect(live.filter((identity) => identity !== undefined)).toHaveLength(kind === "refresh" ? TOKENS : 0);
  });
});

describe("replicas starting at once on an empty database", () => {
  test("three migrate together: all start, and the schema is made once", async () => {
    const database = await createTestDatabase();
    try {
      const stores = await Promise.all([0, 1, 2].map(() => PgStore.open(database.url, { maxConnections: 1 })));
      await Promise.all(stores.map((store) => store.ping()));
      await Promise.all(stores.map((store) => store.close()));
      const sql = new SQL({ url: database.url, max: 1 });
      try {
        const [applied] = await sql`SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations`;
        // Each migration once, not once per replica.
        const journal = (await Bun.file(new URL("../../drizzle/pg/meta/_journal.json", import.meta.url)).json()) as { entries: unknown[] };
        expect(applied).toEqual({ n: journal.entries.length });
        const tables = await sql`SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`;
        expect(tables.map((row: { tablename: string }) => row.tablename)).toEqual([
          "access_tokens",
          "auth_codes",
          "authorizations",
          "clients",
          "grants",
          "refresh_tokens",
          "upstream_credentials",
        ]);
      } finally {
        await sql.close();
      }
    } finally {
      await database.drop();
    }
  });
});

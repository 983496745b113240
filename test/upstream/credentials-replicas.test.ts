// The upstream refresh is single-flight across replicas: three replicas, each with its own connections to
// one PostgreSQL database, find the user's Forgejo token due at the same moment; Forgejo sees one refresh.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { DEFAULT_FORGEJO_SCOPES } from "../../src/config.ts";
import { randomBase64Url, TokenSealer } from "../../src/crypto.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { PgStore } from "../../src/store/pg-store.ts";
import { realTimers } from "../../src/supervisor/timers.ts";
import { UpstreamCredentials, type CredentialEvent } from "../../src/upstream/credentials.ts";
import { ForgejoClient } from "../../src/upstream/forgejo.ts";
import { MIN_REFRESH_INTERVAL_MS } from "../../src/upstream/refresh-timing.ts";
import { startFakeForgejo, type FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { createTestDatabase, type TestDatabase } from "../helpers/postgres.ts";

const REDIRECT = "http://127.0.0.1:9/oauth/callback";
const HOUR = 3600_000;
const ALICE = { id: 1, login: "alice" };

let clock = 1_700_000_000_000;
let database: TestDatabase;
let forgejo: FakeForgejo;
let stores: PgStore[];

beforeAll(async () => {
  database = await createTestDatabase();
  forgejo = await startFakeForgejo({ now: () => clock, redirectUri: REDIRECT });
  stores = await Promise.all([0, 1, 2].map(() => PgStore.open(database.url, { maxConnections: 2 })));
});
afterAll(async () => {
  // Dropped even when a replica failed to open.
  await Promise.allSettled((stores ?? []).map((store) => store.close()));
  await forgejo?.stop();
  await database.drop();
});

test("three replicas due at once: one refresh reaches Forgejo, none is refused, all use the pair it stored", async () => {
  const sealer = await TokenSealer.fromRawKey(new Uint8Array(32));
  const client = new ForgejoClient({
    url: forgejo.url,
    clientId: forgejo.clientId,
    clientSecret: forgejo.clientSecret,
    redirectUri: REDIRECT,
    scopes: DEFAULT_FORGEJO_SCOPES.split(" "),
    fetch,
    now: () => clock,
    timeoutMs: 5000,
    timers: realTimers,
  });
  const events: CredentialEvent[] = [];
  const replicas = stores.map((store) => {
    const credentials = new UpstreamCredentials({
      store,
      sealer,
      forgejo: client,
      logger: createMemoryLogger(),
      now: () => clock,
      waitMs: 5000,
      timers: realTimers,
      timing: { leadMs: 5 * 60_000, minIntervalMs: MIN_REFRESH_INTERVAL_MS },
    });
    credentials.onChange((event) => events.push(event));
    return credentials;
  });

  forgejo.setCurrentUser(ALICE.login);
  const verifier = randomBase64Url(32);
  const authorized = await fetch(client.authorizationUrl(randomBase64Url(16), verifier), { redirect: "manual" });
  const tokens = await client.exchangeCode(new URL(authorized.headers.get("Location")!).searchParams.get("code")!, verifier);
  await replicas[0]!.saveFromSignIn(ALICE, tokens);
  events.length = 0;

  // Past the refresh lead of the one-hour token, on every replica at the same moment.
  clock += HOUR - 60_000;
  const before = { ...forgejo.stats };
  const answers = await Promise.all(replicas.map((credentials) => credentials.accessTokenFor(ALICE.id)));

  expect(forgejo.stats.refreshes - before.refreshes).toBe(1);
  // None is refused: no replica presented the refresh token another had already spent ("token was already used").
  expect(forgejo.stats.reusedRefreshTokens - before.reusedRefreshTokens).toBe(0);
  expect(new Set(answers.map((answer) => answer.accessToken)).size).toBe(1);
  expect(answers[0]!.accessToken).toBe(forgejo.issuedAccessTokens(ALICE.login).at(-1)!);
  expect(events.map((event) => event.type)).toEqual(["rotated"]);
  expect((await stores[2]!.getUpstreamCredential(ALICE.id))?.version).toBe(2);
});

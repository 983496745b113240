// The broker itself on PostgreSQL (BROKER_DATABASE_URL): the SDK client signs in, gets its tokens, calls
// a tool over /mcp and refreshes; /healthz names the database, and turns 503 when it is gone.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, connectAs, processesMatching, textOf } from "../helpers/mcp.ts";
import { obtainTokens, postForm } from "../../src/testing/oauth-client.ts";
import { createTestDatabase, type TestDatabase } from "../helpers/postgres.ts";
import { waitWhile } from "../helpers/promises.ts";


describe("the broker on PostgreSQL", () => {
  const marker = `--pg-e2e-${crypto.randomUUID()}`;
  let database: TestDatabase;
  let t: TestBroker;

  beforeAll(async () => {
    database = await createTestDatabase();
    t = await startTestBroker({
      env: { BROKER_CHILD_COMMAND: childCommand(marker), BROKER_DATABASE_URL: database.url, BROKER_SEALING_KEY: Buffer.alloc(32, 9).toString("base64") },
    });
  });
  afterAll(async () => {
    await t.stop();
    await database.drop();
    expect(await processesMatching(marker)).toEqual([]);
  });

  test("sign-in, token and a tool call: the OAuth state lives in the database", async () => {
    const alice = await connectAs(t, "alice");
    expect(textOf(await alice.client.callTool({ name: "whoami", arguments: {} }))).toBe("alice");
    await alice.client.close();
    const rows = new SQL({ url: database.url, max: 1 });
    try {
      const [counts] = await rows`SELECT (SELECT count(*) FROM grants)::int AS grants, (SELECT count(*) FROM access_tokens)::int AS access, (SELECT count(*) FROM upstream_credentials)::int AS upstream`;
      expect(counts).toEqual({ grants: 1, access: 1, upstream: 1 });
    } finally {
      await rows.close();
    }
  });

  test("a refresh rotates the token once: the rotated one presented again is refused", async () => {
    t.forgejo.setCurrentUser("bob");
    const tokens = await obtainTokens(t.config.publicUrl);
    const refresh = (refreshToken: string) => postForm(`${t.config.publicUrl}/oauth/token`, { grant_type: "refresh_token", refresh_token: refreshToken, client_id: tokens.clientId });
    const rotated = await refresh(tokens.refreshToken);
    expect(rotated.status).toBe(200);
    const again = await refresh(tokens.refreshToken);
    expect(again.status).toBe(400);
    expect(await again.json()).toMatchObject({ error: "invalid_grant" });
  });

  test("/healthz names the database, and turns 503 naming it when the database is gone", async () => {
    expect(await (await fetch(`${t.config.publicUrl}/healthz`)).json()).toEqual({ status: "ok", store: "ok", database: "ok" });
    const name = new URL(database.url).pathname.slice(1);
    const admin = new SQL({ url: database.url.replace(/\/[^/]+$/, "/test"), max: 1 });
    try {
      await admin.unsafe(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
      await admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ${name}`;
      const response = await fetch(`${t.config.publicUrl}/healthz`);
      expect(response.status).toBe(503);
      expect(await response.json()).toEqual({ status: "degraded", store: "failed", database: "failed" });
    } finally {
      await admin.unsafe(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
      await admin.close();
    }
    // The pool reconnects on its next query: the first check after the database is back may still find the old connection dead.
    await waitWhile(async () => (await fetch(`${t.config.publicUrl}/healthz`)).status !== 200, 50, 100);
    expect((await fetch(`${t.config.publicUrl}/healthz`)).status).toBe(200);
  });
});

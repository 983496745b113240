// A broker on PostgreSQL and Redis at once, as every replica of a cluster runs: /healthz names both parts, and
// after a sign-in and a session the database holds neither the sealing key nor the user's Forgejo tokens in clear.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { RedisClient, SQL } from "bun";
import { randomBytes, randomUUID } from "node:crypto";
import { TokenSealer } from "../../src/crypto.ts";
import { freePort, startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, connectAs, processesMatching, textOf } from "../helpers/mcp.ts";
import { createTestDatabase, type TestDatabase } from "../helpers/postgres.ts";
import { waitWhile } from "../helpers/promises.ts";
import { deleteKeys, REDIS_URL } from "../helpers/redis.ts";

const prefix = `fmb-test-${randomUUID()}:`;

/** Every text-like or binary value of every column of every table outside PostgreSQL's own schemas, named `table.column`. */
async function everyStoredValue(url: string): Promise<{ columns: string[]; values: { column: string; text: string }[] }> {
  const sql = new SQL({ url, max: 1 });
  try {
    const columns = (await sql`
      SELECT c.table_schema, c.table_name, c.column_name, c.data_type
      FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name)
      WHERE t.table_type = 'BASE TABLE' AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
        AND c.data_type IN ('text', 'character varying', 'character', 'bytea', 'json', 'jsonb')`) as { table_schema: string; table_name: string; column_name: string; data_type: string }[];
    const quote = (name: string) => `"${name.replaceAll('"', '""')}"`;
    const values: { column: string; text: string }[] = [];
    for (const { table_schema, table_name, column_name, data_type } of columns) {
      const column = `${table_name}.${column_name}`;
      // bytea comes back as bytes: latin1 keeps each byte as one character, so raw key bytes and ASCII encodings both show.
      const select = data_type === "bytea" ? quote(column_name) : `${quote(column_name)}::text`;
      const rows = (await sql.unsafe(`SELECT ${select} AS v FROM ${quote(table_schema)}.${quote(table_name)} WHERE ${quote(column_name)} IS NOT NULL`)) as { v: string | Uint8Array }[];
      for (const { v } of rows) values.push({ column, text: typeof v === "string" ? v : Buffer.from(v).toString("latin1") });
    }
    return { columns: columns.map((c) => `${c.table_name}.${c.column_name}`), values };
  } finally {
    await sql.close();
  }
}

/** The ways a 32-byte key is written down: base64 (padded or not), base64url, hex in either case, and its raw bytes. */
function spellingsOf(key: Buffer): string[] {
  const base64 = key.toString("base64");
  return [base64, base64.replace(/=+$/, ""), key.toString("base64url"), key.toString("hex"), key.toString("hex").toUpperCase(), key.toString("latin1")];
}

describe("a broker on PostgreSQL and Redis", () => {
  const marker = `--pg-redis-${randomUUID()}`;
  const sealingKey = randomBytes(32);
  let database: TestDatabase;
  let t: TestBroker;
  const env = () => ({
    BROKER_CHILD_COMMAND: childCommand(marker),
    BROKER_DATABASE_URL: database.url,
    BROKER_SEALING_KEY: sealingKey.toString("base64"),
    BROKER_REDIS_URL: REDIS_URL,
    BROKER_REDIS_PREFIX: prefix,
  });

  beforeAll(async () => {
    database = await createTestDatabase();
    t = await startTestBroker({ env: env() });
  });
  afterAll(async () => {
    await t?.stop();
    await database?.drop();
    const redis = new RedisClient(REDIS_URL);
    await deleteKeys(redis, `${prefix}*`);
    redis.close();
    expect(await processesMatching(marker)).toEqual([]);
  });

  test("/healthz names the store, the database and redis, each ok", async () => {
    // The broker connects to Redis in the background: 503 until it has.
    await waitWhile(async () => (await fetch(`${t.config.publicUrl}/healthz`)).status !== 200, 50, 100);
    const health = await fetch(`${t.config.publicUrl}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: "ok", store: "ok", database: "ok", redis: "ok" });
  });

  test("with Redis unreachable and the database up, /healthz is 503 naming redis alone", async () => {
    const closedPort = await freePort();
    const other = await startTestBroker({ env: { ...env(), BROKER_REDIS_URL: `redis://127.0.0.1:${closedPort}` } });
    try {
      const health = await fetch(`${other.config.publicUrl}/healthz`);
      expect(health.status).toBe(503);
      expect(await health.json()).toEqual({ status: "degraded", store: "ok", database: "ok", redis: "failed" });
    } finally {
      await other.stop();
    }
  });

  test("after a sign-in and a tool call, no column of any table holds the sealing key, and the Forgejo tokens are stored sealed", async () => {
    const alice = await connectAs(t, "alice");
    try {
      expect(textOf(await alice.client.callTool({ name: "whoami", arguments: {} }))).toBe("alice");
    } finally {
      await alice.client.close();
    }
    const upstreamTokens = [...t.forgejo.issuedAccessTokens("alice"), ...t.forgejo.issuedRefreshTokens("alice")];
    expect(upstreamTokens.length).toBeGreaterThanOrEqual(2);

    const { columns, values } = await everyStoredValue(database.url);
    // The scan reaches the tables the sign-in wrote to, the sealed credential among them.
    expect(columns).toEqual(expect.arrayContaining(["upstream_credentials.access_token_sealed", "upstream_credentials.refresh_token_sealed", "grants.id", "clients.id", "__drizzle_migrations.hash"]));
    expect(values.length).toBeGreaterThan(columns.length / 2);
    const holding = (needles: string[]) => values.filter(({ text }) => needles.some((needle) => text.includes(needle))).map(({ column }) => column);
    expect(holding(spellingsOf(sealingKey))).toEqual([]);
    expect(holding(upstreamTokens)).toEqual([]);

    // Sealed under the key, bound to the user's row: what the column holds opens to the token Forgejo issued last.
    const rows = new SQL({ url: database.url, max: 1 });
    try {
      const [row] = (await rows`SELECT forgejo_user_id, access_token_sealed, refresh_token_sealed FROM upstream_credentials WHERE forgejo_login = 'alice'`) as {
        forgejo_user_id: string | number;
        access_token_sealed: string;
        refresh_token_sealed: string;
      }[];
      const sealer = await TokenSealer.fromRawKey(sealingKey);
      const user = Number(row!.forgejo_user_id);
      expect(await sealer.unsealUpstreamToken(row!.access_token_sealed, `upstream:${user}:access`)).toBe(t.forgejo.issuedAccessTokens("alice").at(-1)!);
      expect(await sealer.unsealUpstreamToken(row!.refresh_token_sealed, `upstream:${user}:refresh`)).toBe(t.forgejo.issuedRefreshTokens("alice").at(-1)!);
    } finally {
      await rows.close();
    }
  }, 30_000); // a sign-in through the SDK and a child start on a loaded machine
});

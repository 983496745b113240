// `bun run admin` as runAdmin, in-process against an in-process broker: what the operator reads, what a script
// parses (--json), and the exit codes (0 ok, 1 nothing matched, 2 usage, 3 no broker, 4 drain timed out, 5 broker error, 6 partial listing).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runAdmin } from "../../src/admin/cli.ts";
import { ExitCode, type SessionsAnswer } from "../../src/admin/protocol.ts";
import { realTimers, type Timers } from "../../src/supervisor/timers.ts";
import { randomUUID } from "node:crypto";
import { freePort, startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, openSession } from "../helpers/mcp.ts";
import { connectModern } from "../helpers/modern-client.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { SQL } from "bun";
import { createTestDatabase, type TestDatabase } from "../helpers/postgres.ts";
import { waitWhile } from "../helpers/promises.ts";

let t: TestBroker;
let sessionId: string;
beforeAll(async () => {
  t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand() } });
  t.forgejo.setCurrentUser("alice");
  sessionId = await openSession(t.mcpUrl, (await obtainTokens(t.config.publicUrl)).accessToken);
});
afterAll(() => t.stop());

async function admin(argv: string[], options: { dataDir?: string; timers?: Timers; onOut?: (line: string) => void } = {}) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runAdmin(argv, {
    env: { BROKER_DATA_DIR: options.dataDir ?? t.dataDir },
    out: (line) => {
      out.push(line);
      options.onOut?.(line);
    },
    err: (line) => err.push(line),
    timers: options.timers ?? realTimers,
  });
  return { code, out: out.join("\n"), err: err.join("\n") };
}

describe("admin command output", () => {
  test("sessions: a table with a header and the session's user, client and id", async () => {
    const { code, out } = await admin(["sessions"]);
    expect(code).toBe(ExitCode.ok);
    const [header, row] = out.split("\n");
    expect(header!.split(/\s+/)).toEqual(["ERA", "USER", "CLIENT", "AGE", "IDLE", "REPLICA", "PID", "RSS", "STATE", "ID"]);
    expect(row!.split(/\s{2,}/).slice(0, 3)).toEqual(["legacy", "alice", "Test"]);
    expect(row).toEndWith(sessionId);
  });

  test("sessions --json: the broker's answer as it is", async () => {
    const { code, out } = await admin(["sessions", "--json"]);
    expect(code).toBe(ExitCode.ok);
    const answer = JSON.parse(out) as SessionsAnswer;
    expect(answer.partial).toBe(false);
    expect(answer.sessions.map((row) => [row.era, row.user, row.id])).toEqual([["legacy", "alice", sessionId]]);
  });

  test("clients: the client with one grant", async () => {
    const { code, out } = await admin(["clients"]);
    expect(code).toBe(ExitCode.ok);
    expect(out.split("\n")[1]!.split(/\s{2,}/).slice(1, 4)).toEqual(["Test", "none", "1"]);
  });
});

describe("admin command exit codes", () => {
  test("nothing matched: 1, and why on stderr", async () => {
    const { code, err } = await admin(["revoke", "--user", "nobody"]);
    expect(code).toBe(ExitCode.notFound);
    expect(err).toContain("no active grant for user nobody");
  });

  test("a wrong command line: 2, with the usage", async () => {
    const { code, err } = await admin(["revoke"]);
    expect(code).toBe(ExitCode.usage);
    expect(err).toContain("usage: bun run admin");
  });

  test("no broker on that data directory: 3", async () => {
    const empty = mkdtempSync(join(tmpdir(), "fmb-admin-"));
    try {
      const { code, err } = await admin(["sessions"], { dataDir: empty });
      expect(code).toBe(ExitCode.brokerNotRunning);
      expect(err).toContain("is the broker running");
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  // Last: the broker drains from here on.
  test("drain --timeout with a child still running: 4 once the timeout fires, after the count was printed", async () => {
    let fire: (() => void) | null = null;
    const timers: Timers = { ...realTimers, setTimeout: (fn) => ((fire = fn), 1), clearTimeout: () => {} };
    const { code, out, err } = await admin(["drain", "--timeout", "30"], { timers, onOut: () => fire?.() });
    expect(out).toBe("draining: 1 child left");
    expect(code).toBe(ExitCode.drainTimedOut);
    expect(err).toContain("after 30 s, children left: 1");
  });
});

describe("sessions while Redis does not answer", () => {
  let offline: TestBroker;
  beforeAll(async () => {
    // BROKER_REDIS_URL names a port nobody listens on: the broker starts and serves, its link to the other replicas down.
    offline = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand(), BROKER_REDIS_URL: `redis://127.0.0.1:${await freePort()}`, BROKER_REDIS_PREFIX: `fmb-test-${randomUUID()}:` } });
    offline.forgejo.setCurrentUser("alice");
    await openSession(offline.mcpUrl, (await obtainTokens(offline.config.publicUrl)).accessToken);
    await (await connectModern(offline, "bob")).client.listTools();
  }, 30_000); // a broker, a sign-in, a session and a principal child's start (with its era probe) on a loaded machine

  afterAll(() => offline.stop());

  test("this replica's own rows, a warning on stderr and exit 6; --json says partial", async () => {
    const table = await admin(["sessions"], { dataDir: offline.dataDir });
    expect(table.code).toBe(ExitCode.partial);
    expect(table.err).toStartWith("admin: other replicas not listed: Redis unreachable (");
    expect(table.out.split("\n").slice(1).map((row) => row.split(/\s{2,}/).slice(0, 2))).toEqual([["legacy", "alice"], ["modern", "bob"]]);

    const json = await admin(["sessions", "--json"], { dataDir: offline.dataDir });
    expect(json.code).toBe(ExitCode.partial);
    expect(json.err).toContain("other replicas not listed: Redis unreachable");
    const answer = JSON.parse(json.out) as SessionsAnswer;
    expect(answer.partial).toBe(true);
    expect(answer.warning).toStartWith("other replicas not listed: Redis unreachable (");
    expect(answer.sessions.map((row) => [row.era, row.user])).toEqual([["legacy", "alice"], ["modern", "bob"]]);
  });
});

describe("the broker's database does not answer", () => {
  let database: TestDatabase;
  let onPostgres: TestBroker;
  beforeAll(async () => {
    database = await createTestDatabase();
    onPostgres = await startTestBroker({ env: { BROKER_DATABASE_URL: database.url, BROKER_SEALING_KEY: Buffer.alloc(32, 5).toString("base64") } });
  });
  afterAll(async () => {
    await onPostgres.stop();
    await database.drop();
  });

  test("clients, revoke: 5 (broker error), the broker's reason on stderr, nothing on stdout; 0 again once it is back", async () => {
    expect((await admin(["clients"], { dataDir: onPostgres.dataDir })).code).toBe(ExitCode.ok);
    const name = new URL(database.url).pathname.slice(1);
    const server = new SQL({ url: database.url.replace(/\/[^/]+$/, "/test"), max: 1 });
    try {
      // As when the database server is stopped: no new connection, and the broker's open ones cut.
      await server.unsafe(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
      await server`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ${name}`;
      for (const argv of [["clients"], ["revoke", "--user", "alice"]]) {
        const { code, out, err } = await admin(argv, { dataDir: onPostgres.dataDir });
        expect({ argv, code, out }).toEqual({ argv, code: ExitCode.brokerError, out: "" });
        // The reason, not the query the store ran.
        expect(err).toMatch(/^admin: the broker's database failed: .*(connection|connections)/);
        expect(err).not.toMatch(/select|params/i);
      }
    } finally {
      await server.unsafe(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
      await server.close();
    }
    // The pool reconnects on its next query: the first after the database is back may still find its old connection dead.
    await waitWhile(async () => (await admin(["clients"], { dataDir: onPostgres.dataDir })).code !== ExitCode.ok, 50, 100);
    expect((await admin(["clients"], { dataDir: onPostgres.dataDir })).code).toBe(ExitCode.ok);
  }, 30_000); // a broker on PostgreSQL with its migrations, and seven admin commands, on a loaded machine
});

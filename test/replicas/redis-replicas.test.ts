// Two brokers sharing one Redis (and one database file, standing in for PostgreSQL), as replicas behind
// a load balancer: revocation reaches the other replica, rate limits count across both, liveness keys, health.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { RedisClient } from "bun";
import { randomBytes, randomUUID } from "node:crypto";
import { AdminClient } from "../../src/admin/client.ts";
import { runAdmin } from "../../src/admin/cli.ts";
import { adminSocketPath, ExitCode, type SessionsAnswer } from "../../src/admin/protocol.ts";
import type { RunningBroker } from "../../src/broker.ts";
import { HOP_HEADER, hopKeyFrom, signHop } from "../../src/replicas/internal-hop.ts";
import { realTimers } from "../../src/supervisor/timers.ts";
import { freePort, identityOf, startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { connectAs, INITIALIZE, isAlive, openSession, postMcp } from "../helpers/mcp.ts";
import { modernHeaders, modernRequest } from "../helpers/modern-client.ts";
import { obtainTokens, postForm } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";
import { startReplicaPair, type ReplicaPair } from "../helpers/replica-pair.ts";
import { watchStandaloneStream } from "../helpers/watched-stream.ts";

// The pair's, once started.
let prefix: string;
let redis: RedisClient;

async function keysUnder(pattern: string): Promise<string[]> {
  return ((await redis.send("KEYS", [`${prefix}${pattern}`])) as string[]).sort();
}

function registerFrom(url: string, address: string): Promise<Response> {
  return fetch(`${url}/oauth/register`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-forwarded-for": address },
    body: JSON.stringify({ redirect_uris: ["http://127.0.0.1:9/cb"], client_name: "rate" }),
  });
}

async function within<T>(ms: number, promise: Promise<T>): Promise<T | "timed out"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"timed out">((resolve) => (timer = setTimeout(() => resolve("timed out"), ms)));
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

describe("two replicas sharing Redis", () => {
  const rateLimit = { burst: 6, perSecond: 0.001 };
  let pair: ReplicaPair;
  let a: TestBroker;
  let b: RunningBroker;
  let bMcpUrl: string;

  beforeAll(async () => {
    // B answers for the same public URL (the load balancer's) on a port of its own, over A's database file.
    ({ a, b, prefix, redis } = pair = await startReplicaPair({ env: { BROKER_TRUSTED_PROXIES: "127.0.0.1" }, broker: { rateLimit } }));
    bMcpUrl = `${b.url}/mcp`;
  });

  afterAll(() => pair?.stop());

  test("/healthz names redis as ok, and each replica holds a liveness key with its replica URL", async () => {
    for (const url of [a.config.publicUrl, b.url]) {
      expect(await (await fetch(`${url}/healthz`)).json()).toEqual({ status: "ok", store: "ok", redis: "ok" });
    }
    const keys = await keysUnder("replica:*");
    expect(keys).toHaveLength(2);
    expect((await Promise.all(keys.map((key) => redis.get(key)))).sort()).toEqual([a.config.publicUrl, b.url].sort());
    expect(await redis.pttl(keys[0]!)).toBeGreaterThan(0);
  });

  test("a grant revoked on A ends its session on B within 1 s, and B refuses its token at once", async () => {
    const signedIn = await connectAs(a, "alice");
    try {
      const token = signedIn.provider.savedTokens!.access_token;
      const sessionId = await openSession(bMcpUrl, token);
      const stream = await watchStandaloneStream(bMcpUrl, token, sessionId);
      expect(stream.status).toBe(200);
      expect(b.registry.sessionsOf(1)).toHaveLength(1);
      // B has just answered this token: its identity cache holds it.
      expect((await postMcp(bMcpUrl, token, { jsonrpc: "2.0", id: 1, method: "tools/list" }, { "mcp-session-id": sessionId })).status).toBe(200);

      // Revoking the refresh token revokes the whole grant (RFC 7009 §2.1): every session of it ends.
      const refreshToken = signedIn.provider.savedTokens!.refresh_token!;
      const revoked = await postForm(`${a.config.publicUrl}/oauth/revoke`, { token: refreshToken, client_id: signedIn.provider.clientInformation()!.client_id });
      expect(revoked.status).toBe(200);
      expect(await within(1_000, stream.ended)).toBe("ended");
      expect(b.registry.sessionsOf(1)).toEqual([]);
      const after = await postMcp(bMcpUrl, token, { jsonrpc: "2.0", id: 2, method: "tools/list" });
      expect(after.status).toBe(401);
    } finally {
      await signedIn.client.close().catch(() => {});
    }
  }, 30_000);

  test("one address's registrations are counted across both replicas", async () => {
    const address = "198.51.100.23";
    const statuses: number[] = [];
    for (let i = 0; i < rateLimit.burst + 1; i++) statuses.push((await registerFrom(i % 2 === 0 ? a.config.publicUrl : b.url, address)).status);
    expect(statuses).toEqual([...Array(rateLimit.burst).fill(201), 429]);
    // The count sits under the prefix, keyed on the address and the endpoint, nothing else.
    expect(await keysUnder("rate:*")).toContain(`${prefix}rate:register:${address}`);
  });

  test("a session opened on A is used through B as if B held it: a tool call with progress over SSE, a resumed stream, the GET stream, DELETE", async () => {
    const signedIn = await connectAs(a, "bob");
    try {
      const token = signedIn.provider.savedTokens!.access_token;
      const sessionId = await openSession(a.mcpUrl, token);
      const counting = { jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "slow_count", arguments: { n: 3 }, _meta: { progressToken: "p" } } };
      const called = await postMcp(bMcpUrl, token, counting, { "mcp-session-id": sessionId, accept: "text/event-stream, application/json" });
      expect(called.status).toBe(200);
      expect(called.headers.get("content-type")).toStartWith("text/event-stream");
      expect(called.headers.get("mcp-session-id")).toBe(sessionId);
      const events = (await called.text()).split("\n\n").filter((event) => event.includes("data:"));
      const messages = events.map((event) => JSON.parse(/^data: (.*)$/m.exec(event)![1]!));
      expect(messages.map((message) => message.params?.progress ?? message.result.content[0].text)).toEqual([1, 2, 3, "counted to 3"]);
      // Resuming after the first event, through B, replays the rest from A.
      const firstId = /^id: (.*)$/m.exec(events[0]!)![1]!;
      const resumed = await fetch(bMcpUrl, { headers: { authorization: `Bearer ${token}`, accept: "text/event-stream", "mcp-session-id": sessionId, "last-event-id": firstId } });
      expect(resumed.status).toBe(200);
      const replayed = await resumed.text();
      expect(replayed).toContain('"progress":2');
      expect(replayed).toContain("counted to 3");
      expect(replayed).not.toContain('"progress":1,');

      const stream = await watchStandaloneStream(bMcpUrl, token, sessionId);
      expect(stream.status).toBe(200);
      expect(b.registry.holds(sessionId)).toBe(false);
      const ended = await fetch(bMcpUrl, { method: "DELETE", headers: { authorization: `Bearer ${token}`, "mcp-session-id": sessionId } });
      expect(ended.status).toBe(204);
      expect(await within(2_000, stream.ended)).toBe("ended");
      expect(a.broker.registry.holds(sessionId)).toBe(false);
      expect((await postMcp(bMcpUrl, token, { jsonrpc: "2.0", id: 8, method: "tools/list" }, { "mcp-session-id": sessionId })).status).toBe(404);
    } finally {
      await signedIn.client.close().catch(() => {});
    }
  }, 30_000);

  test("a request claiming to be forwarded is served only with a fresh hop HMAC under the shared key; a forged or stale one is refused", async () => {
    const signedIn = await connectAs(a, "bob");
    try {
      const token = signedIn.provider.savedTokens!.access_token;
      const sessionId = await openSession(a.mcpUrl, token);
      const hopKey = hopKeyFrom(Buffer.from(pair.env.BROKER_SEALING_KEY!, "base64"));
      const target = { method: "POST", path: "/mcp", sessionId };
      const list = (hop: string) => postMcp(a.mcpUrl, token, { jsonrpc: "2.0", id: 9, method: "tools/list" }, { "mcp-session-id": sessionId, [HOP_HEADER]: hop });
      expect((await list(signHop(hopKey, target, Date.now()))).status).toBe(200);
      expect((await list(signHop(hopKeyFrom(randomBytes(32)), target, Date.now()))).status).toBe(403);
      expect((await list(signHop(hopKey, target, Date.now() - 60_000))).status).toBe(403);
      expect((await list(signHop(hopKey, { ...target, method: "DELETE" }, Date.now()))).status).toBe(403);
      expect((await list("t=1, sig=forged")).status).toBe(403);
    } finally {
      await signedIn.client.close().catch(() => {});
    }
  }, 30_000);

  let leftOnB: string;

  test("a session started on B is in the directory under B, with its grant, the initialize as sent and the negotiated version; a deleted one is not", async () => {
    const signedIn = await connectAs(a, "bob");
    try {
      const token = signedIn.provider.savedTokens!.access_token;
      const deleted = await openSession(bMcpUrl, token);
      leftOnB = await openSession(bMcpUrl, token);
      const stored = (id: string) => redis.get(`${prefix}session:${id}`);
      const entry = JSON.parse((await stored(leftOnB))!);
      expect(JSON.parse(entry.initialize)).toEqual(INITIALIZE);
      expect(entry.protocolVersion).toBe("2025-11-25");
      expect(await redis.get(`${prefix}replica:${entry.owner}`)).toBe(b.url);
      expect(entry.grantId).toBe(JSON.parse((await stored(deleted))!).grantId);
      expect(await redis.pttl(`${prefix}session:${leftOnB}`)).toBe(-1);
      const ended = await fetch(bMcpUrl, { method: "DELETE", headers: { authorization: `Bearer ${token}`, "mcp-session-id": deleted } });
      expect(ended.status).toBe(204);
      await waitWhile(async () => (await stored(deleted)) !== null, 20, 50);
      expect(await stored(deleted)).toBeNull();
    } finally {
      await signedIn.client.close().catch(() => {});
    }
  }, 30_000);

  test("A's admin sessions lists a session opened on B with B's URL, its user, client and age, and A's own session once", async () => {
    const signedIn = await connectAs(a, "alice");
    try {
      const token = signedIn.provider.savedTokens!.access_token;
      const onB = await openSession(bMcpUrl, token);
      const onA = await openSession(a.mcpUrl, token);
      const { sessions } = await new AdminClient(adminSocketPath(a.dataDir)).sessions("alice");
      const byId = new Map(sessions.map((row) => [row.id, row]));
      // The signed-in client holds a session of its own on A, besides the two opened here; none is listed twice.
      expect(byId.size).toBe(3);
      expect(sessions).toHaveLength(3);
      expect(sessions.filter((row) => row.replica === b.url).map((row) => row.id)).toEqual([onB]);
      expect(byId.get(onB)).toMatchObject({ era: "legacy", user: "alice", replica: b.url, idleS: null, pid: null, rssBytes: null, state: "serving" });
      expect(byId.get(onB)!.clientName).toBe(byId.get(onA)!.clientName);
      expect(byId.get(onB)!.ageS).toBeGreaterThanOrEqual(0);
      expect(byId.get(onA)).toMatchObject({ era: "legacy", user: "alice", pid: expect.any(Number) });
      expect(byId.get(onA)!.replica).not.toBe(b.url);
    } finally {
      await signedIn.client.close().catch(() => {});
    }
  }, 30_000);

  test("A's admin sessions lists a principal child started on B with B's URL, the child's pid and memory, once; --user and --json too; once the grant is revoked on A the child ends within 1 s, and its row goes", async () => {
    a.forgejo.setCurrentUser("bob");
    const { accessToken } = await obtainTokens(a.config.publicUrl);
    const body = modernRequest(1, "tools/list");
    expect((await postMcp(bMcpUrl, accessToken, body, modernHeaders(body))).status).toBe(200);
    const { grantId } = await identityOf(a, accessToken);
    const child = b.principals.childOf(grantId)!;
    const adminOnA = new AdminClient(adminSocketPath(a.dataDir));

    // Bob's legacy sessions from the tests before are listed too: his principal children are what this test is about.
    const principalsOf = async (user: string) => (await adminOnA.sessions(user)).sessions.filter((r) => r.era === "modern");
    const answer = await adminOnA.sessions("bob");
    expect(answer.partial).toBe(false);
    expect(answer.sessions.filter((r) => r.era === "modern")).toEqual([expect.objectContaining({ era: "modern", id: grantId, grantId, user: "bob", clientName: "Test", childEra: "legacy", replica: b.url, pid: child.childPid, state: "serving" })]);
    const row = answer.sessions.find((r) => r.era === "modern");
    // Memory and idle time as B last recorded them: the stand-in child is a bun process, tens of MiB.
    expect(row!.rssBytes).toBeGreaterThan(10 * 1024 * 1024);
    expect(row!.idleS).toBeGreaterThanOrEqual(0);
    expect(row!.ageS).toBeGreaterThanOrEqual(0);
    expect(await principalsOf("alice")).toEqual([]);
    const out: string[] = [];
    const code = await runAdmin(["sessions", "--user", "bob", "--json"], { env: { BROKER_DATA_DIR: a.dataDir }, out: (line) => out.push(line), err: () => {}, timers: realTimers });
    expect(code).toBe(ExitCode.ok);
    expect((JSON.parse(out.join("")) as SessionsAnswer).sessions.filter((r) => r.era === "modern").map((r) => [r.era, r.replica, r.pid])).toEqual([["modern", b.url, child.childPid]]);

    // Revoked on A: B hears it and its child has exited within 1 s of the revocation's answer; its record goes with it.
    await adminOnA.revoke({ grant: grantId });
    const answered = performance.now();
    await waitWhile(() => isAlive(child.childPid) || b.principals.childOf(grantId) !== null, 300, 10);
    const endedAfterMs = performance.now() - answered;
    expect(isAlive(child.childPid)).toBe(false);
    expect(b.principals.childOf(grantId)).toBeNull();
    expect(endedAfterMs).toBeLessThan(1_000);
    await waitWhile(async () => (await principalsOf("bob")).length > 0, 50, 100);
    expect(await principalsOf("bob")).toEqual([]);
  }, 30_000);

  test("a stopped replica's liveness key is gone; its sessions stay in the directory for a restore elsewhere, until the idle timeout", async () => {
    await b.stop();
    expect((await Promise.all((await keysUnder("replica:*")).map((key) => redis.get(key))))).toEqual([a.config.publicUrl]);
    const ttl = await redis.pttl(`${prefix}session:${leftOnB}`);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(a.config.sessions.idleTimeoutMs); // both replicas run the same configuration
    // A's admin no longer lists them: their owner is gone.
    const listed = (await new AdminClient(adminSocketPath(a.dataDir)).sessions()).sessions;
    expect(listed.filter((row) => row.replica === b.url)).toEqual([]);
    // Its principal directory's hash is gone with it.
    expect(await keysUnder("principals:*")).toEqual([]);
  });
});

test("with Redis unreachable the broker starts, /healthz is 503 naming redis, and sign-up limits fall back to the replica's own", async () => {
  const closedPort = await freePort();
  const t = await startTestBroker({ env: { BROKER_REDIS_URL: `redis://127.0.0.1:${closedPort}`, BROKER_REDIS_PREFIX: `fmb-test-${randomUUID()}:` }, broker: { rateLimit: { burst: 1, perSecond: 0.001 } } });
  try {
    const health = await fetch(`${t.config.publicUrl}/healthz`);
    expect(health.status).toBe(503);
    expect(await health.json()).toEqual({ status: "degraded", store: "ok", redis: "failed" });
    expect((await registerFrom(t.config.publicUrl, "ignored")).status).toBe(201);
    expect((await registerFrom(t.config.publicUrl, "ignored")).status).toBe(429);
  } finally {
    await t.stop();
  }
});

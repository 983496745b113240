// How long sessions live, seen from HTTP: caps (429/503 with Retry-After), the idle reaper, a stalled
// Forgejo at session start, and revocation ending the sessions of a sign-in with no token left.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { hashToken } from "../../src/crypto.ts";
import { MIN_REFRESH_INTERVAL_MS, refreshDueAt } from "../../src/upstream/refresh-timing.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, holdStandaloneStream, INITIALIZE, isAlive, openSession, postMcp, processesMatching } from "../helpers/mcp.ts";
import { obtainTokens, postForm } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

async function tokenFor(t: TestBroker, login: string): Promise<string> {
  t.forgejo.setCurrentUser(login);
  return (await obtainTokens(t.config.publicUrl)).accessToken;
}

describe("caps", () => {
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand(), BROKER_MAX_SESSIONS: "3", BROKER_MAX_SESSIONS_PER_USER: "2" } });
  });
  afterAll(async () => {
    await t.stop();
  });

  test("with a call in flight on every session: BROKER_MAX_SESSIONS_PER_USER → 429, BROKER_MAX_SESSIONS → 503, both with Retry-After; a freed slot is usable again", async () => {
    const alice = await tokenFor(t, "alice");
    const bob = await tokenFor(t, "bob");
    const held = new AbortController();
    /** A slow call whose SSE answer has begun (its first progress event): the session has a request in flight. */
    const busy = async (token: string, sessionId: string) => {
      const response = await fetch(t.mcpUrl, {
        method: "POST",
        signal: held.signal,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-session-id": sessionId },
        body: JSON.stringify({ jsonrpc: "2.0", id: 9, method: "tools/call", params: { name: "slow_count", arguments: { n: 1000, delay_ms: 100 }, _meta: { progressToken: "p" } } }),
      });
      expect(response.headers.get("content-type")).toBe("text/event-stream");
      void response.text().catch(() => {});
    };
    const [first, second] = [await openSession(t.mcpUrl, alice), await openSession(t.mcpUrl, alice)];
    await busy(alice, first!);
    await busy(alice, second!);

    const perUser = await postMcp(t.mcpUrl, alice, INITIALIZE);
    expect(perUser.status).toBe(429);
    const userRetry = Number(perUser.headers.get("retry-after"));
    // The calls went out moments ago; they time out BROKER_REQUEST_TIMEOUT_S (300 s) after.
    expect(userRetry).toBeGreaterThan(280);
    expect(userRetry).toBeLessThanOrEqual(300);
    expect(perUser.headers.get("mcp-session-id")).toBeNull();
    expect(await perUser.json()).toEqual({
      jsonrpc: "2.0",
      id: 1,
      error: { code: -32000, message: `you have 2 open sessions, the most allowed, and each has a request in flight; one frees within ${userRetry} s at the latest` },
    });

    await busy(bob, await openSession(t.mcpUrl, bob));
    const total = await postMcp(t.mcpUrl, bob, INITIALIZE);
    expect(total.status).toBe(503);
    const totalRetry = Number(total.headers.get("retry-after"));
    expect(totalRetry).toBeGreaterThan(280);
    expect(await total.json()).toEqual({
      jsonrpc: "2.0",
      id: 1,
      error: { code: -32000, message: `the broker is at its limit of 3 sessions, and each has a request in flight; one frees within ${totalRetry} s at the latest` },
    });

    expect((await fetch(t.mcpUrl, { method: "DELETE", headers: { authorization: `Bearer ${alice}`, "mcp-session-id": first! } })).status).toBe(204);
    expect(await openSession(t.mcpUrl, bob)).toMatch(/^[0-9a-f]{48}$/);
    held.abort();
    // Two sign-ins and five sandboxed children: more than bun's 5 s default on a loaded 2-core machine.
  }, 30_000);
});

describe("idle reaping", () => {
  let t: TestBroker;
  beforeAll(async () => {
    // 2 s, not 1: the watched session must get its GET stream open before it counts as idle, on a loaded machine too.
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand(), BROKER_IDLE_TIMEOUT_S: "2" } });
  });
  afterAll(async () => {
    await t.stop();
  });

  test("a session with no request and no stream is stopped after BROKER_IDLE_TIMEOUT_S; one with an open stream stays", async () => {
    const token = await tokenFor(t, "alice");
    const identity = async () => (await t.broker.store.findAccessIdentity(hashToken(token), Date.now()))!;
    const idle = await openSession(t.mcpUrl, token);
    const watched = await openSession(t.mcpUrl, token);
    const idlePid = t.broker.registry.get(idle, (await identity())).childPid;
    const controller = new AbortController();
    const stream = await holdStandaloneStream(t.mcpUrl, token, watched, controller.signal);
    expect(stream.status).toBe(200);

    // The reaper looks once a second; 2 s idle plus up to 1 s until it looks, plus the child's stop.
    await waitWhile(async () => isAlive(idlePid), 200, 50);
    expect(isAlive(idlePid)).toBe(false);
    const late = await postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: 3, method: "tools/list" }, { "mcp-session-id": idle });
    expect(late.status).toBe(404);
    expect(await late.json()).toEqual({ jsonrpc: "2.0", id: 3, error: { code: -32001, message: "Session not found" } });
    expect(t.logs.some((line) => line.includes('"reason":"the session was idle for too long"'))).toBe(true);

    expect((await postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: 4, method: "tools/list" }, { "mcp-session-id": watched })).status).toBe(200);
    controller.abort();
   }, 15_000);
});

describe("a Forgejo that stops answering while a session start needs a refresh", () => {
  let t: TestBroker;
  beforeAll(async () => {
    // Forgejo's tokens live 10 s here: a session start refreshes once a token is 5 s old (half its life).
    t = await startTestBroker({ forgejo: { accessTokenTtlS: 10 }, env: { BROKER_CHILD_COMMAND: childCommand(), FORGEJO_TIMEOUT_S: "1" } });
  });
  afterAll(async () => {
    t.forgejo.delayTokenEndpoint(0);
    await t.stop();
  });

  test("initialize answers 503 with Retry-After after FORGEJO_TIMEOUT_S; the refresh runs on and its token serves the next start", async () => {
    const token = await tokenFor(t, "alice");
    const { forgejoUserId } = (await t.broker.store.findAccessIdentity(hashToken(token), Date.now()))!;
    const stored = (await t.broker.store.getUpstreamCredential(forgejoUserId))!;
    const due = refreshDueAt(stored.updatedAt, stored.accessExpiresAt!, { leadMs: t.config.sessions.refreshLeadMs, minIntervalMs: MIN_REFRESH_INTERVAL_MS });
    await waitWhile(async () => Date.now() < due, 200, 50);
    t.forgejo.delayTokenEndpoint(2500);
    const refreshesBefore = t.forgejo.stats.refreshes;

    const refreshed = () => t.logs.some((line) => line.includes('"msg":"upstream credential refreshed"'));
    const stalled = await postMcp(t.mcpUrl, token, INITIALIZE);
    // The answer did not wait for the stalled refresh to finish.
    expect(refreshed()).toBe(false);
    expect(stalled.status).toBe(503);
    expect(stalled.headers.get("retry-after")).toBe("10");
    expect(stalled.headers.get("mcp-session-id")).toBeNull();
    expect(await stalled.json()).toEqual({
      jsonrpc: "2.0",
      id: 1,
      error: { code: -32000, message: "Forgejo could not be reached to refresh the user's token; try again shortly" },
    });
    expect(t.logs.some((line) => line.includes('"msg":"/mcp request failed"'))).toBe(false);

    await waitWhile(async () => !refreshed(), 80, 25);
    t.forgejo.delayTokenEndpoint(0);
    expect(await openSession(t.mcpUrl, token)).toMatch(/^[0-9a-f]{48}$/);
    expect(t.forgejo.stats.refreshes).toBe(refreshesBefore + 1);
  }, 15_000);
});

describe("a Forgejo that refuses the refresh a session start needs", () => {
  let t: TestBroker;
  beforeAll(async () => {
    // Forgejo's tokens live 10 s here: a session start refreshes once a token is 5 s old (half its life).
    t = await startTestBroker({ forgejo: { accessTokenTtlS: 10 }, env: { BROKER_CHILD_COMMAND: childCommand() } });
  });
  afterAll(async () => {
    await t.stop();
  });

  test("initialize answers 401 with the bearer challenge: the sign-in is over, no child is started", async () => {
    const token = await tokenFor(t, "bob");
    const { forgejoUserId } = (await t.broker.store.findAccessIdentity(hashToken(token), Date.now()))!;
    const stored = (await t.broker.store.getUpstreamCredential(forgejoUserId))!;
    const due = refreshDueAt(stored.updatedAt, stored.accessExpiresAt!, { leadMs: t.config.sessions.refreshLeadMs, minIntervalMs: MIN_REFRESH_INTERVAL_MS });
    await waitWhile(async () => Date.now() < due, 200, 50);
    t.forgejo.revokeUser("bob");

    const refused = await postMcp(t.mcpUrl, token, INITIALIZE);
    expect(refused.status).toBe(401);
    expect(refused.headers.get("www-authenticate")).toContain('error="invalid_token"');
    expect(refused.headers.get("www-authenticate")).toContain(`resource_metadata="${t.config.publicUrl}/.well-known/oauth-protected-resource/mcp"`);
    expect(refused.headers.get("mcp-session-id")).toBeNull();
    expect(await refused.json()).toEqual({ error: "invalid_token", error_description: "The sign-in to Forgejo has ended; sign in again" });
    expect(t.logs.some((line) => line.includes('"msg":"/mcp request failed"'))).toBe(false);
    expect(t.broker.registry.size).toBe(0);
  }, 15_000);
});

describe("revocation", () => {
  const marker = "revocation-test-child";
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand(marker) } });
  });
  afterAll(async () => {
    await t.stop();
  });

  const form = (path: string, fields: Record<string, string>) => postForm(`${t.config.publicUrl}${path}`, fields);

  test("a session ends as soon as every token of its sign-in is revoked; a revoked access token alone leaves it to the refreshed one", async () => {
    t.forgejo.setCurrentUser("alice");
    const signedIn = await obtainTokens(t.config.publicUrl);
    const session = await openSession(t.mcpUrl, signedIn.accessToken);
    const identity = (await t.broker.store.findAccessIdentity(hashToken(signedIn.accessToken), Date.now()))!;
    const pid = t.broker.registry.get(session, identity).childPid;

    expect((await form("/oauth/revoke", { token: signedIn.accessToken, client_id: signedIn.clientId })).status).toBe(200);
    // The revocation was handled before the answer: a session it ended would be gone already.
    expect(t.broker.registry.hasGrant(identity.grantId)).toBe(true);
    expect(isAlive(pid)).toBe(true);
    const refreshed = (await (
      await form("/oauth/token", { grant_type: "refresh_token", refresh_token: signedIn.refreshToken, client_id: signedIn.clientId })
    ).json()) as { access_token: string; refresh_token: string };
    const listed = await postMcp(t.mcpUrl, refreshed.access_token, { jsonrpc: "2.0", id: 2, method: "tools/list" }, { "mcp-session-id": session });
    expect(listed.status).toBe(200);

    expect((await form("/oauth/revoke", { token: refreshed.refresh_token, client_id: signedIn.clientId })).status).toBe(200);
    await waitWhile(async () => isAlive(pid), 40, 25);
    expect(isAlive(pid)).toBe(false);
    expect(t.broker.registry.hasGrant(identity.grantId)).toBe(false);
    expect(t.logs.some((line) => line.includes('"reason":"every token of its sign-in was revoked"'))).toBe(true);
  });

  test("a session still starting when its sign-in is revoked is refused with 401, and its child does not live on", async () => {
    t.forgejo.setCurrentUser("bob");
    const signedIn = await obtainTokens(t.config.publicUrl);
    // The child asks Forgejo for its version before it reads initialize: the start takes 1.5 s.
    t.forgejo.delayApi(1500);
    try {
      const starting = postMcp(t.mcpUrl, signedIn.accessToken, INITIALIZE);
      let child: { pid: number } | undefined;
      await waitWhile(async () => (child = (await processesMatching(marker))[0]) === undefined, 40, 25);
      expect(child).toBeDefined();

      expect((await form("/oauth/revoke", { token: signedIn.refreshToken, client_id: signedIn.clientId })).status).toBe(200);
      const answer = await starting;
      expect(answer.status).toBe(401);
      expect(answer.headers.get("www-authenticate")).toContain('error="invalid_token"');
      expect(answer.headers.get("mcp-session-id")).toBeNull();
      await waitWhile(async () => isAlive(child!.pid), 40, 25);
      expect(isAlive(child!.pid)).toBe(false);
      expect(t.broker.registry.size).toBe(0);
    } finally {
      t.forgejo.delayApi(0);
    }
  });
});

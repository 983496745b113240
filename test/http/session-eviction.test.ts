// Abandoned sessions over HTTP with real children: a user who never sends DELETE is never refused
// because of their own idle sessions, and the per-user cap still bounds the children alive.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { hashToken } from "../../src/crypto.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, INITIALIZE, openSession, outermost, postMcp, processesMatching } from "../helpers/mcp.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";
import { watchStandaloneStream, watchStream } from "../helpers/watched-stream.ts";

const CAP = 3;
const REQUEST_TIMEOUT_S = 120;

describe("sessions beyond BROKER_MAX_SESSIONS_PER_USER", () => {
  const marker = `--eviction-${crypto.randomUUID()}`;
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker({
      env: { BROKER_CHILD_COMMAND: childCommand(marker), BROKER_MAX_SESSIONS_PER_USER: String(CAP), BROKER_REQUEST_TIMEOUT_S: String(REQUEST_TIMEOUT_S) },
    });
  });
  afterAll(async () => {
    await t.stop();
  });

  const callEcho = (token: string, sessionId: string, id: number, text: string) =>
    postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id, method: "tools/call", params: { name: "echo", arguments: { text } } }, { "mcp-session-id": sessionId });

  test("one user opens three times the cap and never ends one: every session starts and answers, the evicted answer 404, never more children than the cap", async () => {
    t.forgejo.setCurrentUser("alice");
    const { accessToken: token } = await obtainTokens(t.config.publicUrl);
    const opened: string[] = [];
    let standalone = null;
    for (let i = 0; i < 3 * CAP; i++) {
      const id = await openSession(t.mcpUrl, token);
      opened.push(id);
      const answer = await callEcho(token, id, 10 + i, `call ${i}`);
      expect(answer.status).toBe(200);
      expect(await answer.text()).toContain(`call ${i}`);
      expect(outermost(await processesMatching(marker)).length).toBeLessThanOrEqual(CAP);
      // The first session also holds the standalone stream, as a client listening for notifications does.
      if (i === 0) standalone = await watchStandaloneStream(t.mcpUrl, token, id);
    }
    expect(new Set(opened).size).toBe(3 * CAP);
    expect(outermost(await processesMatching(marker))).toHaveLength(CAP);
    expect(t.broker.registry.evictions).toEqual({ user: 2 * CAP, global: 0 });

    // The broker ended the first session's stream when it evicted that session.
    expect(standalone!.status).toBe(200);
    expect(await standalone!.ended).toBe("ended");
    for (const id of opened.slice(0, 2 * CAP)) {
      const late = await postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: 3, method: "tools/list" }, { "mcp-session-id": id });
      expect(late.status).toBe(404);
      expect(await late.json()).toEqual({ jsonrpc: "2.0", id: 3, error: { code: -32001, message: "Session not found" } });
    }
    for (const id of opened.slice(2 * CAP)) {
      expect((await postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: 4, method: "tools/list" }, { "mcp-session-id": id })).status).toBe(200);
    }
    const evicted = t.logs.filter((line) => line.includes('"msg":"session ended"') && line.includes('"cap":"user"'));
    expect(evicted).toHaveLength(2 * CAP);
    for (const [i, line] of evicted.entries()) expect(line).toContain(`"session":"${opened[i]}"`);
  }, 60_000);

  test("with a call in flight on every session: 429 whose Retry-After is when the first call times out; once a call ends, its session makes room", async () => {
    t.forgejo.setCurrentUser("bob");
    const { accessToken: token } = await obtainTokens(t.config.publicUrl);
    const identity = async () => (await t.broker.store.findAccessIdentity(hashToken(token), Date.now()))!;
    const sessions: string[] = [];
    for (let i = 0; i < CAP; i++) sessions.push(await openSession(t.mcpUrl, token));
    const calls = sessions.map((id, i) => {
      const cancel = new AbortController();
      const response = fetch(t.mcpUrl, {
        method: "POST",
        signal: cancel.signal,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-session-id": id },
        body: JSON.stringify({
          jsonrpc: "2.0",
          id: 20 + i,
          method: "tools/call",
          params: { name: "slow_count", arguments: { n: 1000, delay_ms: 100 }, _meta: { progressToken: `p${i}` } },
        }),
      });
      return { cancel, response };
    });
    // An SSE answer's headers come with its first event, the first progress: each call is in flight.
    const streams = await Promise.all(calls.map(async ({ response }) => watchStream(await response)));
    for (const stream of streams) expect(stream.status).toBe(200);

    const refused = await postMcp(t.mcpUrl, token, INITIALIZE);
    expect(refused.status).toBe(429);
    const retryAfter = Number(refused.headers.get("retry-after"));
    // The calls went out moments ago; their timeout is REQUEST_TIMEOUT_S.
    expect(retryAfter).toBeGreaterThan(REQUEST_TIMEOUT_S - 20);
    expect(retryAfter).toBeLessThanOrEqual(REQUEST_TIMEOUT_S);
    expect(await refused.json()).toEqual({
      jsonrpc: "2.0",
      id: 1,
      error: { code: -32000, message: `you have ${CAP} open sessions, the most allowed, and each has a request in flight; one frees within ${retryAfter} s at the latest` },
    });

    // The client gives up on the second call: the broker cancels it, and that session is idle again.
    calls[1]!.cancel.abort();
    await waitWhile(async () => t.broker.registry.get(sessions[1]!, (await identity())).inFlight > 0, 100, 20);
    const admitted = await openSession(t.mcpUrl, token);
    expect(t.broker.registry.sessionsOf((await identity()).forgejoUserId).sort()).toEqual([sessions[0]!, sessions[2]!, admitted].sort());
    for (const call of [calls[0]!, calls[2]!]) call.cancel.abort();
  }, 60_000);
});

// Many concurrent slow calls from one signed-in user, seen from HTTP: past the per-session and the
// per-user cap each gets 429 with a JSON-RPC error and Retry-After, and the child never sees it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { hashToken } from "../../src/crypto.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, holdStandaloneStream, openSession, postMcp } from "../helpers/mcp.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

let t: TestBroker;
let token: string;
beforeAll(async () => {
  t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand(), BROKER_MAX_IN_FLIGHT: "4", BROKER_MAX_IN_FLIGHT_PER_USER: "6" } });
  token = (await obtainTokens(t.config.publicUrl)).accessToken;
});
afterAll(async () => {
  await t.stop();
});

const controller = new AbortController();

/** A call that counts for a minute, answered as SSE once its first progress arrives; aborted by the test. */
function slowCall(session: string, id: string): Promise<Response> {
  return fetch(t.mcpUrl, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-session-id": session },
    body: JSON.stringify({ jsonrpc: "2.0", id, method: "tools/call", params: { name: "slow_count", arguments: { n: 1000, delay_ms: 60 }, _meta: { progressToken: id } } }),
    signal: controller.signal,
  });
}

const sessionOf = async (session: string) => t.broker.registry.get(session, (await t.broker.store.findAccessIdentity(hashToken(token), Date.now()))!);

describe("requests in flight", () => {
  test("ten concurrent slow calls on a session: four run, six get 429; the user's cap then holds across sessions and GET streams", async () => {
    const [a, b] = [await openSession(t.mcpUrl, token), await openSession(t.mcpUrl, token)];

    const onA = await Promise.all(Array.from({ length: 10 }, (_, i) => slowCall(a, `a${i}`)));
    expect(onA.filter((response) => response.status === 200)).toHaveLength(4);
    const refusedOnA = onA.filter((response) => response.status === 429);
    expect(refusedOnA).toHaveLength(6);
    for (const response of refusedOnA) {
      expect(response.headers.get("retry-after")).toBe("1");
      expect(response.headers.get("mcp-session-id")).toBe(a);
      const body = await response.json();
      expect(body).toMatchObject({
        jsonrpc: "2.0",
        error: { code: -32000, message: "Too Many Requests: this session has 4 requests in flight, the most allowed; send more once one is answered" },
      });
      expect(body.id).toMatch(/^a\d$/);
    }
    expect((await sessionOf(a)).inFlight).toBe(4);

    // The user holds 4 of 6: a GET stream and one call on the other session take the rest.
    const stream = await holdStandaloneStream(t.mcpUrl, token, b, controller.signal);
    expect(stream.status).toBe(200);
    const onB = await Promise.all(Array.from({ length: 3 }, (_, i) => slowCall(b, `b${i}`)));
    expect(onB.map((response) => response.status).sort()).toEqual([200, 429, 429]);
    for (const response of onB.filter((r) => r.status === 429)) {
      expect((await response.json()).error.message).toBe(
        "Too Many Requests: you have 6 requests in flight and streams open, the most allowed; send more once one is answered",
      );
    }
    expect((await sessionOf(b)).inFlight).toBe(1);
    const refusedGet = await fetch(t.mcpUrl, { headers: { authorization: `Bearer ${token}`, accept: "text/event-stream", "mcp-session-id": a } });
    expect(refusedGet.status).toBe(429);
    await refusedGet.text();

    // Disconnecting gives every slot back.
    controller.abort();
    await waitWhile(async () => (await sessionOf(a)).inFlight + (await sessionOf(b)).inFlight > 0 || (await sessionOf(b)).activeStreams > 0, 100, 20);
    const again = await Promise.all(Array.from({ length: 6 }, (_, i) => postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: i, method: "tools/list" }, { "mcp-session-id": i < 3 ? a : b })));
    expect(again.map((response) => response.status)).toEqual([200, 200, 200, 200, 200, 200]);
  }, 20_000);
});

// Bad input on /mcp, each with its exact status and JSON-RPC error body, and the protocol's plain rules:
// JSON or SSE answers, 202 for notifications, the standalone stream, replay, DELETE, and the session header.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { hashToken } from "../../src/crypto.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { failureRef, loggedUnder } from "../helpers/failure-report.ts";
import { childCommand, INITIALIZE, openSession, postMcp } from "../helpers/mcp.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

let t: TestBroker;
let token: string;
let session: string;

beforeAll(async () => {
  t = await startTestBroker({
    env: { BROKER_CHILD_COMMAND: childCommand(), BROKER_MAX_MESSAGE_BYTES: "2048", BROKER_ALLOWED_ORIGINS: "https://inspector.example" },
    broker: { heartbeatMs: 100 },
  });
  token = (await obtainTokens(t.config.publicUrl)).accessToken;
  session = await openSession(t.mcpUrl, token);
});
afterAll(async () => {
  await t.stop();
});

const rpcError = (id: number | string | null, code: number, message: string) => ({ jsonrpc: "2.0", id, error: { code, message } });
const LIST = { jsonrpc: "2.0", id: 5, method: "tools/list" };

async function expectError(response: Response, status: number, body: unknown) {
  expect({ status: response.status, contentType: response.headers.get("content-type"), body: await response.json() }).toEqual({
    status,
    contentType: "application/json",
    body,
  });
}

describe("refused before anything reaches a child", () => {
  test("a body that is not JSON → 400, -32700", async () => {
    await expectError(await postMcp(t.mcpUrl, token, "{not json", { "mcp-session-id": session }), 400, rpcError(null, -32700, "Parse error: the body is not JSON"));
  });

  test("a JSON-RPC batch → 400, -32600 (2025-11-25 has no batches)", async () => {
    await expectError(
      await postMcp(t.mcpUrl, token, [LIST, { ...LIST, id: 6 }], { "mcp-session-id": session }),
      400,
      rpcError(null, -32600, "Invalid Request: JSON-RPC batches are not supported (MCP 2025-11-25); send one message per request"),
    );
  });

  test("JSON that is not a JSON-RPC message → 400, -32600", async () => {
    await expectError(
      await postMcp(t.mcpUrl, token, { hello: "world" }, { "mcp-session-id": session }),
      400,
      rpcError(null, -32600, "Invalid Request: the body is not a JSON-RPC 2.0 message"),
    );
  });

  test("a content type other than application/json → 415, even when the body is JSON", async () => {
    for (const contentType of ["text/plain", "application/x-www-form-urlencoded", null]) {
      await expectError(
        await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": session, "content-type": contentType }),
        415,
        rpcError(null, -32000, "Unsupported Media Type: Content-Type must be application/json"),
      );
    }
    // Parameters are fine.
    expect((await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": session, "content-type": "application/json; charset=utf-8" })).status).toBe(200);
  });

  test("an Accept that allows neither JSON nor SSE → 406", async () => {
    await expectError(
      await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": session, accept: "text/html" }),
      406,
      rpcError(null, -32000, "Not Acceptable: the client must accept application/json or text/event-stream"),
    );
  });

  test("a body over BROKER_MAX_MESSAGE_BYTES → 413, whether its length is declared or not", async () => {
    const big = { jsonrpc: "2.0", id: 8, method: "tools/call", params: { name: "echo", arguments: { text: "x".repeat(3000) } } };
    const expected = rpcError(null, -32600, "Payload Too Large: a message may have at most 2048 bytes");
    await expectError(await postMcp(t.mcpUrl, token, big, { "mcp-session-id": session }), 413, expected);
    const chunked = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(JSON.stringify(big)));
        controller.close();
      },
    });
    const response = await fetch(t.mcpUrl, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "mcp-session-id": session },
      body: chunked,
    });
    await expectError(response, 413, expected);
    // Just under the limit goes through.
    const fits = { ...big, params: { ...big.params, arguments: { text: "x".repeat(1900) } } };
    expect((await postMcp(t.mcpUrl, token, fits, { "mcp-session-id": session })).status).toBe(200);
  });

  test("no Mcp-Session-Id on a request other than initialize → 400 with the request's id", async () => {
    await expectError(
      await postMcp(t.mcpUrl, token, LIST),
      400,
      rpcError(5, -32000, "Bad Request: the Mcp-Session-Id header is required; start a session with initialize"),
    );
  });

  test("a malformed or unknown Mcp-Session-Id → 404 (clients re-initialize on 404)", async () => {
    for (const id of ["not-a-session", "../../etc/passwd", "0".repeat(48), session.toUpperCase()]) {
      await expectError(await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": id }), 404, rpcError(5, -32001, "Session not found"));
    }
  });

  test("a session of another grant → 403", async () => {
    t.forgejo.setCurrentUser("bob");
    const other = (await obtainTokens(t.config.publicUrl)).accessToken;
    t.forgejo.setCurrentUser("alice");
    await expectError(
      await postMcp(t.mcpUrl, other, LIST, { "mcp-session-id": session }),
      403,
      rpcError(5, -32000, "this session belongs to another authorization"),
    );
  });

  test("an Origin not in BROKER_ALLOWED_ORIGINS → 403, before the token is even looked at", async () => {
    const expected = rpcError(null, -32000, 'Forbidden: Origin "https://evil.example" is not allowed');
    await expectError(await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": session, origin: "https://evil.example" }), 403, expected);
    await expectError(await postMcp(t.mcpUrl, token, LIST, { authorization: null, origin: "https://evil.example" }), 403, expected);
    // The configured origin is let in.
    expect((await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": session, origin: "https://inspector.example" })).status).toBe(200);
  });

  test("a token in the query string → 400 invalid_request from the bearer guard, even with a good header", async () => {
    const response = await fetch(`${t.mcpUrl}?access_token=${token}`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "mcp-session-id": session },
      body: JSON.stringify(LIST),
    });
    expect(response.status).toBe(400);
    expect(response.headers.get("www-authenticate")).toContain('error="invalid_request"');
    expect(await response.json()).toEqual({
      error: "invalid_request",
      error_description: "Access tokens are accepted only in the Authorization header, never in the query string",
    });
  });

  test("no token → 401 with the resource metadata challenge", async () => {
    const response = await postMcp(t.mcpUrl, token, INITIALIZE, { authorization: null });
    expect(response.status).toBe(401);
    expect(response.headers.get("www-authenticate")).toContain(`resource_metadata="${t.config.publicUrl}/.well-known/oauth-protected-resource/mcp"`);
  });

  test("an unsupported MCP-Protocol-Version → 400; a missing one means 2025-03-26 and is accepted", async () => {
    await expectError(
      await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": session, "mcp-protocol-version": "2024-01-01" }),
      400,
      rpcError(5, -32000, 'Unsupported MCP-Protocol-Version "2024-01-01"; supported: 2025-11-25, 2025-06-18, 2025-03-26'),
    );
    for (const version of ["2025-11-25", "2025-06-18", "2025-03-26", null]) {
      expect((await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": session, "mcp-protocol-version": version })).status).toBe(200);
    }
  });

  test("a method other than POST, GET and DELETE → 405 with Allow", async () => {
    const response = await fetch(t.mcpUrl, { method: "PUT", headers: { authorization: `Bearer ${token}`, "mcp-session-id": session } });
    expect(response.headers.get("allow")).toBe("GET, POST, DELETE");
    await expectError(response, 405, rpcError(null, -32000, "Method Not Allowed: use POST, GET or DELETE"));
  });

  test("an initialize whose params the broker cannot rely on → 400, -32602 at once, with no session and no child", async () => {
    const childStarts = () => t.logs.filter((line) => line.includes('"msg":"child started"')).length;
    const startsBefore = childStarts();
    const sessionsBefore = t.broker.registry.size;
    const cases: [unknown, string][] = [
      ["2025-11-25", "params must be an object"],
      [[INITIALIZE.params], "params must be an object"],
      [undefined, "params must be an object"],
      [{ ...INITIALIZE.params, protocolVersion: undefined }, "params.protocolVersion must be a non-empty string"],
      [{ ...INITIALIZE.params, protocolVersion: 20251125 }, "params.protocolVersion must be a non-empty string"],
      [{ ...INITIALIZE.params, capabilities: undefined }, "params.capabilities must be an object"],
      [{ ...INITIALIZE.params, clientInfo: undefined }, "params.clientInfo must be an object"],
    ];
    for (const [params, problem] of cases) {
      const response = await postMcp(t.mcpUrl, token, { ...INITIALIZE, params });
      expect(response.headers.get("mcp-session-id")).toBeNull();
      await expectError(response, 400, rpcError(1, -32602, `Invalid params: ${problem}`));
    }
    expect(t.broker.registry.size).toBe(sessionsBefore);
    expect(childStarts()).toBe(startsBefore);
  });

  test("initialize on an existing session → 400; a client starts a new session without the header", async () => {
    await expectError(
      await postMcp(t.mcpUrl, token, INITIALIZE, { "mcp-session-id": session }),
      400,
      rpcError(1, -32600, "Bad Request: this session is already initialized; send initialize without Mcp-Session-Id for a new one"),
    );
  });
});

describe("the transport's answers", () => {
  test("a request answered at once → application/json with Mcp-Session-Id", async () => {
    const response = await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": session });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe("application/json");
    expect(response.headers.get("mcp-session-id")).toBe(session);
    const body = await response.json();
    expect(body.id).toBe(5);
    expect(body.result.tools).toHaveLength(7);
  });

  test("a request whose progress comes first → text/event-stream, every event with an id, ending with the answer", async () => {
    const response = await postMcp(
      t.mcpUrl,
      token,
      { jsonrpc: "2.0", id: "p", method: "tools/call", params: { name: "slow_count", arguments: { n: 2 }, _meta: { progressToken: 11 } } },
      { "mcp-session-id": session },
    );
    expect(response.headers.get("content-type")).toBe("text/event-stream");
    expect(response.headers.get("cache-control")).toBe("no-cache");
    expect(response.headers.get("x-accel-buffering")).toBe("no");
    expect(response.headers.get("mcp-session-id")).toBe(session);
    const text = await response.text();
    expect(text).toStartWith(": stream open\n\n");
    const events = text.split("\n\n").filter((block) => block.includes("data: "));
    expect(events).toHaveLength(3);
    for (const block of events) expect(block).toMatch(/^id: \d+_\d+\nevent: message\ndata: \{/);
    expect(JSON.parse(events[2]!.split("data: ")[1]!)).toMatchObject({ id: "p", result: { content: [{ text: "counted to 2" }] } });
  });

  test("a client that accepts only SSE gets SSE even for an immediate answer; only JSON gets JSON", async () => {
    const sse = await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": session, accept: "text/event-stream" });
    expect(sse.headers.get("content-type")).toBe("text/event-stream");
    expect(await sse.text()).toContain('"id":5');
    const json = await postMcp(
      t.mcpUrl,
      token,
      { jsonrpc: "2.0", id: 12, method: "tools/call", params: { name: "slow_count", arguments: { n: 2 }, _meta: { progressToken: 12 } } },
      { "mcp-session-id": session, accept: "application/json" },
    );
    expect(json.headers.get("content-type")).toBe("application/json");
    expect(await json.json()).toMatchObject({ id: 12, result: { content: [{ text: "counted to 2" }] } });
  });

  test("a JSON-only client's call whose child asks it something: the child is told at once and the client gets the tool's answer", async () => {
    const initialize = { ...INITIALIZE, params: { ...INITIALIZE.params, capabilities: { elicitation: {} } } };
    const opened = await postMcp(t.mcpUrl, token, initialize);
    await opened.text();
    const asking = opened.headers.get("mcp-session-id")!;
    expect((await postMcp(t.mcpUrl, token, { jsonrpc: "2.0", method: "notifications/initialized" }, { "mcp-session-id": asking })).status).toBe(202);

    const response = await postMcp(
      t.mcpUrl,
      token,
      { jsonrpc: "2.0", id: "ask", method: "tools/call", params: { name: "ask_user", arguments: { question: "Colour?" } } },
      { "mcp-session-id": asking, accept: "application/json" },
    );
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe("application/json");
    const body = await response.json();
    expect(body).toMatchObject({ jsonrpc: "2.0", id: "ask", result: { isError: true } });
    // The stand-in's tool reports the JSON-RPC error its elicitation got from the broker.
    expect(body.result.content[0].text).toContain(
      "MCP error -32003: elicitation/create cannot be delivered: the client has no GET stream open and no request in flight whose stream can carry it",
    );
  });

  test("a notification → 202 with no body", async () => {
    const response = await postMcp(t.mcpUrl, token, { jsonrpc: "2.0", method: "notifications/roots/list_changed" }, { "mcp-session-id": session });
    expect(response.status).toBe(202);
    expect(response.headers.get("mcp-session-id")).toBe(session);
    expect(await response.text()).toBe("");
  });

  test("GET opens the standalone stream at once with heartbeats; a second → 409; Last-Event-ID that was never issued → 400", async () => {
    const controller = new AbortController();
    const get = (headers: Record<string, string> = {}) =>
      fetch(t.mcpUrl, {
        headers: { authorization: `Bearer ${token}`, accept: "text/event-stream", "mcp-session-id": session, ...headers },
        signal: controller.signal,
      });
    const stream = await get();
    expect(stream.status).toBe(200);
    expect(stream.headers.get("content-type")).toBe("text/event-stream");
    const reader = stream.body!.getReader();
    let seen = "";
    while (!seen.includes(": heartbeat")) seen += new TextDecoder().decode((await reader.read()).value);
    expect(seen).toStartWith(": stream open\n\n");

    const second = await get();
    expect(second.status).toBe(409);
    expect(await second.json()).toEqual(rpcError(null, -32000, "this session already has an open standalone SSE stream"));
    const bogus = await get({ "last-event-id": "999999_999999" });
    expect(bogus.status).toBe(400);
    expect(await bogus.json()).toEqual(rpcError(null, -32000, "Last-Event-ID is not an event id of this session"));
    const html = await get({ accept: "text/html" });
    expect(html.status).toBe(406);
    await html.text();
    controller.abort();
  });

  test("a request's stream resumes with Last-Event-ID: only what that stream missed", async () => {
    const response = await postMcp(
      t.mcpUrl,
      token,
      { jsonrpc: "2.0", id: "r", method: "tools/call", params: { name: "slow_count", arguments: { n: 3 }, _meta: { progressToken: "r" } } },
      { "mcp-session-id": session },
    );
    const ids = [...(await response.text()).matchAll(/^id: (\S+)$/gm)].map((match) => match[1]!);
    expect(ids).toHaveLength(4);
    const resumed = await fetch(t.mcpUrl, {
      headers: { authorization: `Bearer ${token}`, accept: "text/event-stream", "mcp-session-id": session, "last-event-id": ids[1]! },
    });
    expect(resumed.status).toBe(200);
    const replayed = [...(await resumed.text()).matchAll(/^id: (\S+)$/gm)].map((match) => match[1]!);
    expect(replayed).toEqual(ids.slice(2));
  });

  test("a client that disconnects from a request's stream cancels the request at the child; the session goes on", async () => {
    const response = await postMcp(
      t.mcpUrl,
      token,
      { jsonrpc: "2.0", id: "gone", method: "tools/call", params: { name: "slow_count", arguments: { n: 1000, delay_ms: 20 }, _meta: { progressToken: "g" } } },
      { "mcp-session-id": session },
    );
    const legacy = t.broker.registry.get(session, (await t.broker.store.findAccessIdentity(hashToken(token), Date.now()))!);
    expect(legacy.inFlight).toBe(1);
    const reader = response.body!.getReader();
    await reader.read();
    await reader.cancel();
    await waitWhile(() => legacy.inFlight > 0, 50, 10);
    expect(legacy.inFlight).toBe(0);
    expect((await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": session })).status).toBe(200);
  });

  test("DELETE → 204 with the session id; afterwards the id answers 404 for every method", async () => {
    const doomed = await openSession(t.mcpUrl, token);
    const headers = { authorization: `Bearer ${token}`, "mcp-session-id": doomed };
    const deleted = await fetch(t.mcpUrl, { method: "DELETE", headers });
    expect(deleted.status).toBe(204);
    expect(deleted.headers.get("mcp-session-id")).toBe(doomed);
    expect((await fetch(t.mcpUrl, { method: "DELETE", headers })).status).toBe(404);
    expect((await fetch(t.mcpUrl, { headers: { ...headers, accept: "text/event-stream" } })).status).toBe(404);
    expect((await postMcp(t.mcpUrl, token, LIST, { "mcp-session-id": doomed })).status).toBe(404);
  });

  test("a child that cannot start gives initialize a JSON-RPC error naming a reference, no session; its last stderr line is only in the log", async () => {
    t.forgejo.revokeUser("alice");
    // The stand-in child fails its /api/v1/version check with a revoked token.
    const response = await postMcp(t.mcpUrl, token, INITIALIZE);
    expect(response.status).toBe(502);
    expect(response.headers.get("mcp-session-id")).toBeNull();
    const body = await response.json();
    expect(body).toMatchObject({ jsonrpc: "2.0", id: 1, error: { code: -32000 } });
    const ref = failureRef(body.error.message, "the MCP server exited before answering initialize");
    expect(ref).not.toBeNull();
    expect(loggedUnder(t.logs, ref!)).toEqual([
      expect.objectContaining({ level: "warn", last_stderr_line: expect.stringMatching(/^cannot use Forgejo at http:\/\/127\.0\.0\.1:\d+: GET \/api\/v1\/version answered 401$/) }),
    ]);
  });
});

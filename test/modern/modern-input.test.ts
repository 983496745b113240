// Every rule a modern (2026-07-28) POST must meet, each with its exact status and JSON-RPC error: the
// version, the required _meta, the headers agreeing with the body, unknown methods, and the guard in front.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, openSession, postMcp } from "../helpers/mcp.ts";
import { MODERN_VERSION, modernRequest, postModern } from "../helpers/modern-client.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";

let t: TestBroker;
let token: string;

beforeAll(async () => {
  t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand(), BROKER_ALLOWED_ORIGINS: "https://inspector.example" } });
  token = (await obtainTokens(t.config.publicUrl)).accessToken;
});
afterAll(async () => {
  await t.stop();
});

const WHOAMI = modernRequest(7, "tools/call", { name: "whoami", arguments: {} });
const base64 = (text: string) => `=?base64?${Buffer.from(text).toString("base64")}?=`;

async function errorOf(response: Response) {
  const body = (await response.json()) as { id: unknown; error: { code: number; data?: unknown } };
  return { status: response.status, id: body.id, code: body.error.code, ...(body.error.data === undefined ? {} : { data: body.error.data }) };
}

describe("refused with 400 -32020 when a header is missing or disagrees with the body", () => {
  const table: [string, Record<string, string | null>][] = [
    ["no MCP-Protocol-Version", { "mcp-protocol-version": null }],
    ["MCP-Protocol-Version naming another version than _meta", { "mcp-protocol-version": "2025-11-25" }],
    ["no Mcp-Method", { "mcp-method": null }],
    ["Mcp-Method naming another method", { "mcp-method": "tools/list" }],
    ["no Mcp-Name on tools/call", { "mcp-name": null }],
    ["Mcp-Name naming another tool", { "mcp-name": "list_my_repos" }],
    ["Mcp-Name in a malformed =?base64?…?= form", { "mcp-name": "=?base64?%%%?=" }],
  ];
  for (const [name, headers] of table) {
    test(name, async () => {
      expect(await errorOf(await postModern(t, token, WHOAMI, headers))).toEqual({ status: 400, id: 7, code: -32020 });
    });
  }

  test("a body claiming a version the broker does not speak, under a header naming another: the mismatch is what is refused", async () => {
    const body = modernRequest(9, "server/discover", {}, { "io.modelcontextprotocol/protocolVersion": "v999.0.0" });
    expect(await errorOf(await postModern(t, token, body, { "mcp-protocol-version": MODERN_VERSION, "mcp-method": "server/discover" }))).toEqual({ status: 400, id: 9, code: -32020 });
  });

  test("Mcp-Name on resources/read must name the uri", async () => {
    const read = modernRequest(8, "resources/read", { uri: "forgejo://x" });
    expect(await errorOf(await postModern(t, token, read, { "mcp-name": "forgejo://y" }))).toEqual({ status: 400, id: 8, code: -32020 });
  });
});

describe("the other refusals", () => {
  test("an unsupported version → 400 -32022 naming the versions the broker supports and the one asked for", async () => {
    const body = modernRequest(1, "tools/list", {}, { "io.modelcontextprotocol/protocolVersion": "2099-01-01" });
    expect(await errorOf(await postModern(t, token, body, { "mcp-protocol-version": "2099-01-01" }))).toEqual({
      status: 400,
      id: 1,
      code: -32022,
      data: { supported: ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"], requested: "2099-01-01" },
    });
  });

  test("no clientCapabilities in _meta → 400 -32602", async () => {
    const body = modernRequest(2, "tools/list", {}, { "io.modelcontextprotocol/clientCapabilities": undefined });
    expect(await errorOf(await postModern(t, token, body))).toEqual({ status: 400, id: 2, code: -32602 });
  });

  test("no claim in the body but a modern header → 400 -32602", async () => {
    const body = { jsonrpc: "2.0", id: 3, method: "tools/list" };
    expect(await errorOf(await postMcp(t.mcpUrl, token, body, { "mcp-protocol-version": MODERN_VERSION, "mcp-method": "tools/list" }))).toEqual({ status: 400, id: 3, code: -32602 });
  });

  for (const method of ["initialize", "ping", "logging/setLevel", "no/such/method"]) {
    test(`${method} is unknown in 2026-07-28 → 404 -32601`, async () => {
      expect(await errorOf(await postModern(t, token, modernRequest(4, method)))).toEqual({ status: 404, id: 4, code: -32601 });
    });
  }

  test("a JSON-RPC response from a modern client → 400", async () => {
    const response = await postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: 5, result: {} }, { "mcp-protocol-version": MODERN_VERSION });
    expect(await errorOf(response)).toEqual({ status: 400, id: null, code: -32600 });
  });

  test("a batch → 400", async () => {
    const response = await postMcp(t.mcpUrl, token, [WHOAMI, { ...WHOAMI, id: 8 }], { "mcp-protocol-version": MODERN_VERSION, "mcp-method": "tools/call" });
    expect(await errorOf(response)).toEqual({ status: 400, id: null, code: -32600 });
  });

  test("without a bearer token → 401 pointing at the resource metadata", async () => {
    const response = await postModern(t, token, WHOAMI, { authorization: null });
    expect(response.status).toBe(401);
    expect(response.headers.get("www-authenticate")).toContain(`resource_metadata="${t.config.publicUrl}/.well-known/oauth-protected-resource/mcp"`);
  });

  test("from a foreign Origin → 403", async () => {
    expect((await postModern(t, token, WHOAMI, { origin: "https://evil.example" })).status).toBe(403);
  });
});

describe("accepted", () => {
  test("headers agreeing with the body, Mcp-Name in base64 form: the call is answered, complete", async () => {
    const response = await postModern(t, token, WHOAMI, { "mcp-name": base64("whoami"), accept: "application/json" });
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ jsonrpc: "2.0", id: 7, result: { content: [{ type: "text", text: "alice" }], resultType: "complete" } });
  });

  test("a client that takes only JSON gets its answer as JSON, without the progress it asked for", async () => {
    const count = modernRequest(10, "tools/call", { name: "slow_count", arguments: { n: 3, delay_ms: 1 } }, { progressToken: "p" });
    const response = await postModern(t, token, count, { accept: "application/json" });
    expect(response.headers.get("content-type")).toBe("application/json");
    expect(await response.json()).toEqual({ jsonrpc: "2.0", id: 10, result: { content: [{ type: "text", text: "counted to 3" }], resultType: "complete" } });
  });

  test("a modern notification → 202 with nothing forwarded", async () => {
    const notification = { jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: 1, _meta: modernRequest(0, "x").params._meta } };
    expect((await postMcp(t.mcpUrl, token, notification, { "mcp-protocol-version": MODERN_VERSION })).status).toBe(202);
  });

  test("a legacy session of the same user keeps working beside it", async () => {
    const session = await openSession(t.mcpUrl, token);
    const response = await postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: 9, method: "tools/list" }, { "mcp-session-id": session, accept: "application/json" });
    expect(response.status).toBe(200);
    expect(((await response.json()) as { result: { resultType?: unknown } }).result.resultType).toBeUndefined();
  });
});

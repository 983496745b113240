// Every rule a modern (2026-07-28) POST must meet, one table row each, through the broker's own app in
// process (app.handle): the exact status and JSON-RPC error, and that no refused request starts a child.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, INITIALIZE, mcpPost } from "../helpers/mcp.ts";
import { MODERN_VERSION, modernPost, modernRequest } from "../helpers/modern-client.ts";
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

const base64 = (text: string) => `=?base64?${Buffer.from(text).toString("base64")}?=`;
const handle = (request: Request) => t.broker.app.handle(request);

async function errorOf(response: Response) {
  const body = (await response.json()) as { id: unknown; error: { code: number; data?: unknown } };
  return { status: response.status, id: body.id, code: body.error.code, ...(body.error.data === undefined ? {} : { data: body.error.data }) };
}

type Body = ReturnType<typeof modernRequest>;
/** [rule, body, headers over the matching ones (null drops one), the answer]. */
type Row = [string, Body, Record<string, string | null>, { status: number; id: unknown; code: number; data?: unknown }];

const CALL = modernRequest(7, "tools/call", { name: "whoami", arguments: {} });
const READ = modernRequest(8, "resources/read", { uri: "forgejo://repos/alice/notes" });
const PROMPT = modernRequest(9, "prompts/get", { name: "summarize", arguments: {} });
const LIST = modernRequest(10, "tools/list");

const MISMATCH = -32020;
const rows: Row[] = [
  // MCP-Protocol-Version against _meta's version
  ["no MCP-Protocol-Version", LIST, { "mcp-protocol-version": null }, { status: 400, id: 10, code: MISMATCH }],
  ["MCP-Protocol-Version naming another version than _meta", LIST, { "mcp-protocol-version": "2025-11-25" }, { status: 400, id: 10, code: MISMATCH }],
  [
    "_meta claiming a version the broker does not speak, under a header naming another: the mismatch is refused",
    modernRequest(11, "server/discover", {}, { "io.modelcontextprotocol/protocolVersion": "v999.0.0" }),
    { "mcp-protocol-version": MODERN_VERSION },
    { status: 400, id: 11, code: MISMATCH },
  ],
  // Mcp-Method against the body's method
  ["no Mcp-Method", LIST, { "mcp-method": null }, { status: 400, id: 10, code: MISMATCH }],
  ["Mcp-Method naming another method", LIST, { "mcp-method": "prompts/list" }, { status: 400, id: 10, code: MISMATCH }],
  ["Mcp-Method naming the method in another case", LIST, { "mcp-method": "Tools/List" }, { status: 400, id: 10, code: MISMATCH }],
  ["Mcp-Method in =?base64?…?= form naming another method", LIST, { "mcp-method": base64("prompts/list") }, { status: 400, id: 10, code: MISMATCH }],
  // Mcp-Name against params.name or params.uri
  ["no Mcp-Name on tools/call", CALL, { "mcp-name": null }, { status: 400, id: 7, code: MISMATCH }],
  ["Mcp-Name naming another tool", CALL, { "mcp-name": "list_my_repos" }, { status: 400, id: 7, code: MISMATCH }],
  ["Mcp-Name in =?base64?…?= form naming another tool", CALL, { "mcp-name": base64("list_my_repos") }, { status: 400, id: 7, code: MISMATCH }],
  ["Mcp-Name in a malformed =?base64?…?= form", CALL, { "mcp-name": "=?base64?%%%?=" }, { status: 400, id: 7, code: MISMATCH }],
  ["Mcp-Name in =?base64?…?= form that is not UTF-8", CALL, { "mcp-name": "=?base64?/w==?=" }, { status: 400, id: 7, code: MISMATCH }],
  ["no Mcp-Name on resources/read", READ, { "mcp-name": null }, { status: 400, id: 8, code: MISMATCH }],
  ["Mcp-Name on resources/read naming another uri", READ, { "mcp-name": "forgejo://repos/alice/other" }, { status: 400, id: 8, code: MISMATCH }],
  ["Mcp-Name on resources/read naming the resource's name rather than its uri", READ, { "mcp-name": "notes" }, { status: 400, id: 8, code: MISMATCH }],
  ["Mcp-Name on resources/read in =?base64?…?= form naming another uri", READ, { "mcp-name": base64("forgejo://repos/alice/other") }, { status: 400, id: 8, code: MISMATCH }],
  ["no Mcp-Name on prompts/get", PROMPT, { "mcp-name": null }, { status: 400, id: 9, code: MISMATCH }],
  ["Mcp-Name on prompts/get naming another prompt", PROMPT, { "mcp-name": "review" }, { status: 400, id: 9, code: MISMATCH }],
  ["Mcp-Name on prompts/get in =?base64?…?= form naming another prompt", PROMPT, { "mcp-name": base64("review") }, { status: 400, id: 9, code: MISMATCH }],
  // The version, the envelope and the method
  [
    "an unsupported version → -32022 naming the versions the broker supports and the one asked for",
    modernRequest(1, "tools/list", {}, { "io.modelcontextprotocol/protocolVersion": "2099-01-01" }),
    { "mcp-protocol-version": "2099-01-01" },
    { status: 400, id: 1, code: -32022, data: { supported: ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"], requested: "2099-01-01" } },
  ],
  ["no clientCapabilities in _meta → -32602", modernRequest(2, "tools/list", {}, { "io.modelcontextprotocol/clientCapabilities": undefined }), {}, { status: 400, id: 2, code: -32602 }],
  ["clientCapabilities that is not an object → -32602", modernRequest(2, "tools/list", {}, { "io.modelcontextprotocol/clientCapabilities": [] }), {}, { status: 400, id: 2, code: -32602 }],
  ...["initialize", "ping", "logging/setLevel", "no/such/method"].map((method): Row => [`${method} is unknown in 2026-07-28 → 404 -32601`, modernRequest(4, method), {}, { status: 404, id: 4, code: -32601 }]),
  // Past the header rules only when the =?base64?…?= value is decoded (the method check comes after them).
  ["Mcp-Method in =?base64?…?= form naming the method is decoded and agrees", modernRequest(4, "no/such/method"), { "mcp-method": base64("no/such/method") }, { status: 404, id: 4, code: -32601 }],
];

describe("a modern request breaking one rule is refused with its status and JSON-RPC error", () => {
  for (const [rule, body, headers, expected] of rows) {
    test(rule, async () => {
      expect(await errorOf(await handle(modernPost(t, token, body, headers)))).toEqual(expected);
    });
  }

  test("no claim in the body but modern headers → 400 -32602", async () => {
    const body = { jsonrpc: "2.0", id: 3, method: "tools/list" };
    expect(await errorOf(await handle(mcpPost(t.mcpUrl, token, body, { "mcp-protocol-version": MODERN_VERSION, "mcp-method": "tools/list" })))).toEqual({ status: 400, id: 3, code: -32602 });
  });

  test("a JSON-RPC response from a modern client → 400", async () => {
    expect(await errorOf(await handle(mcpPost(t.mcpUrl, token, { jsonrpc: "2.0", id: 5, result: {} }, { "mcp-protocol-version": MODERN_VERSION })))).toEqual({ status: 400, id: null, code: -32600 });
  });

  test("a batch of modern requests → 400", async () => {
    const batch = [CALL, { ...CALL, id: 8 }];
    expect(await errorOf(await handle(mcpPost(t.mcpUrl, token, batch, { "mcp-protocol-version": MODERN_VERSION, "mcp-method": "tools/call", "mcp-name": "whoami" })))).toEqual({ status: 400, id: null, code: -32600 });
  });
});

describe("Origin and the bearer guard answer a modern request exactly as a legacy one", () => {
  const resourceMetadata = () => `resource_metadata="${t.config.publicUrl}/.well-known/oauth-protected-resource/mcp"`;
  /** [case, headers over the usual ones, status, what WWW-Authenticate must contain (none: no such header)]. */
  const guards: [string, Record<string, string | null>, number, () => string[]][] = [
    ["no Authorization", { authorization: null }, 401, () => [resourceMetadata()]],
    ["a token the broker never issued", { authorization: "Bearer fmb_at_unknown" }, 401, () => ['error="invalid_token"', resourceMetadata()]],
    ["a malformed Authorization", { authorization: "Bearer a b" }, 400, () => ['error="invalid_request"']],
    ["a foreign Origin", { origin: "https://evil.example" }, 403, () => []],
  ];
  for (const [name, headers, status, challenge] of guards) {
    test(`${name} → ${status}, as for legacy`, async () => {
      const modern = await handle(modernPost(t, token, CALL, headers));
      const legacy = await handle(mcpPost(t.mcpUrl, token, INITIALIZE, headers));
      const expected = challenge();
      if (expected.length === 0) expect(modern.headers.get("www-authenticate")).toBeNull();
      for (const part of expected) expect(modern.headers.get("www-authenticate")).toContain(part);
      expect({ status: modern.status, challenge: modern.headers.get("www-authenticate"), body: await modern.text() }).toEqual({
        status,
        challenge: legacy.headers.get("www-authenticate"),
        body: await legacy.text(),
      });
    });
  }

  test("an allowed Origin passes", async () => {
    expect(await errorOf(await handle(modernPost(t, token, LIST, { origin: "https://inspector.example", "mcp-method": null })))).toEqual({ status: 400, id: 10, code: MISMATCH });
  });
});

test("a modern notification → 202 with nothing forwarded", async () => {
  const notification = { jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: 1, _meta: modernRequest(0, "x").params._meta } };
  expect((await handle(mcpPost(t.mcpUrl, token, notification, { "mcp-protocol-version": MODERN_VERSION }))).status).toBe(202);
});

test("no refused request (nor the notification) started a child", () => {
  expect(t.broker.principals.size).toBe(0);
  expect(t.broker.registry.size).toBe(0);
});

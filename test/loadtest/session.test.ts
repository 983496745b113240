// The request shapes the load generator sends in each era: a legacy body as it always was, and a modern
// body with its _meta envelope and headers, checked against the broker's own modern request rules.

import { expect, test } from "bun:test";
import { requestShape, type Era } from "../../src/loadtest/session.ts";
import { checkModernRequest } from "../../src/modern/request-rules.ts";

const ENVELOPE = {
  "io.modelcontextprotocol/protocolVersion": "2026-07-28",
  "io.modelcontextprotocol/clientCapabilities": {},
  "io.modelcontextprotocol/clientInfo": { name: "forgejo-mcp-broker-loadtest", version: "0.1.0" },
};

test.each<[Era, string, Record<string, unknown>, Record<string, unknown>, Record<string, string>]>([
  ["legacy", "tools/call", { name: "echo", arguments: { text: "hi" } }, { name: "echo", arguments: { text: "hi" } }, {}],
  ["legacy", "initialize", { protocolVersion: "2025-11-25" }, { protocolVersion: "2025-11-25" }, {}],
  [
    "modern",
    "tools/call",
    { name: "echo", arguments: { text: "hi" } },
    { name: "echo", arguments: { text: "hi" }, _meta: ENVELOPE },
    { "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo" },
  ],
  [
    "modern",
    "tools/call",
    { name: "café", arguments: {} },
    { name: "café", arguments: {}, _meta: ENVELOPE },
    { "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "=?base64?Y2Fmw6k=?=" },
  ],
  [
    "modern",
    "tools/call",
    { name: " padded ", arguments: {} },
    { name: " padded ", arguments: {}, _meta: ENVELOPE },
    { "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "=?base64?IHBhZGRlZCA=?=" },
  ],
  [
    "modern",
    "resources/read",
    { uri: "forgejo://repos/alice" },
    { uri: "forgejo://repos/alice", _meta: ENVELOPE },
    { "mcp-protocol-version": "2026-07-28", "mcp-method": "resources/read", "mcp-name": "forgejo://repos/alice" },
  ],
  ["modern", "server/discover", {}, { _meta: ENVELOPE }, { "mcp-protocol-version": "2026-07-28", "mcp-method": "server/discover" }],
])("%s %s %j: body params %j, headers %j", (era, method, params, bodyParams, headers) => {
  const shape = requestShape(era, method, params);
  const body = JSON.parse(shape.prefix + 7 + shape.suffix);

  expect(body).toEqual({ jsonrpc: "2.0", id: 7, method, params: bodyParams });
  expect(shape.headers).toEqual(headers);
  // What the broker itself requires of a modern request: the envelope and headers agree with the body.
  if (era === "modern") expect(() => checkModernRequest(body, "2026-07-28", new Headers(shape.headers))).not.toThrow();
});

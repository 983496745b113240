// Which era a POST belongs to, from its body, as the SDK's classifier decides it: a table of bodies and
// MCP-Protocol-Version headers with the era or the refusal each gets.
import { describe, expect, test } from "bun:test";
import { classify, type JsonRpcMessage } from "../../src/bridge/jsonrpc.ts";
import { classifyPost } from "../../src/modern/classify.ts";
import { decodeHeaderValue } from "../../src/modern/request-rules.ts";
import { McpRefusal } from "../../src/session/errors.ts";

const claim = (version: unknown) => ({ _meta: { "io.modelcontextprotocol/protocolVersion": version } });

const cases: [string, JsonRpcMessage, string | null, unknown][] = [
  ["initialize without a claim", { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-11-25" } }, null, { era: "legacy" }],
  ["a request without a claim", { jsonrpc: "2.0", id: 1, method: "tools/list" }, "2025-11-25", { era: "legacy" }],
  ["a notification without a claim", { jsonrpc: "2.0", method: "notifications/initialized" }, null, { era: "legacy" }],
  ["a response without a modern header", { jsonrpc: "2.0", id: 1, result: {} }, "2025-11-25", { era: "legacy" }],
  ["a request claiming 2026-07-28", { jsonrpc: "2.0", id: 1, method: "tools/list", params: claim("2026-07-28") }, "2026-07-28", { era: "modern", version: "2026-07-28" }],
  ["initialize claiming 2026-07-28", { jsonrpc: "2.0", id: 1, method: "initialize", params: claim("2026-07-28") }, null, { era: "modern", version: "2026-07-28" }],
  ["a claim of an unknown version (refused later, as unsupported)", { jsonrpc: "2.0", id: 1, method: "tools/list", params: claim("2099-01-01") }, null, { era: "modern", version: "2099-01-01" }],
  ["the body wins over a legacy header", { jsonrpc: "2.0", id: 1, method: "tools/list", params: claim("2026-07-28") }, "2025-11-25", { era: "modern", version: "2026-07-28" }],
  ["a claim that is not a string", { jsonrpc: "2.0", id: 1, method: "tools/list", params: claim(20260728) }, null, [400, -32602]],
  ["no claim but a modern header", { jsonrpc: "2.0", id: 1, method: "tools/list" }, "2026-07-28", [400, -32602]],
  ["a response with a modern header", { jsonrpc: "2.0", id: 1, result: {} }, "2026-07-28", [400, -32600]],
];

describe("classifyPost", () => {
  for (const [name, message, header, expected] of cases) {
    test(name, () => {
      const kind = classify(message)!;
      let outcome: unknown;
      try {
        outcome = classifyPost(message, kind, header);
      } catch (error) {
        outcome = error instanceof McpRefusal ? [error.status, error.code] : error;
      }
      expect(outcome).toEqual(expected);
    });
  }
});

describe("decodeHeaderValue", () => {
  const table: [string, string | null][] = [
    ["whoami", "whoami"],
    [`=?base64?${Buffer.from("héllo wörld").toString("base64")}?=`, "héllo wörld"],
    ["=?base64?not base64!?=", null],
    [`=?base64?${Buffer.from([0xff, 0xfe]).toString("base64")}?=`, null],
  ];
  for (const [value, decoded] of table) test(JSON.stringify(value), () => expect(decodeHeaderValue(value)).toBe(decoded));
});

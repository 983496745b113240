// What a modern caller gets from a legacy child's answer: a table of answers by method.
import { describe, expect, test } from "bun:test";
import { modernAnswer } from "../../src/modern/results.ts";

describe("modernAnswer", () => {
  const table: [string, string, unknown, unknown][] = [
    ["a call result is complete", "tools/call", { result: { content: [] } }, { result: { content: [], resultType: "complete" } }],
    ["a list carries the cache hints, private", "tools/list", { result: { tools: [] } }, { result: { tools: [], resultType: "complete", ttlMs: 0, cacheScope: "private" } }],
    ["resources/read too", "resources/read", { result: { contents: [] } }, { result: { contents: [], resultType: "complete", ttlMs: 0, cacheScope: "private" } }],
    ["the legacy -32002 becomes -32602", "resources/read", { error: { code: -32002, message: "no such resource", data: { uri: "x" } } }, { error: { code: -32602, message: "no such resource", data: { uri: "x" } } }],
    ["other errors pass as they are", "tools/call", { error: { code: -32603, message: "boom" } }, { error: { code: -32603, message: "boom" } }],
  ];
  for (const [name, method, answer, expected] of table) {
    test(name, () => expect(JSON.parse(modernAnswer(method, { jsonrpc: "2.0", id: 1, ...(answer as object) }))).toEqual({ jsonrpc: "2.0", id: 1, ...(expected as object) }));
  }
});

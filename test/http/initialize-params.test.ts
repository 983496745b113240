// What an initialize request must carry before the broker starts a child for it (MCP 2025-11-25).
import { describe, expect, test } from "bun:test";
import { initializeParamsProblem } from "../../src/http/initialize-params.ts";

const good = { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "c", version: "1" } };

describe("initializeParamsProblem", () => {
  const cases: [string, unknown, string | null][] = [
    ["the spec's minimal params", good, null],
    ["extra fields and an unknown version (the child negotiates the version)", { ...good, protocolVersion: "2099-01-01", _meta: {}, x: 1 }, null],
    ["missing params", undefined, "params must be an object"],
    ["params that are a string", "2025-11-25", "params must be an object"],
    ["params that are an array", [good], "params must be an object"],
    ["params that are null", null, "params must be an object"],
    ["no protocolVersion", { capabilities: {}, clientInfo: good.clientInfo }, "params.protocolVersion must be a non-empty string"],
    ["a numeric protocolVersion", { ...good, protocolVersion: 20251125 }, "params.protocolVersion must be a non-empty string"],
    ["an empty protocolVersion", { ...good, protocolVersion: " " }, "params.protocolVersion must be a non-empty string"],
    ["no capabilities", { protocolVersion: "2025-11-25", clientInfo: good.clientInfo }, "params.capabilities must be an object"],
    ["capabilities that are an array", { ...good, capabilities: [] }, "params.capabilities must be an object"],
    ["no clientInfo", { protocolVersion: "2025-11-25", capabilities: {} }, "params.clientInfo must be an object"],
    ["clientInfo that is a string", { ...good, clientInfo: "c/1" }, "params.clientInfo must be an object"],
    ["clientInfo without a name", { ...good, clientInfo: { version: "1" } }, "params.clientInfo.name must be a string"],
    ["clientInfo with a numeric version", { ...good, clientInfo: { name: "c", version: 1 } }, "params.clientInfo.version must be a string"],
  ];
  for (const [name, params, problem] of cases) {
    test(`${name} → ${problem ?? "accepted"}`, () => {
      expect(initializeParamsProblem(params)).toBe(problem);
    });
  }
});

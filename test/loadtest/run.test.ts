// runLoad and runChurn against a real Streamable HTTP MCP server (the official SDK), in both
// reply modes: what the server saw must match what the generator reports.

import { afterEach, describe, expect, test } from "bun:test";
import { runChurn, runLoad, type RunDeps } from "../../src/loadtest/run.ts";
import { startMcpServer, type TestServer } from "./mcp-server.ts";

const deps: RunDeps = { fetch, now: () => performance.now() };
let server: TestServer | undefined;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

for (const json of [true, false]) {
  describe(json ? "JSON replies" : "SSE replies", () => {
    test("3 sessions × 5 calls: 15 successful calls in 3 sessions, all closed afterwards", async () => {
      server = startMcpServer({ json });
      const result = await runLoad({ url: server.url, sessions: 3, calls: 5 }, deps);

      expect(result.stop).toEqual({ reason: "completed" });
      expect(result.protocolVersion).toBe("2025-11-25");
      expect(result.sessions).toMatchObject({ requested: 3, opened: 3, failed: 0 });
      expect(result.sessions.setupMs.count).toBe(3);
      expect(result.calls).toMatchObject({ requested: 15, ok: 15, failed: 0 });
      expect(result.calls.latencyMs.count).toBe(15);
      expect(result.calls.latencyMs.p50).toBeGreaterThan(0);
      expect(result.calls.perSecond).toBeGreaterThan(0);
      expect(result.errors).toEqual([]);
      expect(server.counts).toMatchObject({ initialize: 3, toolCalls: 15 });
      expect(server.openSessions()).toBe(0);
    });

    test("churn 4: four initialize → call → DELETE cycles, four DELETEs on the server", async () => {
      server = startMcpServer({ json });
      const result = await runChurn({ url: server.url, cycles: 4 }, deps);

      expect(result.stop).toEqual({ reason: "completed" });
      expect(result.cycles).toMatchObject({ requested: 4, ok: 4, failed: 0, deletes: 4 });
      expect(result.cycles.perSecond).toBeGreaterThan(0);
      expect(server.counts).toMatchObject({ initialize: 4, toolCalls: 4, deletes: 4, sessionsClosed: 4 });
    });

    test("a tool result with isError counts as a tool error, not a success", async () => {
      server = startMcpServer({ json });
      const result = await runLoad({ url: server.url, sessions: 2, calls: 3, tool: "fail", args: {} }, deps);

      expect(result.calls).toMatchObject({ ok: 0, failed: 6 });
      expect(result.errors).toEqual([
        { kind: "tool", detail: "isError", count: 6, example: expect.stringContaining("this tool always fails") },
      ]);
    });
  });
}

test("a JSON-RPC error is counted by its code", async () => {
  server = startMcpServer({ json: true });
  const result = await runLoad({ url: server.url, sessions: 1, calls: 2, tool: "rpc-error" }, deps);

  expect(result.calls).toMatchObject({ ok: 0, failed: 2 });
  expect(result.errors).toEqual([{ kind: "jsonrpc", detail: "-32603", count: 2, example: "deliberate" }]);
});

test("a stateless server (no Mcp-Session-Id) works; churn then has nothing to DELETE", async () => {
  server = startMcpServer({ json: true, stateless: true });
  const load = await runLoad({ url: server.url, sessions: 2, calls: 3 }, deps);
  const churn = await runChurn({ url: server.url, cycles: 2 }, deps);

  expect(load.calls.ok).toBe(6);
  expect(churn.cycles).toMatchObject({ ok: 2, deletes: 0 });
  expect(server.counts.deletes).toBe(0);
});

test("a request with no reply within the timeout counts as a timeout", async () => {
  server = startMcpServer({ json: false });
  const result = await runLoad({ url: server.url, sessions: 1, calls: 2, tool: "hang", args: {}, timeoutMs: 20 }, deps);

  expect(result.calls).toMatchObject({ ok: 0, failed: 2 });
  expect(result.errors).toEqual([{ kind: "timeout", detail: "timeout", count: 2, example: expect.any(String) }]);
});

test("aborting the signal stops the run and keeps what was measured so far", async () => {
  server = startMcpServer({ json: true });
  const controller = new AbortController();
  let calls = 0;
  // Abort from inside the 4th tools/call, as Ctrl-C would arrive mid-request.
  const counting: typeof fetch = Object.assign(
    async (input: RequestInfo | URL, init?: RequestInit) => {
      if (String(init?.body).includes("tools/call") && ++calls === 4) controller.abort();
      return fetch(input, init);
    },
    { preconnect: fetch.preconnect },
  );
  const result = await runLoad(
    { url: server.url, sessions: 1, calls: 100, signal: controller.signal },
    { ...deps, fetch: counting },
  );

  expect(result.stop).toEqual({ reason: "interrupted" });
  expect(result.calls.ok).toBe(3);
  expect(result.calls.latencyMs.count).toBe(3);
  expect(result.errors).toEqual([]);
  expect(server.openSessions()).toBe(0);
});

test("a refused token stops the run as unauthorized, with the server's challenge", async () => {
  server = startMcpServer({ json: true, token: "right" });
  const result = await runLoad({ url: server.url, token: "wrong", sessions: 3, calls: 5 }, deps);

  expect(result.stop).toMatchObject({
    reason: "unauthorized",
    url: server.url,
    wwwAuthenticate: expect.stringContaining("resource_metadata="),
  });
  expect(result.sessions.opened).toBe(0);
});

test("the right token is sent as a bearer token", async () => {
  server = startMcpServer({ json: true, token: "right" });
  const result = await runLoad({ url: server.url, token: "right", sessions: 1, calls: 2 }, deps);

  expect(result.calls.ok).toBe(2);
});

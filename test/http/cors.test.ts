// Browser-based MCP clients (the Inspector runs in a browser tab) call discovery and the OAuth
// JSON endpoints cross-origin; the consent pages and /mcp are not opened to arbitrary origins.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { CORS_ALLOWED_HEADERS, CORS_EXPOSED_HEADERS, corsAnswer } from "../../src/http/cors.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, openSession, postMcp } from "../helpers/mcp.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";

const INSPECTOR = "http://localhost:6274";

describe("corsAnswer", () => {
  const mcpOrigins = new Set([INSPECTOR]);
  const preflightOf = (path: string, origin: string) => corsAnswer({ method: "OPTIONS", path, origin, requestMethod: "POST" }, mcpOrigins);
  const requestOf = (method: string, path: string, origin: string) => corsAnswer({ method, path, origin, requestMethod: null }, mcpOrigins);

  const admitted: [string, string, string][] = [
    ["/.well-known/oauth-authorization-server", "https://anywhere.example", "GET"],
    ["/.well-known/oauth-protected-resource/mcp", "https://anywhere.example", "GET"],
    ["/oauth/register", "https://anywhere.example", "POST"],
    ["/oauth/token", "null", "POST"],
    ["/oauth/revoke", INSPECTOR, "POST"],
    ["/mcp", INSPECTOR, "GET, POST, DELETE"],
  ];
  test.each(admitted)("a preflight for %p from %p is admitted for %p", (path, origin, methods) => {
    expect(preflightOf(path, origin)).toEqual({
      preflight: true,
      headers: {
        "Access-Control-Allow-Origin": origin,
        Vary: "Origin",
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": CORS_ALLOWED_HEADERS,
        "Access-Control-Max-Age": "600",
      },
    });
  });

  test.each(admitted)("a request to %p from %p may read the answer and its exposed headers", (path, origin) => {
    expect(requestOf("POST", path, origin)).toEqual({
      preflight: false,
      headers: { "Access-Control-Allow-Origin": origin, Vary: "Origin", "Access-Control-Expose-Headers": CORS_EXPOSED_HEADERS },
    });
  });

  const refused: [string, string, Record<string, string>][] = [
    ["/mcp", "https://evil.example", { Vary: "Origin" }],
    ["/mcp", "http://localhost:6275", { Vary: "Origin" }],
    ["/oauth/authorize", INSPECTOR, {}],
    ["/oauth/callback", "https://evil.example", {}],
    ["/healthz", INSPECTOR, {}],
    ["/mcp/", INSPECTOR, {}],
  ];
  test.each(refused)("%p from %p gets no Access-Control-Allow-Origin", (path, origin, headers) => {
    expect(preflightOf(path, origin)).toEqual({ preflight: true, headers });
    expect(requestOf("GET", path, origin)).toEqual({ preflight: false, headers });
  });

  test("an OPTIONS without Access-Control-Request-Method is not a preflight", () => {
    expect(requestOf("OPTIONS", "/mcp", INSPECTOR).preflight).toBe(false);
  });
});

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker({ env: { BROKER_ALLOWED_ORIGINS: INSPECTOR, BROKER_CHILD_COMMAND: childCommand() } });
});
afterAll(async () => {
  await t.stop();
});

const preflight = (path: string, origin: string) =>
  fetch(`${t.config.publicUrl}${path}`, {
    method: "OPTIONS",
    headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type, authorization" },
  });

test("discovery, registration, token and revocation answer any origin, errors included", async () => {
  for (const path of ["/oauth/register", "/oauth/token", "/oauth/revoke", "/.well-known/oauth-authorization-server"]) {
    const response = await preflight(path, "http://localhost:6274");
    expect(response.status).toBeLessThan(300);
    expect(response.headers.get("access-control-allow-origin")).toBe("http://localhost:6274");
    expect(response.headers.get("access-control-allow-headers")).toContain("authorization");
  }
  const error = await fetch(`${t.config.publicUrl}/oauth/token`, {
    method: "POST",
    headers: { origin: "http://localhost:6274", "content-type": "application/x-www-form-urlencoded" },
    body: "grant_type=refresh_token&client_id=nope",
  });
  expect(error.status).toBe(401);
  expect(error.headers.get("access-control-allow-origin")).toBe("http://localhost:6274");
});

test("/mcp is open to configured origins only, and exposes the session and challenge headers", async () => {
  const allowed = await preflight("/mcp", "http://localhost:6274");
  expect(allowed.headers.get("access-control-allow-origin")).toBe("http://localhost:6274");
  const unauthenticated = await fetch(t.mcpUrl, { method: "POST", headers: { origin: "http://localhost:6274", "content-type": "application/json" }, body: "{}" });
  expect(unauthenticated.status).toBe(401);
  expect(unauthenticated.headers.get("access-control-allow-origin")).toBe("http://localhost:6274");
  expect(unauthenticated.headers.get("access-control-expose-headers")?.toLowerCase()).toContain("mcp-session-id");
  expect(unauthenticated.headers.get("access-control-expose-headers")?.toLowerCase()).toContain("www-authenticate");
  const foreign = await preflight("/mcp", "https://evil.example");
  expect(foreign.headers.get("access-control-allow-origin")).toBeNull();
});

test("an MCP request without Origin (not a browser) gets no CORS headers, and its JSON answer keeps its Content-Length", async () => {
  const { accessToken } = await obtainTokens(t.config.publicUrl);
  const sessionId = await openSession(t.mcpUrl, accessToken);
  const answer = await postMcp(t.mcpUrl, accessToken, { jsonrpc: "2.0", id: 2, method: "tools/list" }, { "mcp-session-id": sessionId, accept: "application/json" });
  expect(answer.status).toBe(200);
  const body = await answer.text();
  expect(JSON.parse(body).id).toBe(2);
  expect(answer.headers.get("content-length")).toBe(String(Buffer.byteLength(body)));
  expect([...answer.headers.keys()].filter((name) => name.startsWith("access-control-") || name === "vary")).toEqual([]);
});

test("the consent page is not readable cross-origin", async () => {
  const response = await preflight("/oauth/authorize", "https://evil.example");
  expect(response.headers.get("access-control-allow-origin")).toBeNull();
});

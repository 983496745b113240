// Browser-based MCP clients (the Inspector runs in a browser tab) call discovery and the OAuth
// JSON endpoints cross-origin; the consent pages and /mcp are not opened to arbitrary origins.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker({ env: { BROKER_ALLOWED_ORIGINS: "http://localhost:6274" } });
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

test("the consent page is not readable cross-origin", async () => {
  const response = await preflight("/oauth/authorize", "https://evil.example");
  expect(response.headers.get("access-control-allow-origin")).toBeNull();
});

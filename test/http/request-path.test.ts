import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Elysia } from "elysia";
import { ROUTER_CONFIG, hasQueryParam, isRoutable, requestPath, routerPath } from "../../src/http/request-path.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { rawRequest } from "../helpers/raw-http.ts";

describe("requestPath", () => {
  test.each([
    ["http://127.0.0.1:8080/mcp", "/mcp"],
    ["http://127.0.0.1:8080/mcp?access_token=x", "/mcp"],
    ["http://host/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource/mcp"],
    ["http://host/oauth/token#frag", "/oauth/token"],
    ["http://host/a?b=/c#d", "/a"],
    ["http://host/a#b?c", "/a"],
    ["http://host", "/"],
    ["http://host/", "/"],
    ["https://[::1]:443/mcp/", "/mcp/"],
  ])("%s → %s, as URL reads it", (url, path) => {
    expect(requestPath(url)).toBe(path);
    expect(requestPath(url)).toBe(new URL(url).pathname);
  });
});

describe("hasQueryParam", () => {
  test.each([
    ["http://host/mcp", false],
    ["http://host/mcp?", false],
    ["http://host/mcp?access_token=x", true],
    ["http://host/mcp?a=1&access_token=", true],
    ["http://host/mcp?access_tokenx=1", false],
    ["http://host/mcp?x=access_token", false],
    ["http://host/mcp?access%5Ftoken=1", true],
  ])("%s → %p", (url, present) => {
    expect(hasQueryParam(url, "access_token")).toBe(present);
  });
});

describe("the router reads the path the way every other rule does", () => {
  const routed = new Elysia(ROUTER_CONFIG).get("/mcp", () => "mcp").get("/.well-known/mcp", () => "well-known");

  test.each([
    "http://x/.well-known/mcp",
    "http://abc/.well-known/mcp",
    "http://x:1/.well-known/mcp?next=/mcp",
    "http://[::1]/.well-known/mcp",
    "http://broker.example:8080/.well-known/mcp",
  ])("%s is routed by its own path", async (url) => {
    expect(routerPath(url)).toBe(requestPath(url));
    expect(isRoutable(url)).toBe(true);
    expect(await (await routed.handle(new Request(url))).text()).toBe("well-known");
  });

  test.each([
    // Bun's URL when the Host header is empty or not a host: no scheme, no host.
    "/.well-known/mcp",
    "/mcp",
    "https://broker.example/mcp",
  ])("%s is not routable: the router would read another path, or none", (url) => {
    expect(isRoutable(url)).toBe(false);
  });
});

describe("a short or missing Host header over a real socket", () => {
  let t: TestBroker;
  let port: number;
  beforeAll(async () => {
    t = await startTestBroker();
    port = t.broker.server.port!;
  });
  afterAll(() => t.stop());

  const get = (path: string, host: string, extra = "") => rawRequest(port, `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${extra}Connection: close\r\n\r\n`);

  test("Host: x reaches the discovery document it asked for", async () => {
    const response = await get("/.well-known/oauth-protected-resource/mcp", "x");
    expect(response.status).toBe(200);
    expect(JSON.parse(response.body).resource).toBe(t.mcpUrl);
  });

  test("Host: x on /.well-known/mcp is not the /mcp endpoint, and the log names the path that was routed", async () => {
    const response = await get("/.well-known/mcp", "x", "Origin: https://evil.example\r\n");
    expect(response.status).toBe(404);
    expect(response.headers["www-authenticate"]).toBeUndefined();
    const logged = t.logs.map((l) => JSON.parse(l)).filter((l) => l.msg === "request").map((l) => l.path);
    expect(logged).toContain("/.well-known/mcp");
    expect(logged).not.toContain("/mcp");
  });

  test("an empty Host header is refused before any rule reads the path", async () => {
    const response = await get("/.well-known/mcp", "");
    expect(response.status).toBe(400);
    expect(JSON.parse(response.body).error).toBe("invalid_request");
    const logged = t.logs.map((l) => JSON.parse(l)).filter((l) => l.msg === "request" && l.status === 400);
    expect(logged.map((l) => l.path)).toEqual(["/.well-known/mcp"]);
  });
});

import { describe, expect, test } from "bun:test";
import { hasQueryParam, requestPath } from "../../src/http/request-path.ts";

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

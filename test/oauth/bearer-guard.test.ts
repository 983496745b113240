// The bearer guard decides with RFC 6750's grammar alone: every malformed Authorization header is a
// 400 invalid_request answered before any token lookup, and only a well-formed one is looked up.
import { describe, expect, test } from "bun:test";
import { Elysia } from "elysia";
import { loadConfig } from "../../src/config.ts";
import { hashToken } from "../../src/crypto.ts";
import { OAuthError } from "../../src/oauth/errors.ts";
import { bearerGuard } from "../../src/oauth/middleware/bearer-auth.ts";
import type { TokenIdentity } from "../../src/store/store.ts";

const config = (() => {
  const result = loadConfig({ BROKER_PUBLIC_URL: "http://broker.test", FORGEJO_URL: "http://forgejo.test", FORGEJO_CLIENT_ID: "id", FORGEJO_CLIENT_SECRET: "secret" });
  if (!result.ok) throw new Error(result.problems.join("\n"));
  return result.config;
})();

const LIVE_TOKEN = "fmb_at_live";

/** A guarded route over a store that knows one live token and counts every lookup. */
function guardedApp() {
  const identity: TokenIdentity = {
    tokenHash: hashToken(LIVE_TOKEN),
    grantId: "g1",
    clientId: "c1",
    forgejoUserId: 1,
    forgejoLogin: "alice",
    scopes: ["mcp"],
    resource: config.resourceUrl,
    expiresAt: Number.MAX_SAFE_INTEGER,
  };
  const store = {
    lookups: 0,
    revocationCount: 0,
    async findAccessIdentity(hash: string) {
      store.lookups++;
      return hash === hashToken(LIVE_TOKEN) ? identity : undefined;
    },
  };
  const app = new Elysia()
    .onError(({ error }) => (error instanceof OAuthError ? error.toResponse() : undefined))
    .use(bearerGuard({ config, store, now: () => 0 }).get("/mcp", ({ identity }) => identity.forgejoLogin));
  return { app, store, identity };
}

describe("the bearer guard", () => {
  // [Authorization header, status, RFC 6750 error code in WWW-Authenticate (null: none), token looked up]
  const cases: [string | undefined, number, string | null, boolean][] = [
    [`Bearer ${LIVE_TOKEN}`, 200, null, true],
    [`bearer ${LIVE_TOKEN}`, 200, null, true],
    [`BEARER  ${LIVE_TOKEN} `, 200, null, true],
    ["Bearer fmb_at_unknown", 401, "invalid_token", true],
    ["Bearer a b", 400, "invalid_request", false],
    ["bearer a b", 400, "invalid_request", false],
    ["BearerX abc", 400, "invalid_request", false],
    [`Bearer${LIVE_TOKEN}`, 400, "invalid_request", false],
    ["Bearer", 400, "invalid_request", false],
    ["Bearer ", 400, "invalid_request", false],
    ["Basic dXNlcjpwYXNz", 400, "invalid_request", false],
    ["Bearer a,b", 400, "invalid_request", false],
    ["Bearer =abc", 400, "invalid_request", false],
    [undefined, 401, null, false],
  ];
  test.each(cases)("Authorization %p → %p %p (looked up: %p)", async (authorization, status, errorCode, lookedUp) => {
    const { app, store } = guardedApp();
    const response = await app.handle(new Request("http://broker.test/mcp", { headers: authorization === undefined ? {} : { authorization } }));
    expect(response.status).toBe(status);
    const challenge = response.headers.get("www-authenticate");
    if (status === 200) {
      expect(await response.text()).toBe("alice");
      expect(challenge).toBeNull();
    } else {
      expect(challenge).toStartWith("Bearer ");
      expect(challenge).toContain(`resource_metadata="${config.publicUrl}/.well-known/oauth-protected-resource/mcp"`);
      if (errorCode === null) expect(challenge).not.toContain("error=");
      else expect(challenge).toContain(`error="${errorCode}"`);
      expect(((await response.json()) as { error: string }).error).toBe(errorCode ?? "invalid_token");
    }
    expect(store.lookups).toBe(lookedUp ? 1 : 0);
  });

  test("a live token without the mcp scope gets 403 insufficient_scope naming every scope needed, never offline_access", async () => {
    const { app, identity } = guardedApp();
    identity.scopes = ["other"];
    const response = await app.handle(new Request("http://broker.test/mcp", { headers: { authorization: `Bearer ${LIVE_TOKEN}` } }));
    expect(response.status).toBe(403);
    const challenge = response.headers.get("www-authenticate")!;
    expect(challenge).toContain('error="insufficient_scope"');
    expect(challenge).toContain('scope="mcp"');
    expect(challenge).not.toContain("offline_access");
    expect(((await response.json()) as { error: string }).error).toBe("insufficient_scope");
  });

  test("the 401 challenge asks for mcp and never offline_access", async () => {
    const { app } = guardedApp();
    const challenge = (await app.handle(new Request("http://broker.test/mcp"))).headers.get("www-authenticate")!;
    expect(challenge).toContain('scope="mcp"');
    expect(challenge).not.toContain("offline_access");
  });

  test("a token in the query string is refused without a lookup, even beside a good header", async () => {
    const { app, store } = guardedApp();
    const response = await app.handle(new Request(`http://broker.test/mcp?access_token=${LIVE_TOKEN}`, { headers: { authorization: `Bearer ${LIVE_TOKEN}` } }));
    expect(response.status).toBe(400);
    expect(response.headers.get("www-authenticate")).toContain('error="invalid_request"');
    expect(store.lookups).toBe(0);
  });
});

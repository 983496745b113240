// End to end with the official MCP SDK's client auth: discovery, registration, consent, the
// Forgejo sign-in, a token the bearer guard accepts, a refresh, a revoke; and a restart.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { auth } from "@modelcontextprotocol/sdk/client/auth.js";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { TestOAuthProvider } from "../../src/testing/oauth-client.ts";

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker();
});
afterAll(async () => {
  await t.stop();
});

const callMcp = (token: string | undefined) =>
  fetch(t.mcpUrl, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "ping" }),
  });

/** The guard let the request through when the route behind it answers, rather than a 401. */
const guardAccepts = async (token: string) => (await callMcp(token)).status !== 401;

async function signIn(provider: TestOAuthProvider) {
  expect(await auth(provider, { serverUrl: t.mcpUrl })).toBe("REDIRECT");
  const code = provider.landing!.searchParams.get("code");
  expect(code).toStartWith("fmb_code_");
  expect(provider.landing!.searchParams.get("iss")).toBe(t.config.publicUrl);
  expect(await auth(provider, { serverUrl: t.mcpUrl, authorizationCode: code! })).toBe("AUTHORIZED");
  return provider.savedTokens!;
}

describe("an MCP client following the 2025-11-25 authorization spec", () => {
  test("discovers, registers, signs in through consent and Forgejo, and gets a token the guard accepts", async () => {
    const unauthenticated = await callMcp(undefined);
    expect(unauthenticated.status).toBe(401);
    expect(unauthenticated.headers.get("www-authenticate")).toContain(`resource_metadata="${t.config.publicUrl}/.well-known/oauth-protected-resource/mcp"`);

    const provider = new TestOAuthProvider();
    const tokens = await signIn(provider);
    expect(provider.client!.client_id).toStartWith("fmb_client_");
    expect(tokens.access_token).toStartWith("fmb_at_");
    expect(tokens.refresh_token).toStartWith("fmb_rt_");
    expect(tokens.token_type).toBe("Bearer");
    expect(tokens.scope).toBe("mcp");
    expect(await guardAccepts(tokens.access_token)).toBe(true);

    const identity = await t.broker.store.findAccessIdentity(new Bun.CryptoHasher("sha256").update(tokens.access_token).digest("hex"), Date.now());
    expect(identity).toMatchObject({ forgejoLogin: "alice", forgejoUserId: 1, clientId: provider.client!.client_id, resource: t.mcpUrl });
  });

  test("refreshes: the new access token works and the old refresh token is spent", async () => {
    const provider = new TestOAuthProvider();
    const first = await signIn(provider);
    expect(await auth(provider, { serverUrl: t.mcpUrl })).toBe("AUTHORIZED");
    const second = provider.savedTokens!;
    expect(second.access_token).not.toBe(first.access_token);
    expect(second.refresh_token).not.toBe(first.refresh_token);
    expect(await guardAccepts(second.access_token)).toBe(true);

    const reuse = await fetch(`${t.config.publicUrl}/oauth/token`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: first.refresh_token!, client_id: provider.client!.client_id }),
    });
    expect(reuse.status).toBe(400);
    expect((await reuse.json()).error).toBe("invalid_grant");
  });

  test("revokes: a revoked access token is refused by the guard with invalid_token", async () => {
    const provider = new TestOAuthProvider();
    const tokens = await signIn(provider);
    const revoke = await fetch(`${t.config.publicUrl}/oauth/revoke`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ token: tokens.access_token, client_id: provider.client!.client_id }),
    });
    expect(revoke.status).toBe(200);
    const refused = await callMcp(tokens.access_token);
    expect(refused.status).toBe(401);
    expect(refused.headers.get("www-authenticate")).toContain('error="invalid_token"');
  });

  test("a confidential client authenticates with client_secret_basic through the SDK", async () => {
    const provider = new TestOAuthProvider("https://app.example.com/oauth/callback", { token_endpoint_auth_method: "client_secret_basic" });
    const tokens = await signIn(provider);
    expect((provider.client as { client_secret?: string }).client_secret).toStartWith("fmb_cs_");
    expect(await guardAccepts(tokens.access_token)).toBe(true);
  });

  test("tokens issued before a restart on the same data directory still work", async () => {
    const provider = new TestOAuthProvider();
    const tokens = await signIn(provider);
    await t.restart();
    expect(await guardAccepts(tokens.access_token)).toBe(true);
    expect(await auth(provider, { serverUrl: t.mcpUrl })).toBe("AUTHORIZED");
    expect(await guardAccepts(provider.savedTokens!.access_token)).toBe(true);
  });
});

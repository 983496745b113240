// The clients people use, as they register and sign in today: their real redirect URIs (each with where it
// was found), private-use schemes, application_type, scopes and metadata meant for other servers, a resource
// with a trailing slash, and loopback redirects on whatever port the client got.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { CookieJar, parseConsentForm, postForm, walkBrowserFlow } from "../../src/testing/oauth-client.ts";

let t: TestBroker;
let base: string;
beforeAll(async () => {
  t = await startTestBroker({ broker: { rateLimit: { burst: 10_000, perSecond: 100 } } });
  base = t.config.publicUrl;
});
afterAll(async () => {
  await t.stop();
});

const register = (body: Record<string, unknown>) =>
  fetch(`${base}/oauth/register`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

const VERIFIER = "v".repeat(43);
const CHALLENGE = new Bun.CryptoHasher("sha256").update(VERIFIER).digest("base64url");

function authorizeUrl(clientId: string, redirectUri: string, extra: Record<string, string> = {}): URL {
  const url = new URL(`${base}/oauth/authorize`);
  url.search = new URLSearchParams({
    client_id: clientId,
    redirect_uri: redirectUri,
    response_type: "code",
    code_challenge: CHALLENGE,
    code_challenge_method: "S256",
    state: "s1",
    ...extra,
  }).toString();
  return url;
}

async function registered(body: Record<string, unknown>): Promise<{ client_id: string } & Record<string, unknown>> {
  const response = await register(body);
  const json = (await response.json()) as { client_id: string } & Record<string, unknown>;
  if (response.status !== 201) throw new Error(`registration answered ${response.status}: ${JSON.stringify(json)}`);
  return json;
}

/** [client, its registration body, the redirect URI it then authorizes with, what the consent page says it returns to] */
const REAL_CLIENTS: [string, Record<string, unknown>, string, string][] = [
  // Claude (web): https://www.worldmonitor.app/docs/api-oauth lists both callbacks; https://sunpeak.ai/blogs/claude-connector-oauth-authentication
  // says to allow both claude.ai and claude.com.
  ["Claude (web)", { client_name: "Claude", redirect_uris: ["https://claude.ai/api/mcp/auth_callback", "https://claude.com/api/mcp/auth_callback"], token_endpoint_auth_method: "none" }, "https://claude.ai/api/mcp/auth_callback", "claude.ai"],
  // Claude Code: registers http://localhost:<port>/callback (anthropics/claude-code#10439, #66511: host and path fixed, port chosen).
  ["Claude Code", { client_name: "Claude Code (forgejo)", redirect_uris: ["http://localhost:56648/callback"], token_endpoint_auth_method: "none", grant_types: ["authorization_code", "refresh_token"], response_types: ["code"] }, "http://localhost:56648/callback", "localhost:56648"],
  // VS Code: the four URIs of microsoft/vscode#278512, then an authorization on a random port when 33418 is taken.
  ["VS Code", { client_name: "Visual Studio Code", redirect_uris: ["https://insiders.vscode.dev/redirect", "https://vscode.dev/redirect", "http://127.0.0.1/", "http://127.0.0.1:33418/"], token_endpoint_auth_method: "none", grant_types: ["authorization_code", "refresh_token"] }, "http://127.0.0.1:59656/", "127.0.0.1:59656"],
  // Cursor: its three-URI registration body as erp-mafia/accounted#2225 quotes it; the cursor: callback per makeplane/plane-mcp-server#159.
  ["Cursor", { client_name: "Cursor", redirect_uris: ["cursor://anysphere.cursor-mcp/oauth/callback", "https://www.cursor.com/agents/mcp/oauth/callback", "http://localhost:8787/callback"], token_endpoint_auth_method: "none" }, "cursor://anysphere.cursor-mcp/oauth/callback", "an app on your computer"],
  // ChatGPT: redirect_uri=https://chatgpt.com/connector_platform_oauth_redirect in the authorize URL quoted at
  // https://community.openai.com/t/oauth-missing-scopes-after-reconnect/1366784 (with scopes meant for another server).
  ["ChatGPT", { client_name: "ChatGPT", redirect_uris: ["https://chatgpt.com/connector_platform_oauth_redirect"], token_endpoint_auth_method: "none", scope: "worker:read people:read" }, "https://chatgpt.com/connector_platform_oauth_redirect", "chatgpt.com"],
  // MCP Inspector: modelcontextprotocol/inspector client/src/lib/auth.ts (redirect and debug redirect, scope "" when none chosen).
  ["MCP Inspector", { client_name: "MCP Inspector", client_uri: "https://github.com/modelcontextprotocol/inspector", redirect_uris: ["http://localhost:6274/oauth/callback", "http://localhost:6274/oauth/callback/debug"], token_endpoint_auth_method: "none", grant_types: ["authorization_code", "refresh_token"], response_types: ["code"], scope: "" }, "http://localhost:6274/oauth/callback/debug", "localhost:6274"],
  // mcp-remote: geelen/mcp-remote src/lib/node-oauth-client-provider.ts (http://localhost:<callbackPort>/oauth/callback, software_id/version).
  ["mcp-remote", { client_name: "MCP CLI Client", client_uri: "https://github.com/modelcontextprotocol/mcp-cli", software_id: "2e6dc280-f3c3-4e01-99a7-8181dbd1d23d", software_version: "0.1.37", redirect_uris: ["http://localhost:3334/oauth/callback"], token_endpoint_auth_method: "none", grant_types: ["authorization_code", "refresh_token"], response_types: ["code"] }, "http://localhost:3335/oauth/callback", "localhost:3335"],
  // The SDK 2.4.0 client: resolveClientMetadata adds application_type (native for a loopback redirect) and both grant types
  // (node_modules/@modelcontextprotocol/client/dist, deriveApplicationType); it asks for offline_access when a server lists it.
  ["SDK 2.x client", { client_name: "sdk client", redirect_uris: ["http://127.0.0.1:8090/callback"], token_endpoint_auth_method: "none", grant_types: ["authorization_code", "refresh_token"], application_type: "native", scope: "mcp offline_access" }, "http://127.0.0.1:8090/callback", "127.0.0.1:8090"],
];

describe("the clients people use register and reach the consent page", () => {
  test.each(REAL_CLIENTS)("%s", async (_, body, redirectUri, target) => {
    const client = await registered(body);
    const page = await fetch(authorizeUrl(client.client_id, redirectUri), { redirect: "manual" });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain(`will be sent back to <strong>${target}</strong>`);
  });

  test("a private-use scheme is shown as an app on this computer, naming the scheme", async () => {
    const cursor = await registered({ client_name: "Cursor", redirect_uris: ["cursor://anysphere.cursor-mcp/oauth/callback"], token_endpoint_auth_method: "none" });
    const html = await (await fetch(authorizeUrl(cursor.client_id, "cursor://anysphere.cursor-mcp/oauth/callback"))).text();
    expect(html).toContain("<strong>Cursor</strong> will be sent back to <strong>an app on your computer</strong> (cursor:).");
  });

  const dangerous = ["javascript:alert(1)", "data:text/html,<script>alert(1)</script>", "file:///etc/passwd", "vbscript:msgbox(1)", "blob:https://a.example/x", "about:blank", "view-source:https://a.example/", "c:/Users/me/callback"];
  test.each(dangerous)("a dangerous redirect URI %p is refused", async (uri) => {
    const response = await register({ redirect_uris: [uri], token_endpoint_auth_method: "none" });
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: string }).error).toBe("invalid_redirect_uri");
  });
});

describe("application_type, checked as OpenID Connect registration does", () => {
  const cases: [string, string, string[], number, string | null][] = [
    ["web with https", "web", ["https://app.example.com/cb"], 201, null],
    ["web with loopback", "web", ["http://127.0.0.1:3000/cb"], 400, "invalid_redirect_uri"],
    ["web with a private-use scheme", "web", ["cursor://anysphere.cursor-mcp/oauth/callback"], 400, "invalid_redirect_uri"],
    ["native with loopback and a private-use scheme", "native", ["http://127.0.0.1/cb", "com.example.app:/cb"], 201, null],
    ["native with https off loopback", "native", ["https://app.example.com/cb"], 400, "invalid_redirect_uri"],
    ["an unknown type", "desktop", ["https://app.example.com/cb"], 400, "invalid_client_metadata"],
  ];
  test.each(cases)("%s", async (_, applicationType, uris, status, error) => {
    const response = await register({ redirect_uris: uris, application_type: applicationType, token_endpoint_auth_method: "none" });
    expect(response.status).toBe(status);
    const body = (await response.json()) as Record<string, unknown>;
    if (error === null) expect(body.application_type).toBe(applicationType);
    else expect(body.error).toBe(error);
  });
});

describe("metadata and scopes meant for other servers are accepted and what the broker does not serve is dropped", () => {
  test("registration keeps what it uses and ignores the rest", async () => {
    const body = await registered({
      client_name: "Everything",
      redirect_uris: ["https://app.example.com/cb"],
      token_endpoint_auth_method: "none",
      grant_types: ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code", "client_credentials"],
      response_types: ["code", "id_token"],
      scope: "openid profile offline_access",
      logo_uri: "data:image/svg+xml,<svg onload=alert(1)>",
      tos_uri: "javascript:alert(1)",
      policy_uri: "https://app.example.com/privacy",
      jwks_uri: "https://app.example.com/jwks",
      default_max_age: 3600,
    });
    expect(body).toMatchObject({ grant_types: ["authorization_code", "refresh_token"], response_types: ["code"], scope: "mcp", policy_uri: "https://app.example.com/privacy" });
    expect(body.logo_uri).toBeUndefined();
    expect(body.tos_uri).toBeUndefined();
    expect((await t.broker.store.getClient(body.client_id))!.metadata).not.toHaveProperty("jwks_uri");
  });

  test("registration is bounded: more than 50 fields or 20 redirect URIs are refused", async () => {
    const fields = Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`x_${i}`, i]));
    const tooMany = await register({ redirect_uris: ["https://a.example/cb"], ...fields });
    expect(tooMany.status).toBe(400);
    expect(await tooMany.json()).toEqual({ error: "invalid_client_metadata", error_description: "at most 50 metadata fields" });
    const uris = Array.from({ length: 21 }, (_, i) => `https://a.example/cb${i}`);
    const tooManyUris = await register({ redirect_uris: uris });
    expect(await tooManyUris.json()).toEqual({ error: "invalid_redirect_uri", error_description: "at most 20 redirect_uris" });
  });

  test("openid and offline_access at authorize are dropped; the token response says mcp; refresh asking for them too", async () => {
    const client = await registered({ redirect_uris: ["http://127.0.0.1:41000/cb"], token_endpoint_auth_method: "none" });
    const landing = await walkBrowserFlow(authorizeUrl(client.client_id, "http://127.0.0.1:41000/cb", { scope: "openid profile offline_access mcp" }), "http://127.0.0.1:41000/cb");
    const tokens = await postForm(`${base}/oauth/token`, {
      grant_type: "authorization_code",
      code: landing.searchParams.get("code")!,
      code_verifier: VERIFIER,
      client_id: client.client_id,
      redirect_uri: "http://127.0.0.1:41000/cb",
      scope: "openid",
    });
    expect(tokens.status).toBe(200);
    const pair = (await tokens.json()) as { scope: string; refresh_token: string };
    expect(pair.scope).toBe("mcp");
    const refreshed = await postForm(`${base}/oauth/token`, { grant_type: "refresh_token", refresh_token: pair.refresh_token, client_id: client.client_id, scope: "mcp offline_access" });
    expect(refreshed.status).toBe(200);
    expect(((await refreshed.json()) as { scope: string }).scope).toBe("mcp");
  });

  test("a resource with a trailing slash is the same resource at authorize and token", async () => {
    const client = await registered({ redirect_uris: ["http://127.0.0.1:41001/cb"], token_endpoint_auth_method: "none" });
    const resource = `${t.mcpUrl}/`;
    const landing = await walkBrowserFlow(authorizeUrl(client.client_id, "http://127.0.0.1:41001/cb", { resource }), "http://127.0.0.1:41001/cb");
    const tokens = await postForm(`${base}/oauth/token`, {
      grant_type: "authorization_code",
      code: landing.searchParams.get("code")!,
      code_verifier: VERIFIER,
      client_id: client.client_id,
      resource,
    });
    expect(tokens.status).toBe(200);
    const access = ((await tokens.json()) as { access_token: string }).access_token;
    const mcp = await fetch(t.mcpUrl, { method: "POST", headers: { authorization: `Bearer ${access}`, "content-type": "application/json", accept: "application/json, text/event-stream" }, body: "{}" });
    expect(mcp.status).not.toBe(401);
  });

  test("discovery never names offline_access", async () => {
    for (const path of ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-authorization-server"]) {
      expect(await (await fetch(`${base}${path}`)).text()).not.toContain("offline_access");
    }
    expect((await fetch(t.mcpUrl, { method: "POST" })).headers.get("www-authenticate")).not.toContain("offline_access");
  });
});

describe("loopback redirect URIs match on any port (RFC 8252 §7.3)", () => {
  test("mcp-remote registered on 3334 and came back on 3335: the code is issued to 3335 and redeemed there", async () => {
    const client = await registered({ redirect_uris: ["http://localhost:3334/oauth/callback"], token_endpoint_auth_method: "none" });
    const moved = "http://localhost:3335/oauth/callback";
    const landing = await walkBrowserFlow(authorizeUrl(client.client_id, moved), moved, "allow", new CookieJar());
    expect(`${landing.origin}${landing.pathname}`).toBe(moved);
    const tokens = await postForm(`${base}/oauth/token`, { grant_type: "authorization_code", code: landing.searchParams.get("code")!, code_verifier: VERIFIER, client_id: client.client_id, redirect_uri: moved });
    expect(tokens.status).toBe(200);
  });

  test("a different path, host or scheme on loopback is still refused", async () => {
    const client = await registered({ redirect_uris: ["http://localhost:3334/oauth/callback"], token_endpoint_auth_method: "none" });
    for (const uri of ["http://localhost:3335/other", "http://127.0.0.1:3334/oauth/callback", "https://localhost:3334/oauth/callback"]) {
      const page = await fetch(authorizeUrl(client.client_id, uri), { redirect: "manual" });
      expect(page.status).toBe(400);
      expect(await page.text()).toContain("redirect_uri does not match any URI this application registered.");
    }
  });

  test("the consent form still posts back to the broker (parsed as a client would)", async () => {
    const client = await registered({ redirect_uris: ["http://127.0.0.1/cb"], token_endpoint_auth_method: "none" });
    const html = await (await fetch(authorizeUrl(client.client_id, "http://127.0.0.1:45678/cb"))).text();
    expect(parseConsentForm(html).action).toBe(`${base}/oauth/authorize`);
    expect(html).toContain("will be sent back to <strong>127.0.0.1:45678</strong>");
  });
});

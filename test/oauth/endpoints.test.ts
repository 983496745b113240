// Every endpoint's answers as a client sees them: exact statuses, headers and bodies for the
// discovery documents, registration, authorization, callback, token, revocation and the guard.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { hashToken } from "../../src/crypto.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { CookieJar, obtainTokens, parseConsentForm, postForm, walkBrowserFlow } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

let t: TestBroker;
let base: string;
/** The broker's clock: tests move it forward to expire codes and tokens. */
let offsetMs = 0;

beforeAll(async () => {
  t = await startTestBroker({
    env: { FORGEJO_TIMEOUT_S: "1" },
    broker: { now: () => Date.now() + offsetMs, rateLimit: { burst: 10_000, perSecond: 100 } },
  });
  base = t.config.publicUrl;
});
afterAll(async () => {
  await t.stop();
});

const form = (path: string, fields: Record<string, string>, headers: Record<string, string> = {}) => postForm(`${base}${path}`, fields, headers);

const register = (body: unknown) =>
  fetch(`${base}/oauth/register`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

const mcp = (headers: Record<string, string> = {}, query = "") =>
  fetch(`${t.mcpUrl}${query}`, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "ping" }),
  });

async function expectOAuthError(response: Response, status: number, error: string) {
  expect(response.status).toBe(status);
  expect(response.headers.get("content-type")).toContain("application/json");
  const body = (await response.json()) as { error: string; error_description: string };
  expect(body.error).toBe(error);
  expect(body.error_description.length).toBeGreaterThan(5);
  return body;
}

describe("discovery", () => {
  test("authorization-server metadata (RFC 8414), also as openid-configuration", async () => {
    const expected = {
      issuer: base,
      authorization_endpoint: `${base}/oauth/authorize`,
      token_endpoint: `${base}/oauth/token`,
      registration_endpoint: `${base}/oauth/register`,
      revocation_endpoint: `${base}/oauth/revoke`,
      scopes_supported: ["mcp"],
      response_types_supported: ["code"],
      response_modes_supported: ["query"],
      grant_types_supported: ["authorization_code", "refresh_token"],
      token_endpoint_auth_methods_supported: ["none", "client_secret_basic", "client_secret_post"],
      revocation_endpoint_auth_methods_supported: ["none", "client_secret_basic", "client_secret_post"],
      code_challenge_methods_supported: ["S256"],
      authorization_response_iss_parameter_supported: true,
      client_id_metadata_document_supported: true,
    };
    for (const path of ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"]) {
      const response = await fetch(`${base}${path}`, { headers: { host: "evil.example" } });
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual(expected);
    }
  });

  test("protected-resource metadata (RFC 9728) at the root and path-inserted locations", async () => {
    for (const path of ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"]) {
      const response = await fetch(`${base}${path}`, { headers: { host: "evil.example" } });
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({
        resource: `${base}/mcp`,
        authorization_servers: [base],
        scopes_supported: ["mcp"],
        bearer_methods_supported: ["header"],
        resource_name: "Forgejo MCP broker",
      });
    }
  });

  test("health", async () => {
    const response = await fetch(`${base}/healthz`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ status: "ok", store: "ok" });
  });
});

describe("registration (RFC 7591)", () => {
  test("a public client gets an id and its metadata back, no secret", async () => {
    const response = await register({ client_name: "Claude Code", redirect_uris: ["http://localhost:5173/callback"], token_endpoint_auth_method: "none" });
    expect(response.status).toBe(201);
    expect(response.headers.get("cache-control")).toBe("no-store");
    const body = await response.json();
    expect(body).toMatchObject({
      client_name: "Claude Code",
      redirect_uris: ["http://localhost:5173/callback"],
      token_endpoint_auth_method: "none",
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
    });
    expect(body.client_id).toStartWith("fmb_client_");
    expect(body.client_secret).toBeUndefined();
  });

  test("a confidential client sees its secret once; the store keeps only its hash", async () => {
    const response = await register({ client_name: "Web app", redirect_uris: ["https://app.example.com/cb"], token_endpoint_auth_method: "client_secret_post" });
    expect(response.status).toBe(201);
    const body = await response.json();
    expect(body.client_secret).toStartWith("fmb_cs_");
    expect(body.client_secret_expires_at).toBe(0);
    const row = (await t.broker.store.getClient(body.client_id))!;
    expect(row.secretHash).toBe(hashToken(body.client_secret));
    expect(JSON.stringify(row)).not.toContain(body.client_secret);
  });

  const refusals: [string, unknown, string][] = [
    ["no redirect_uris", { client_name: "x" }, "invalid_redirect_uri"],
    ["empty redirect_uris", { redirect_uris: [] }, "invalid_redirect_uri"],
    ["a non-string redirect URI", { redirect_uris: [42] }, "invalid_redirect_uri"],
    ["javascript:", { redirect_uris: ["javascript:alert(1)"] }, "invalid_redirect_uri"],
    ["data:", { redirect_uris: ["data:text/html,x"] }, "invalid_redirect_uri"],
    ["file:", { redirect_uris: ["file:///tmp/x"] }, "invalid_redirect_uri"],
    ["a fragment", { redirect_uris: ["https://a.example/cb#x"] }, "invalid_redirect_uri"],
    ["a wildcard", { redirect_uris: ["https://*.example/cb"] }, "invalid_redirect_uri"],
    ["plain http off loopback", { redirect_uris: ["http://a.example/cb"] }, "invalid_redirect_uri"],
    ["an unknown auth method", { redirect_uris: ["https://a.example/cb"], token_endpoint_auth_method: "private_key_jwt" }, "invalid_client_metadata"],
    ["the implicit grant", { redirect_uris: ["https://a.example/cb"], grant_types: ["implicit"] }, "invalid_client_metadata"],
    ["response type token", { redirect_uris: ["https://a.example/cb"], response_types: ["token"] }, "invalid_client_metadata"],
    ["a mistyped client_name", { redirect_uris: ["https://a.example/cb"], client_name: 7 }, "invalid_client_metadata"],
  ];
  test.each(refusals)("refuses %s", async (_, body, error) => {
    await expectOAuthError(await register(body), 400, error);
  });

  test("refuses a body that is not JSON", async () => {
    const response = await fetch(`${base}/oauth/register`, { method: "POST", headers: { "content-type": "application/json" }, body: "{redirect_uris" });
    await expectOAuthError(response, 400, "invalid_client_metadata");
  });
});

/** A registered public client and a PKCE pair, ready for authorization requests. */
async function newClient(redirectUri = "http://127.0.0.1:40000/cb", metadata: Record<string, unknown> = {}) {
  const body = await (await register({ client_name: "Tester <b>", redirect_uris: [redirectUri], token_endpoint_auth_method: "none", ...metadata })).json();
  const verifier = crypto.randomUUID() + crypto.randomUUID();
  const challenge = new Bun.CryptoHasher("sha256").update(verifier).digest("base64url");
  const authorizeUrl = (overrides: Record<string, string | undefined> = {}) => {
    const params: Record<string, string | undefined> = {
      client_id: body.client_id,
      redirect_uri: redirectUri,
      response_type: "code",
      code_challenge: challenge,
      code_challenge_method: "S256",
      state: "st-123",
      ...overrides,
    };
    const url = new URL(`${base}/oauth/authorize`);
    for (const [k, v] of Object.entries(params)) if (v !== undefined) url.searchParams.set(k, v);
    return url;
  };
  return { clientId: body.client_id as string, redirectUri, verifier, challenge, authorizeUrl };
}

describe("authorization endpoint", () => {
  test("shows the consent page: client name escaped, redirect host, not frameable, browser cookie", async () => {
    const client = await newClient();
    const response = await fetch(client.authorizeUrl());
    expect(response.status).toBe(200);
    expect(response.headers.get("content-security-policy")).toContain("frame-ancestors 'none'");
    expect(response.headers.get("x-frame-options")).toBe("DENY");
    expect(response.headers.get("set-cookie")).toMatch(/^fmb_browser=[A-Za-z0-9_-]+; Path=\/; HttpOnly; SameSite=Lax/);
    const html = await response.text();
    expect(html).toContain("Tester &lt;b&gt;");
    expect(html).not.toContain("Tester <b>");
    expect(html).toContain("127.0.0.1:40000");
    expect(html).toContain('value="allow"');
    expect(html).toContain('value="deny"');
  });

  test("an unknown client or an unregistered redirect URI gets a page, never a redirect", async () => {
    const client = await newClient();
    for (const url of [
      client.authorizeUrl({ client_id: "fmb_client_nope" }),
      client.authorizeUrl({ client_id: undefined }),
      client.authorizeUrl({ redirect_uri: "http://127.0.0.1:40000/other" }),
      client.authorizeUrl({ redirect_uri: "https://evil.example/cb" }),
    ]) {
      const response = await fetch(url, { redirect: "manual" });
      expect(response.status).toBe(400);
      expect(response.headers.get("location")).toBeNull();
      expect(response.headers.get("content-type")).toContain("text/html");
    }
  });

  const clientErrors: [string, Record<string, string | undefined>, string, string | null][] = [
    ["response_type=token", { response_type: "token" }, "unsupported_response_type", "st-123"],
    ["no code_challenge", { code_challenge: undefined }, "invalid_request", "st-123"],
    ["code_challenge_method=plain", { code_challenge_method: "plain" }, "invalid_request", "st-123"],
    ["no code_challenge_method", { code_challenge_method: undefined }, "invalid_request", "st-123"],
    ["a malformed challenge", { code_challenge: "short" }, "invalid_request", "st-123"],
    ["another resource", { resource: "https://other.example/mcp" }, "invalid_target", "st-123"],
    ["a state over 1 KiB", { state: "s".repeat(1025) }, "invalid_request", null],
  ];
  // RFC 9700 §4.11.2: anyone may register a redirect URI, so a bad request is never redirected unseen.
  test.each(clientErrors)("%s shows a page whose link, not a redirect, carries the error, state and iss", async (_, overrides, error, state) => {
    const client = await newClient();
    const response = await fetch(client.authorizeUrl(overrides), { redirect: "manual" });
    expect(response.status).toBe(400);
    expect(response.headers.get("location")).toBeNull();
    expect(response.headers.get("content-type")).toContain("text/html");
    const href = /<a href="([^"]+)">Return to the application<\/a>/.exec(await response.text())?.[1];
    const link = new URL(href!.replaceAll("&amp;", "&"));
    expect(link.origin + link.pathname).toBe(client.redirectUri);
    expect(link.searchParams.get("error")).toBe(error);
    expect(link.searchParams.get("error_description")!.length).toBeGreaterThan(5);
    expect(link.searchParams.get("state")).toBe(state);
    expect(link.searchParams.get("iss")).toBe(base);
  });

  test("our own resource is accepted, and state is optional", async () => {
    const client = await newClient();
    const landing = await walkBrowserFlow(client.authorizeUrl({ resource: t.mcpUrl, state: undefined }), client.redirectUri);
    expect(landing.searchParams.get("code")).toStartWith("fmb_code_");
    expect(landing.searchParams.has("state")).toBe(false);
    expect(landing.searchParams.get("iss")).toBe(base);
  });

  test("Deny sends the client access_denied with its state", async () => {
    const client = await newClient();
    const landing = await walkBrowserFlow(client.authorizeUrl(), client.redirectUri, "deny");
    expect(Object.fromEntries(landing.searchParams)).toEqual({
      error: "access_denied",
      error_description: "The user denied the request",
      state: "st-123",
      iss: base,
    });
  });

  test("a consent POST without the browser's cookie or with a wrong CSRF token is refused", async () => {
    const client = await newClient();
    const jar = new CookieJar();
    const page = await fetch(client.authorizeUrl(), { redirect: "manual" });
    jar.store(page);
    const consent = parseConsentForm(await page.text());
    const post = (fields: Record<string, string>, cookie: string, origin = base) =>
      form("/oauth/authorize", { authorization_id: consent.authorizationId, decision: "allow", ...fields }, { cookie, origin });
    expect((await post({ csrf_token: consent.csrfToken }, "")).status).toBe(403);
    expect((await post({ csrf_token: "fmb_csrf_forged" }, jar.header())).status).toBe(403);
    expect((await post({ csrf_token: consent.csrfToken }, jar.header(), "https://evil.example")).status).toBe(403);
    expect((await post({}, jar.header())).status).toBe(400);
    const allowed = await post({ csrf_token: consent.csrfToken }, jar.header());
    expect(allowed.status).toBe(303);
    expect(allowed.headers.get("location")).toStartWith(`${t.forgejo.url}/login/oauth/authorize?`);
    const again = await post({ csrf_token: consent.csrfToken }, jar.header());
    expect(again.status).toBe(400);
  });
});

describe("Forgejo callback", () => {
  /** Walks to the point where Forgejo redirects back, and returns that callback URL and the browser's jar. */
  async function reachCallback() {
    const client = await newClient();
    const jar = new CookieJar();
    const page = await fetch(client.authorizeUrl(), { redirect: "manual" });
    jar.store(page);
    const consent = parseConsentForm(await page.text());
    const allowed = await form("/oauth/authorize", { authorization_id: consent.authorizationId, csrf_token: consent.csrfToken, decision: "allow" }, { cookie: jar.header(), origin: base });
    const atForgejo = await fetch(allowed.headers.get("location")!, { redirect: "manual" });
    return { client, jar, callbackUrl: atForgejo.headers.get("location")! };
  }

  test("a state used once, or never issued, gets a page", async () => {
    const { jar, callbackUrl } = await reachCallback();
    const first = await fetch(callbackUrl, { redirect: "manual", headers: { cookie: jar.header() } });
    expect(first.status).toBe(302);
    const replay = await fetch(callbackUrl, { redirect: "manual", headers: { cookie: jar.header() } });
    expect(replay.status).toBe(400);
    expect(await replay.text()).toContain("expired or was already used");
    const forged = await fetch(`${base}/oauth/callback?code=x&state=fmb_state_forged`, { redirect: "manual" });
    expect(forged.status).toBe(400);
    const none = await fetch(`${base}/oauth/callback?code=x`, { redirect: "manual" });
    expect(none.status).toBe(400);
  });

  test("a callback in another browser (no consent cookie) is refused", async () => {
    const { callbackUrl } = await reachCallback();
    const response = await fetch(callbackUrl, { redirect: "manual" });
    expect(response.status).toBe(403);
    expect(response.headers.get("location")).toBeNull();
  });

  test("the user denying on Forgejo reaches the client as access_denied", async () => {
    t.forgejo.denyNext();
    const { client, jar, callbackUrl } = await reachCallback();
    const response = await fetch(callbackUrl, { redirect: "manual", headers: { cookie: jar.header() } });
    const location = new URL(response.headers.get("location")!);
    expect(location.origin + location.pathname).toBe(client.redirectUri);
    expect(location.searchParams.get("error")).toBe("access_denied");
    expect(location.searchParams.get("state")).toBe("st-123");
  });

  test("Forgejo failing the code exchange reaches the client as temporarily_unavailable, not a 500", async () => {
    const { client, jar, callbackUrl } = await reachCallback();
    t.forgejo.failTokenEndpoint(502);
    try {
      const response = await fetch(callbackUrl, { redirect: "manual", headers: { cookie: jar.header() } });
      expect(response.status).toBe(302);
      const location = new URL(response.headers.get("location")!);
      expect(location.origin + location.pathname).toBe(client.redirectUri);
      expect(location.searchParams.get("error")).toBe("temporarily_unavailable");
      expect(location.searchParams.get("iss")).toBe(base);
    } finally {
      t.forgejo.failTokenEndpoint(null);
    }
  });

  test("Forgejo not answering the code exchange within FORGEJO_TIMEOUT_S reaches the client as temporarily_unavailable", async () => {
    const { client, jar, callbackUrl } = await reachCallback();
    t.forgejo.delayTokenEndpoint(4000);
    try {
      const started = performance.now();
      const response = await fetch(callbackUrl, { redirect: "manual", headers: { cookie: jar.header() } });
      expect(performance.now() - started).toBeLessThan(3000);
      expect(response.status).toBe(302);
      const location = new URL(response.headers.get("location")!);
      expect(location.origin + location.pathname).toBe(client.redirectUri);
      expect(location.searchParams.get("error")).toBe("temporarily_unavailable");
      expect(location.searchParams.get("state")).toBe("st-123");
      expect(t.logs.some((line) => line.includes("Forgejo's token endpoint did not answer within 1 s"))).toBe(true);
    } finally {
      t.forgejo.delayTokenEndpoint(0);
    }
  });
});

describe("token endpoint", () => {
  test("success carries Cache-Control: no-store and the documented fields", async () => {
    const client = await newClient();
    const landing = await walkBrowserFlow(client.authorizeUrl(), client.redirectUri);
    const response = await form("/oauth/token", {
      grant_type: "authorization_code",
      code: landing.searchParams.get("code")!,
      code_verifier: client.verifier,
      redirect_uri: client.redirectUri,
      client_id: client.clientId,
      resource: t.mcpUrl,
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("cache-control")).toBe("no-store");
    const body = await response.json();
    expect(Object.keys(body).sort()).toEqual(["access_token", "expires_in", "refresh_token", "scope", "token_type"]);
    expect(body).toMatchObject({ token_type: "Bearer", expires_in: 3600, scope: "mcp" });
  });

  test("code errors: wrong verifier, wrong redirect URI, other resource, another client, unknown code; none of them spends the code", async () => {
    const client = await newClient();
    const other = await newClient();
    const code = (await walkBrowserFlow(client.authorizeUrl(), client.redirectUri)).searchParams.get("code")!;
    const exchange = (code: string, overrides: Record<string, string>) =>
      form("/oauth/token", { grant_type: "authorization_code", code, code_verifier: client.verifier, redirect_uri: client.redirectUri, client_id: client.clientId, ...overrides });

    await expectOAuthError(await exchange(code, { code_verifier: "x".repeat(43) }), 400, "invalid_grant");
    await expectOAuthError(await exchange(code, { redirect_uri: "http://127.0.0.1:40000/other" }), 400, "invalid_grant");
    await expectOAuthError(await exchange(code, { resource: "https://other.example/mcp" }), 400, "invalid_target");
    await expectOAuthError(await exchange(code, { client_id: other.clientId, code_verifier: other.verifier }), 400, "invalid_grant");
    await expectOAuthError(await exchange("fmb_code_unknown", {}), 400, "invalid_grant");
    await expectOAuthError(await exchange(code, { code_verifier: "" }), 400, "invalid_request");
    // Only the rightful client with its verifier spends the code, and its tokens work.
    const spent = await exchange(code, {});
    expect(spent.status).toBe(200);
    const tokens = await spent.json();
    expect((await mcp({ authorization: `Bearer ${tokens.access_token}` })).status).not.toBe(401);
    // Someone who saw the spent code but holds no verifier cannot revoke what it issued.
    await expectOAuthError(await exchange(code, { code_verifier: "x".repeat(43) }), 400, "invalid_grant");
    expect((await mcp({ authorization: `Bearer ${tokens.access_token}` })).status).not.toBe(401);
  });

  test("a client that did not register refresh_token gets an access token only", async () => {
    const client = await newClient(undefined, { grant_types: ["authorization_code"] });
    const code = (await walkBrowserFlow(client.authorizeUrl(), client.redirectUri)).searchParams.get("code")!;
    const response = await form("/oauth/token", { grant_type: "authorization_code", code, code_verifier: client.verifier, client_id: client.clientId });
    expect(response.status).toBe(200);
    const body = await response.json();
    expect(Object.keys(body).sort()).toEqual(["access_token", "expires_in", "scope", "token_type"]);
    // With no refresh token behind it, the grant is live only as long as the access token is.
    const { grantId } = (await t.broker.store.findAccessIdentity(hashToken(body.access_token), Date.now() + offsetMs))!;
    expect(await t.broker.store.grantHasLiveTokens(grantId, Date.now() + offsetMs + 3_601_000)).toBe(false);
  });

  test("a code is single-use; replaying it revokes the tokens it was exchanged for", async () => {
    const tokens = await obtainTokens(base);
    expect((await mcp({ authorization: `Bearer ${tokens.accessToken}` })).status).not.toBe(401);
    const replay = await form("/oauth/token", {
      grant_type: "authorization_code",
      code: tokens.code,
      code_verifier: tokens.verifier,
      redirect_uri: tokens.redirectUri,
      client_id: tokens.clientId,
    });
    const body = await expectOAuthError(replay, 400, "invalid_grant");
    expect(body.error_description).toContain("already used");
    expect((await mcp({ authorization: `Bearer ${tokens.accessToken}` })).status).toBe(401);
    await expectOAuthError(await form("/oauth/token", { grant_type: "refresh_token", refresh_token: tokens.refreshToken, client_id: tokens.clientId }), 400, "invalid_grant");
  });

  test("a code expires after 60 seconds", async () => {
    const client = await newClient();
    const code = (await walkBrowserFlow(client.authorizeUrl(), client.redirectUri)).searchParams.get("code")!;
    offsetMs += 61_000;
    await expectOAuthError(
      await form("/oauth/token", { grant_type: "authorization_code", code, code_verifier: client.verifier, client_id: client.clientId }),
      400,
      "invalid_grant",
    );
  });

  test("client authentication and request errors", async () => {
    await expectOAuthError(await form("/oauth/token", { grant_type: "authorization_code", code: "x", code_verifier: "y".repeat(43) }), 401, "invalid_client");
    await expectOAuthError(await form("/oauth/token", { grant_type: "authorization_code", client_id: "fmb_client_nope" }), 401, "invalid_client");
    const client = await newClient();
    await expectOAuthError(await form("/oauth/token", { client_id: client.clientId }), 400, "invalid_request");
    await expectOAuthError(await form("/oauth/token", { grant_type: "password", client_id: client.clientId }), 400, "unsupported_grant_type");
    await expectOAuthError(await form("/oauth/token", { grant_type: "refresh_token", client_id: client.clientId }), 400, "invalid_request");

    const confidential = await (await register({ redirect_uris: ["https://a.example/cb"], token_endpoint_auth_method: "client_secret_basic" })).json();
    const wrongSecret = await form("/oauth/token", { grant_type: "refresh_token", refresh_token: "fmb_rt_x" }, {
      authorization: `Basic ${btoa(`${confidential.client_id}:wrong`)}`,
    });
    await expectOAuthError(wrongSecret, 401, "invalid_client");
    expect(wrongSecret.headers.get("www-authenticate")).toBe('Basic realm="oauth"');
    const wrongMethod = await form("/oauth/token", { grant_type: "refresh_token", refresh_token: "fmb_rt_x", client_id: confidential.client_id, client_secret: confidential.client_secret });
    await expectOAuthError(wrongMethod, 401, "invalid_client");
    const rightSecret = await form("/oauth/token", { grant_type: "refresh_token", refresh_token: "fmb_rt_x" }, {
      authorization: `Basic ${btoa(`${confidential.client_id}:${confidential.client_secret}`)}`,
    });
    await expectOAuthError(rightSecret, 400, "invalid_grant");
  });

  test("invalid_client does not tell whether the client exists: one answer for unknown, wrong secret and wrong method", async () => {
    const confidential = await (await register({ redirect_uris: ["https://a.example/cb"], token_endpoint_auth_method: "client_secret_basic" })).json();
    const publicClient = await newClient();
    const basic = (id: string, secret: string) => ({ authorization: `Basic ${btoa(`${id}:${secret}`)}` });
    const refusal = async (fields: Record<string, string>, headers: Record<string, string> = {}) => {
      const response = await form("/oauth/token", { grant_type: "refresh_token", refresh_token: "fmb_rt_x", ...fields }, headers);
      return { status: response.status, challenge: response.headers.get("www-authenticate"), body: await response.json() };
    };
    const overBasic = [await refusal({}, basic("fmb_client_nope", "secret")), await refusal({}, basic(confidential.client_id, "wrong"))];
    const inTheBody = [
      await refusal({ client_id: "fmb_client_nope" }),
      await refusal({ client_id: "fmb_client_nope", client_secret: "secret" }),
      await refusal({ client_id: confidential.client_id }),
      await refusal({ client_id: confidential.client_id, client_secret: confidential.client_secret }),
      await refusal({ client_id: publicClient.clientId, client_secret: "secret" }),
    ];
    const expected = { status: 401, body: { error: "invalid_client", error_description: "Client authentication failed" } };
    for (const answer of overBasic) expect(answer).toEqual({ ...expected, challenge: 'Basic realm="oauth"' });
    for (const answer of inTheBody) expect(answer).toEqual({ ...expected, challenge: null });
  });

  test("a JSON body is refused with invalid_request", async () => {
    const response = await fetch(`${base}/oauth/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ grant_type: "refresh_token" }),
    });
    await expectOAuthError(response, 400, "invalid_request");
  });

  test("a refresh asking for another resource is refused and leaves the refresh token usable", async () => {
    const tokens = await obtainTokens(base);
    const refresh = (fields: Record<string, string> = {}) =>
      form("/oauth/token", { grant_type: "refresh_token", refresh_token: tokens.refreshToken, client_id: tokens.clientId, ...fields });
    await expectOAuthError(await refresh({ resource: "https://other.example/mcp" }), 400, "invalid_target");
    // Past the grace window: had a refusal rotated the token, this retry would revoke the grant.
    offsetMs += 11_000;
    const retried = await refresh();
    expect(retried.status).toBe(200);
    const fresh = await retried.json();
    expect(fresh.scope).toBe("mcp");
    expect((await mcp({ authorization: `Bearer ${fresh.access_token}` })).status).not.toBe(401);
  });

  test("a rotated refresh token presented after the grace window revokes the whole grant", async () => {
    const tokens = await obtainTokens(base);
    const rotated = await form("/oauth/token", { grant_type: "refresh_token", refresh_token: tokens.refreshToken, client_id: tokens.clientId });
    expect(rotated.status).toBe(200);
    const fresh = await rotated.json();
    expect((await mcp({ authorization: `Bearer ${fresh.access_token}` })).status).not.toBe(401);
    offsetMs += 11_000;
    await expectOAuthError(await form("/oauth/token", { grant_type: "refresh_token", refresh_token: tokens.refreshToken, client_id: tokens.clientId }), 400, "invalid_grant");
    expect((await mcp({ authorization: `Bearer ${fresh.access_token}` })).status).toBe(401);
    await expectOAuthError(await form("/oauth/token", { grant_type: "refresh_token", refresh_token: fresh.refresh_token, client_id: tokens.clientId }), 400, "invalid_grant");
  });
});

describe("revocation (RFC 7009)", () => {
  test("revoking a refresh token ends its access tokens too; unknown tokens get 200", async () => {
    const tokens = await obtainTokens(base);
    const response = await form("/oauth/revoke", { token: tokens.refreshToken, client_id: tokens.clientId });
    expect(response.status).toBe(200);
    expect((await mcp({ authorization: `Bearer ${tokens.accessToken}` })).status).toBe(401);
    expect((await form("/oauth/revoke", { token: "fmb_at_unknown", client_id: tokens.clientId })).status).toBe(200);
  });

  test("another client cannot revoke my token", async () => {
    const mine = await obtainTokens(base);
    const theirs = await newClient();
    expect((await form("/oauth/revoke", { token: mine.accessToken, client_id: theirs.clientId })).status).toBe(200);
    expect((await mcp({ authorization: `Bearer ${mine.accessToken}` })).status).not.toBe(401);
  });

  test("errors: no token, no client", async () => {
    const client = await newClient();
    await expectOAuthError(await form("/oauth/revoke", { client_id: client.clientId }), 400, "invalid_request");
    await expectOAuthError(await form("/oauth/revoke", { token: "x" }), 401, "invalid_client");
  });
});

describe("bearer guard on /mcp", () => {
  const prm = () => `resource_metadata="${base}/.well-known/oauth-protected-resource/mcp"`;

  test("no token: 401 with the resource metadata and scope, and no error code", async () => {
    const response = await mcp();
    expect(response.status).toBe(401);
    expect(response.headers.get("www-authenticate")).toBe(`Bearer ${prm()}, scope="mcp"`);
  });

  test("a token in the query string is refused with 400 invalid_request, even a valid one", async () => {
    const tokens = await obtainTokens(base);
    const response = await mcp({}, `?access_token=${tokens.accessToken}`);
    await expectOAuthError(response, 400, "invalid_request");
    expect(response.headers.get("www-authenticate")).toStartWith('Bearer error="invalid_request"');
    const both = await mcp({ authorization: `Bearer ${tokens.accessToken}` }, `?access_token=${tokens.accessToken}`);
    expect(both.status).toBe(400);
  });

  test("unknown, expired and foreign-audience tokens: 401 invalid_token with a description", async () => {
    const unknown = await mcp({ authorization: "Bearer fmb_at_unknown" });
    await expectOAuthError(unknown, 401, "invalid_token");
    expect(unknown.headers.get("www-authenticate")).toMatch(/^Bearer error="invalid_token", error_description="[^"]+", resource_metadata=/);

    const tokens = await obtainTokens(base);
    expect((await mcp({ authorization: `bearer ${tokens.accessToken}` })).status).not.toBe(401);
    offsetMs += 3601_000;
    await expectOAuthError(await mcp({ authorization: `Bearer ${tokens.accessToken}` }), 401, "invalid_token");

    const foreign = await obtainTokens(base);
    const identity = (await t.broker.store.findAccessIdentity(hashToken(foreign.accessToken), Date.now() + offsetMs))!;
    await t.broker.store.insertTokenPair(
      {
        grantId: identity.grantId,
        familyId: "foreign",
        clientId: foreign.clientId,
        resource: "https://other.example/mcp",
        scope: "mcp",
        accessTokenHash: hashToken("fmb_at_foreign"),
        accessExpiresAt: Date.now() + offsetMs + 60_000,
        refreshTokenHash: hashToken("fmb_rt_foreign"),
        refreshExpiresAt: Date.now() + offsetMs + 60_000,
      },
      Date.now() + offsetMs,
    );
    const wrongAudience = await mcp({ authorization: "Bearer fmb_at_foreign" });
    const body = await expectOAuthError(wrongAudience, 401, "invalid_token");
    expect(body.error_description).toContain("not issued for");
  });

  test("a non-bearer Authorization header is a malformed request", async () => {
    await expectOAuthError(await mcp({ authorization: "Basic dXNlcjpwYXNz" }), 400, "invalid_request");
  });
});

describe("request log", () => {
  /** A request's log line is written after its response is sent: waits for one logged since line `from`. */
  const loggedRequest = async (from: number, matches: (line: Record<string, unknown>) => boolean) => {
    const logged = () => t.logs.slice(from).map((line) => JSON.parse(line) as Record<string, unknown>).findLast((l) => l.msg === "request" && matches(l));
    await waitWhile(() => logged() === undefined, 100, 10);
    return logged();
  };

  test("a Basic header that does not decode is invalid_client and still gets its log line", async () => {
    const from = t.logs.length;
    const response = await form("/oauth/token", { grant_type: "refresh_token", refresh_token: "fmb_rt_x" }, { authorization: `Basic ${btoa("%%:x")}` });
    const body = await expectOAuthError(response, 401, "invalid_client");
    expect(body.error_description).toBe("Malformed HTTP Basic client credentials");
    expect(response.headers.get("www-authenticate")).toBe('Basic realm="oauth"');
    const line = await loggedRequest(from, (l) => l.path === "/oauth/token" && l.status === 401);
    expect(line).toMatchObject({ method: "POST", status: 401 });
    expect(line?.client_id).toBeUndefined();
  });

  test("an answer the error handler makes is logged with its own status: an unknown path is a 404 in the log too", async () => {
    const from = t.logs.length;
    expect((await fetch(`${base}/no/such/endpoint`)).status).toBe(404);
    expect(await loggedRequest(from, (l) => l.path === "/no/such/endpoint")).toMatchObject({ method: "GET", status: 404 });
  });

  test("one JSON line per request with method, path, status, duration, client id, and no secret", async () => {
    const tokens = await obtainTokens(base, { state: "secret-state-value" });
    const from = t.logs.length;
    await mcp({ authorization: `Bearer ${tokens.accessToken}` });
    expect(await loggedRequest(from, (l) => l.path === "/mcp")).toMatchObject({ method: "POST", client_id: tokens.clientId });
    const lines = t.logs.map((line) => JSON.parse(line));
    const tokenLine = lines.find((l) => l.msg === "request" && l.path === "/oauth/token" && l.status === 200);
    expect(tokenLine).toMatchObject({ method: "POST", level: "info" });
    expect(typeof tokenLine.duration_ms).toBe("number");
    const all = t.logs.join("\n");
    for (const secret of [tokens.accessToken, tokens.refreshToken, tokens.code, tokens.verifier, "secret-state-value", t.forgejo.clientSecret]) {
      expect(all).not.toContain(secret);
    }
    expect(all).not.toMatch(/fmb_(at|rt|code|cs|csrf|state)_[A-Za-z0-9_-]{20}/);
    expect(all).not.toContain("fmb_browser=");
  });
});

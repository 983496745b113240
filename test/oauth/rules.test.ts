// Table tests for the protocol rules the endpoints rest on: redirect URIs, the authorization
// request, PKCE, scopes and the WWW-Authenticate challenge.
import { describe, expect, test } from "bun:test";
import { parseBasicCredentials } from "../../src/oauth/client-auth.ts";
import { checkAuthorizationRequest, MAX_STATE_LENGTH, type AuthorizationRequest, type AuthorizationVerdict } from "../../src/oauth/handlers/authorize.ts";
import { bearerChallenge } from "../../src/oauth/errors.ts";
import { bearerFromAuthorization } from "../../src/oauth/middleware/bearer-auth.ts";
import { isValidS256Challenge, s256Challenge, verifyS256 } from "../../src/oauth/pkce.ts";
import { checkRedirectUri, resolveRedirectUri, withQuery } from "../../src/oauth/redirect-uri.ts";
import { grantedScope, narrowScope } from "../../src/oauth/scope.ts";
import type { ClientRow } from "../../src/store/store.ts";

describe("redirect URIs at registration", () => {
  const cases: [string, boolean][] = [
    ["https://app.example.com/callback", true],
    ["https://app.example.com:8443/cb?x=1", true],
    ["http://localhost/callback", true],
    ["http://localhost:33418/callback", true],
    ["http://127.0.0.1:6274/oauth/callback", true],
    ["http://[::1]:9000/cb", true],
    ["com.example.app:/oauth2redirect", true],
    ["com.example.app://callback", true],
    ["cursor://anysphere.cursor-mcp/oauth/callback", true],
    ["vscode://vscode.github-authentication/did-authenticate", true],
    ["http://app.example.com/callback", false],
    ["http://localhost.evil.com/cb", false],
    ["http://127.0.0.2/cb", false],
    ["javascript:alert(1)", false],
    ["data:text/html,hi", false],
    ["file:///etc/passwd", false],
    ["https://app.example.com/cb#fragment", false],
    ["https://*.example.com/cb", false],
    ["https://app.example.com/*", false],
    ["https://user:pass@app.example.com/cb", false],
    ["myapp:/cb", true],
    ["c:/Users/me/cb", false],
    ["mailto:me@example.com", false],
    ["view-source:https://app.example.com/", false],
    ["vbscript:msgbox(1)", false],
    ["blob:https://app.example.com/uuid", false],
    ["/relative/callback", false],
    ["", false],
  ];
  test.each(cases)("%p → allowed %p", (uri, allowed) => {
    expect(checkRedirectUri(uri).ok).toBe(allowed);
  });

  test("a refusal says why", () => {
    const verdict = checkRedirectUri("http://app.example.com/callback");
    expect(verdict).toEqual({ ok: false, reason: "uses http, which is allowed only for localhost, 127.0.0.1 and [::1]" });
  });
});

describe("redirect URIs at authorization: exact match, loopback on any port", () => {
  const registered = ["http://127.0.0.1:3000/cb", "https://app.example.com/cb"];
  const cases: [string | undefined, string[], string | null][] = [
    ["http://127.0.0.1:3000/cb", registered, "http://127.0.0.1:3000/cb"],
    ["http://127.0.0.1:3000/cb/", registered, null],
    // RFC 8252 §7.3: a loopback redirect URI matches on any port, and on nothing else that differs.
    ["http://127.0.0.1:3001/cb", registered, "http://127.0.0.1:3001/cb"],
    ["http://127.0.0.1/cb", registered, "http://127.0.0.1/cb"],
    ["http://[::1]:3000/cb", registered, null],
    ["http://localhost:3000/cb", registered, null],
    ["http://127.0.0.1:3001/CB", registered, null],
    ["http://127.0.0.1:3001/./cb", registered, null],
    ["http://127.0.0.1:3001/cb?x=1", registered, null],
    ["https://app.example.com:8443/cb", registered, null],
    ["HTTPS://app.example.com/cb", registered, null],
    ["https://app.example.com/cb?extra=1", registered, null],
    [undefined, registered, null],
    [undefined, ["https://only.example.com/cb"], "https://only.example.com/cb"],
  ];
  test.each(cases)("%p with %p → %p", (requested, list, expected) => {
    expect(resolveRedirectUri(requested, list)).toBe(expected);
  });

  test("response parameters are added without losing the URI's own query", () => {
    expect(withQuery("https://app.example.com/cb?tenant=7", { code: "c", state: "s&t", iss: undefined })).toBe(
      "https://app.example.com/cb?tenant=7&code=c&state=s%26t",
    );
  });
});

describe("the authorization request (RFC 9700 §4.11.2: no redirect before the user has seen the consent page)", () => {
  const client: ClientRow = {
    id: "fmb_client_1",
    secretHash: null,
    tokenEndpointAuthMethod: "none",
    name: "Evil app",
    redirectUris: ["https://evil.example/cb"],
    metadata: {},
    createdAt: 0,
    lastUsedAt: null,
  };
  const resourceUrl = "https://broker.example/mcp";
  const valid: AuthorizationRequest = {
    client_id: client.id,
    redirect_uri: "https://evil.example/cb",
    response_type: "code",
    code_challenge: s256Challenge("a".repeat(43)),
    code_challenge_method: "S256",
    state: "st",
  };
  // [case, overrides, verdict kind, OAuth error for the client (null: none), state carried back]
  const cases: [string, Partial<AuthorizationRequest>, AuthorizationVerdict["kind"], string | null, string | undefined][] = [
    ["a valid request", {}, "consent", null, "st"],
    ["no client_id", { client_id: undefined }, "page", null, undefined],
    ["an unknown client", { client_id: "fmb_client_unknown" }, "page", null, undefined],
    ["an unregistered redirect URI", { redirect_uri: "https://evil.example/other" }, "page", null, undefined],
    ["response_type=token", { response_type: "token" }, "client_error", "unsupported_response_type", "st"],
    ["no code_challenge", { code_challenge: undefined }, "client_error", "invalid_request", "st"],
    ["code_challenge_method=plain", { code_challenge_method: "plain" }, "client_error", "invalid_request", "st"],
    ["another resource", { resource: "https://other.example/mcp" }, "client_error", "invalid_target", "st"],
    ["an unknown scope, dropped", { scope: "openid admin offline_access" }, "consent", null, "st"],
    ["our resource with a trailing slash", { resource: `${resourceUrl}/` }, "consent", null, "st"],
    ["our resource with two trailing slashes", { resource: `${resourceUrl}//` }, "client_error", "invalid_target", "st"],
    ["a state of 1 KiB", { state: "s".repeat(MAX_STATE_LENGTH) }, "consent", null, "s".repeat(MAX_STATE_LENGTH)],
    ["a state over 1 KiB, not echoed", { state: "s".repeat(MAX_STATE_LENGTH + 1) }, "client_error", "invalid_request", undefined],
  ];
  test.each(cases)("%s", (_, overrides, kind, error, state) => {
    const query = { ...valid, ...overrides };
    const verdict = checkAuthorizationRequest(query, query.client_id === client.id ? client : undefined, resourceUrl);
    expect(verdict.kind).toBe(kind);
    if (verdict.kind === "client_error") {
      expect(verdict.error.error).toBe(error!);
      expect(verdict.state).toBe(state);
    }
    if (verdict.kind === "consent") expect(verdict.state).toBe(state);
  });
});

describe("PKCE S256", () => {
  // RFC 7636 appendix B.
  const verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
  const challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

  test("matches the RFC's example", () => {
    expect(s256Challenge(verifier)).toBe(challenge);
    expect(verifyS256(verifier, challenge)).toBe(true);
  });

  const verifierCases: [string, boolean][] = [
    [verifier, true],
    ["a".repeat(42), false],
    ["a".repeat(43), true],
    ["a".repeat(128), true],
    ["a".repeat(129), false],
    [verifier.slice(0, 42) + "+", false],
    [verifier.slice(0, -1) + "Y", true],
  ];
  test.each(verifierCases)("verifier %p is well-formed and verifies against its own challenge: %p", (candidate, shapeOk) => {
    expect(verifyS256(candidate, s256Challenge(candidate))).toBe(shapeOk);
    if (candidate !== verifier) expect(verifyS256(candidate, challenge)).toBe(false);
  });

  const challengeCases: [string, boolean][] = [
    [challenge, true],
    [challenge + "=", false],
    [challenge.slice(1), false],
    ["E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM", false],
    ["plain-text-verifier-used-as-challenge-value-too-long", false],
  ];
  test.each(challengeCases)("challenge %p well-formed: %p", (candidate, ok) => {
    expect(isValidS256Challenge(candidate)).toBe(ok);
  });
});

describe("scopes: what the broker does not know is dropped, not refused", () => {
  const requested: [string | undefined, string][] = [
    [undefined, "mcp"],
    ["", "mcp"],
    ["mcp", "mcp"],
    ["mcp mcp", "mcp"],
    ["mcp admin", "mcp"],
    ["openid profile email offline_access", "mcp"],
    ["openid mcp offline_access", "mcp"],
  ];
  test.each(requested)("request %p → granted %p", (scope, granted) => {
    expect(grantedScope(scope)).toBe(granted);
  });

  test("a refresh may keep or narrow the scope, never widen it; unknown scopes are dropped first", () => {
    expect(narrowScope("mcp", undefined)).toEqual({ ok: true, scope: "mcp" });
    expect(narrowScope("mcp", "mcp")).toEqual({ ok: true, scope: "mcp" });
    expect(narrowScope("mcp", "mcp offline_access")).toEqual({ ok: true, scope: "mcp" });
    expect(narrowScope("mcp", "offline_access")).toEqual({ ok: true, scope: "mcp" });
    expect(narrowScope("", "mcp")).toEqual({ ok: false, reason: "scope mcp was not granted" });
  });
});

describe("bearer credentials", () => {
  const cases: [string | undefined, string | undefined][] = [
    ["Bearer fmb_at_abc", "fmb_at_abc"],
    ["bearer fmb_at_abc", "fmb_at_abc"],
    ["BEARER fmb_at_abc", "fmb_at_abc"],
    ["Bearer  fmb_at_abc ", "fmb_at_abc"],
    ["Basic dXNlcjpwYXNz", undefined],
    ["Bearer", undefined],
    ["Bearer a b", undefined],
    ["Bearerfmb_at_abc", undefined],
    [undefined, undefined],
  ];
  test.each(cases)("%p → %p", (header, token) => {
    expect(bearerFromAuthorization(header)).toBe(token);
  });

  test("the challenge quotes and escapes its parameters", () => {
    const meta = { resourceMetadataUrl: "https://b.example/.well-known/oauth-protected-resource/mcp", scope: "mcp" };
    expect(bearerChallenge(null, "ignored", meta)).toBe(
      'Bearer resource_metadata="https://b.example/.well-known/oauth-protected-resource/mcp", scope="mcp"',
    );
    expect(bearerChallenge("invalid_token", 'bad "token"', meta)).toBe(
      'Bearer error="invalid_token", error_description="bad \\"token\\"", resource_metadata="https://b.example/.well-known/oauth-protected-resource/mcp", scope="mcp"',
    );
  });
});

describe("HTTP Basic client credentials (RFC 6749 §2.3.1)", () => {
  const cases: [string | undefined, ReturnType<typeof parseBasicCredentials>][] = [
    [`Basic ${btoa("fmb_client_a:s3cret")}`, { clientId: "fmb_client_a", clientSecret: "s3cret" }],
    [`basic ${btoa("a%3Ab:c+d")}`, { clientId: "a:b", clientSecret: "c d" }],
    [`Basic ${btoa("no-colon")}`, "malformed"],
    [`Basic ${btoa("%%:x")}`, "malformed"],
    ["Bearer fmb_at_x", undefined],
    [undefined, undefined],
  ];
  test.each(cases)("%p → %p", (header, expected) => {
    expect(parseBasicCredentials(header)).toEqual(expected);
  });
});

// Client ID Metadata Documents end to end: the SDK 2.4.0 client with its clientMetadataUrl signs in
// (consent, Forgejo, token, /mcp, refresh, revoke) with a document this test serves over https on loopback
// from a certificate the broker is told to trust; every refusal's page; the cache; iss on the error link.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { auth, type OAuthClientProvider, type OAuthDiscoveryState } from "@modelcontextprotocol/client";
import { hashToken } from "../../src/crypto.ts";
import { clients } from "../../src/store/schema.ts";
import type { SqliteStore } from "../../src/store/sqlite-store.ts";
import { directConnect, METADATA_MAX_BYTES } from "../../src/oauth/metadata-fetch.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { FakeTimers } from "../bridge/fakes.ts";
import { childCommand } from "../helpers/mcp.ts";
import { waitWhile } from "../helpers/promises.ts";
import { modernClientWith } from "../helpers/modern-client.ts";
import { CookieJar, postForm, walkBrowserFlow } from "../../src/testing/oauth-client.ts";
import { startClientMetadataServer, type ClientMetadataServer } from "../fixtures/client-metadata-server.ts";

let t: TestBroker;
let docs: ClientMetadataServer;
/** The clock of the broker's document fetches: a test moves it past the 5 s timeout instead of waiting. */
const fetchTimers = new FakeTimers();
/** The broker's clock: moved forward to let cached documents go stale. */
let offsetMs = 0;
const REDIRECT_URI = "http://127.0.0.1:33419/callback";

beforeAll(async () => {
  docs = startClientMetadataServer();
  t = await startTestBroker({
    env: { BROKER_CIMD_INSECURE_HOSTS: docs.hostPort, BROKER_CHILD_COMMAND: childCommand("cimd-e2e") },
    // The broker trusts the test's certificate authority only; the SDK client and the wire are untouched.
    broker: { metadataFetch: { connect: directConnect(docs.certificate.cert), timers: fetchTimers }, rateLimit: { burst: 10_000, perSecond: 100 }, now: () => Date.now() + offsetMs },
  });
});
afterAll(async () => {
  await t.stop();
  await docs.stop();
});

const clientCount = () => (t.broker.store as SqliteStore).db.select().from(clients).all().length;

/** A document as a client would publish it for `url`. */
const documentFor = (url: string, extra: Record<string, unknown> = {}) => ({
  client_id: url,
  client_name: "Doc Client",
  redirect_uris: [REDIRECT_URI],
  grant_types: ["authorization_code", "refresh_token"],
  response_types: ["code"],
  token_endpoint_auth_method: "none",
  ...extra,
});

/** Publishes a valid document at `path`, served with `cacheControl`; returns its URL. */
const publish = (path: string, extra: Record<string, unknown> = {}, cacheControl = "max-age=300") => {
  const url = `${docs.origin}${path}`;
  return docs.serve(path, () => Response.json(documentFor(url, extra), { headers: { "cache-control": cacheControl } }));
};

/** The SDK 2.x provider of a client that names itself by its metadata document. */
class MetadataUrlProvider implements OAuthClientProvider {
  client?: { client_id: string };
  savedTokens?: { access_token: string; refresh_token?: string; scope?: string; token_type: string };
  verifier?: string;
  landing?: URL;
  discovery?: OAuthDiscoveryState;
  constructor(readonly clientMetadataUrl: string) {}
  get redirectUrl() {
    return REDIRECT_URI;
  }
  get clientMetadata() {
    return documentFor(this.clientMetadataUrl);
  }
  clientInformation() {
    return this.client;
  }
  saveClientInformation(info: { client_id: string }) {
    this.client = info;
  }
  tokens() {
    return this.savedTokens;
  }
  saveTokens(tokens: MetadataUrlProvider["savedTokens"]) {
    this.savedTokens = tokens;
  }
  async redirectToAuthorization(url: URL) {
    this.landing = await walkBrowserFlow(url, REDIRECT_URI);
  }
  saveCodeVerifier(verifier: string) {
    this.verifier = verifier;
  }
  codeVerifier() {
    return this.verifier!;
  }
  saveDiscoveryState(state: OAuthDiscoveryState) {
    this.discovery = state;
  }
  discoveryState() {
    return this.discovery;
  }
}

const authorizeUrl = (clientId: string, params: Record<string, string> = {}) => {
  const url = new URL(`${t.config.publicUrl}/oauth/authorize`);
  url.search = new URLSearchParams({
    client_id: clientId,
    redirect_uri: REDIRECT_URI,
    response_type: "code",
    code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    code_challenge_method: "S256",
    state: "st",
    ...params,
  }).toString();
  return url;
};
const authorize = (clientId: string, params: Record<string, string> = {}) => fetch(authorizeUrl(clientId, params), { redirect: "manual" });

describe("a client known by its metadata document, through the SDK 2.4.0 client", () => {
  test("the broker warned at start-up that it fetches from the insecure host", () => {
    expect(t.logs.some((line) => line.includes("client metadata documents may be fetched over http and from loopback") && line.includes(docs.hostPort))).toBe(true);
  });

  test("signs in with its URL as client_id (no registration), gets tokens, calls /mcp, refreshes and revokes", async () => {
    const url = publish("/sdk-client.json");
    const provider = new MetadataUrlProvider(url);
    const before = clientCount();
    expect(await auth(provider, { serverUrl: new URL(t.mcpUrl) })).toBe("REDIRECT");
    expect(provider.client!.client_id).toBe(url);
    expect(provider.landing!.searchParams.get("iss")).toBe(t.config.publicUrl);
    const code = provider.landing!.searchParams.get("code")!;
    expect(code).toStartWith("fmb_code_");
    expect(await auth(provider, { serverUrl: new URL(t.mcpUrl), authorizationCode: code, iss: t.config.publicUrl })).toBe("AUTHORIZED");
    const tokens = provider.savedTokens!;
    expect(tokens.scope).toBe("mcp");
    // Exactly one client row appeared: the document's, keyed by its URL.
    expect(clientCount()).toBe(before + 1);
    expect(await t.broker.store.getClient(url)).toMatchObject({ id: url, name: "Doc Client", tokenEndpointAuthMethod: "none", secretHash: null, redirectUris: [REDIRECT_URI] });
    expect(await t.broker.store.findAccessIdentity(hashToken(tokens.access_token), Date.now())).toMatchObject({ clientId: url, forgejoLogin: "alice" });

    const client = await modernClientWith(t, tokens.access_token);
    expect((await client.listTools()).tools.length).toBeGreaterThan(0);
    await client.close();

    expect(await auth(provider, { serverUrl: new URL(t.mcpUrl) })).toBe("AUTHORIZED");
    const refreshed = provider.savedTokens!;
    expect(refreshed.access_token).not.toBe(tokens.access_token);

    const revoke = await postForm(`${t.config.publicUrl}/oauth/revoke`, { token: refreshed.refresh_token!, client_id: url });
    expect(revoke.status).toBe(200);
    expect(await t.broker.store.findAccessIdentity(hashToken(refreshed.access_token), Date.now())).toBeUndefined();
    expect(docs.hits("/sdk-client.json")).toBe(1);
  });

  test("the consent page names the client as self-asserted, the document's host and the host it returns to", async () => {
    const url = publish("/consent-client.json", { client_name: "Acme <Assistant>" });
    const page = await authorize(url);
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain("The name “Acme &lt;Assistant&gt;” is self-asserted");
    expect(html).toContain(`published on <strong>${docs.hostPort}</strong>`);
    expect(html).toContain("will be sent back to <strong>127.0.0.1:33419</strong>");
    expect(html).toContain(`Client id: ${url}`);
  });

  test("a registered client's consent page says nothing of a document", async () => {
    const registered = await fetch(`${t.config.publicUrl}/oauth/register`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ client_name: "Registered", redirect_uris: [REDIRECT_URI], token_endpoint_auth_method: "none" }),
    }).then((r) => r.json() as Promise<{ client_id: string }>);
    const html = await (await authorize(registered.client_id)).text();
    expect(html).not.toContain("self-asserted");
  });

  test("an error after the redirect URI is trusted goes back to the client with iss and state", async () => {
    const url = publish("/pkce-client.json");
    const page = await authorize(url, { code_challenge_method: "plain" });
    expect(page.status).toBe(400);
    const link = /<a href="([^"]+)">Return to the application<\/a>/.exec(await page.text())![1]!.replace(/&amp;/g, "&");
    const back = new URL(link);
    expect(`${back.origin}${back.pathname}`).toBe(REDIRECT_URI);
    expect(Object.fromEntries(back.searchParams)).toEqual({
      error: "invalid_request",
      error_description: "code_challenge_method must be S256",
      state: "st",
      iss: t.config.publicUrl,
    });
  });

  test("Deny goes back to the client with access_denied, state and iss", async () => {
    const url = publish("/deny-client.json");
    const landing = await walkBrowserFlow(authorizeUrl(url), REDIRECT_URI, "deny", new CookieJar());
    expect(Object.fromEntries(landing.searchParams)).toEqual({ error: "access_denied", error_description: "The user denied the request", state: "st", iss: t.config.publicUrl });
  });

  test("a loopback redirect URI on another port is accepted (RFC 8252 §7.3)", async () => {
    const url = publish("/port-client.json");
    const landing = await walkBrowserFlow(authorizeUrl(url, { redirect_uri: "http://127.0.0.1:40001/callback" }), "http://127.0.0.1:40001/callback", "allow", new CookieJar());
    expect(landing.searchParams.get("code")).toStartWith("fmb_code_");
  });
});

describe("the token endpoint when the document cannot be fetched", () => {
  test("a known client refreshes on what its document last said; the fetch failure does not end its users' sign-ins", async () => {
    const url = publish("/outage.json");
    const provider = new MetadataUrlProvider(url);
    expect(await auth(provider, { serverUrl: new URL(t.mcpUrl) })).toBe("REDIRECT");
    expect(await auth(provider, { serverUrl: new URL(t.mcpUrl), authorizationCode: provider.landing!.searchParams.get("code")!, iss: t.config.publicUrl })).toBe("AUTHORIZED");
    docs.serve("/outage.json", () => new Response("down", { status: 503 }));
    offsetMs += 2 * 3600_000;
    const refreshed = await postForm(`${t.config.publicUrl}/oauth/token`, { grant_type: "refresh_token", refresh_token: provider.savedTokens!.refresh_token!, client_id: url });
    expect(refreshed.status).toBe(200);
    expect(docs.hits("/outage.json")).toBe(2);
    // A new sign-in needs the document: the page says why.
    const page = await authorize(url);
    expect(page.status).toBe(400);
    expect(await page.text()).toContain("the URL answered HTTP 503");
  });
});

describe("refusals: a page, never a redirect, saying what is wrong", () => {
  const page = (url: string, reason: string) =>
    `It names itself by the URL ${url}, whose client metadata the broker cannot use: the URL ${reason}. Nothing was sent back to the application.`;

  const oversized = { pad: "x".repeat(METADATA_MAX_BYTES) };
  const cases: [string, () => string, string][] = [
    ["http", () => "http://app.example.com/client.json", "is not an https URL"],
    ["a host name resolving to 127.0.0.1 that is not listed", () => `https://localhost:${Number(docs.hostPort.split(":")[1]) + 1}/client.json`, "has a host name that resolves to an address that is not public"],
    ["a loopback IP literal", () => `https://127.0.0.1:${docs.hostPort.split(":")[1]}/client.json`, "has a host name that resolves to an address that is not public"],
    ["a redirect", () => docs.serve("/redirect.json", () => new Response(null, { status: 302, headers: { location: `${docs.origin}/sdk-client.json` } })), "answered with a redirect (HTTP 302), which is not followed"],
    ["an oversized document", () => { const u = `${docs.origin}/big.json`; return docs.serve("/big.json", () => Response.json({ ...documentFor(u), ...oversized })); }, "is larger than 16 KiB"],
    ["a wrong content type", () => docs.serve("/text.json", (r) => new Response(JSON.stringify(documentFor(r.url)), { headers: { "content-type": "text/plain" } })), "is served as text/plain, not application/json"],
    ["invalid JSON", () => docs.serve("/broken.json", () => new Response("{ not json", { headers: { "content-type": "application/json" } })), "is not valid JSON"],
    ["a client_id that is another URL", () => docs.serve("/mismatch.json", () => Response.json(documentFor(`${docs.origin}/other.json`))), "serves a document whose client_id is not exactly this URL"],
    ["a 404", () => `${docs.origin}/missing.json`, "answered HTTP 404"],
    ["a client secret method", () => { const u = `${docs.origin}/secret.json`; return docs.serve("/secret.json", () => Response.json(documentFor(u, { token_endpoint_auth_method: "client_secret_basic" }))); }, "serves a document whose token_endpoint_auth_method is not none (the broker does not take private_key_jwt)"],
    ["a root URL", () => `${docs.origin}/`, "must have a path"],
  ];
  test.each(cases)("%s", async (_, urlOf, reason) => {
    const url = urlOf();
    const response = await authorize(url);
    expect(response.status).toBe(400);
    expect(response.headers.get("location")).toBeNull();
    expect(response.headers.get("content-type")).toBe("text/html; charset=utf-8");
    const html = await response.text();
    expect(html).toContain("<h1>This application cannot sign in</h1>");
    expect(html).toContain(Bun.escapeHTML(page(url, reason)));
  });

  test("a server that does not answer within 5 s", async () => {
    const url = docs.serve("/slow.json", () => new Promise<Response>(() => {}));
    const answer = authorize(url);
    await waitWhile(() => docs.hits("/slow.json") === 0, 100, 10);
    expect(docs.hits("/slow.json")).toBe(1);
    fetchTimers.advance(5_000);
    const response = await answer;
    expect(response.status).toBe(400);
    expect(await response.text()).toContain(Bun.escapeHTML(page(url, "did not answer within 5 s")));
  });

  test("a redirect URI the document does not list gets the invalid-redirect page", async () => {
    const url = publish("/unlisted.json");
    const response = await authorize(url, { redirect_uri: "https://evil.example/callback" });
    expect(response.status).toBe(400);
    expect(response.headers.get("location")).toBeNull();
    expect(await response.text()).toContain("redirect_uri does not match any URI this application registered.");
  });

  test("the token endpoint refuses a client_id URL whose document cannot be used, as invalid_client", async () => {
    const response = await postForm(`${t.config.publicUrl}/oauth/token`, { grant_type: "refresh_token", refresh_token: "x", client_id: "http://app.example.com/client.json" });
    expect(response.status).toBe(401);
    expect(await response.json()).toEqual({ error: "invalid_client", error_description: "The client_id URL is not an https URL" });
  });
});

describe("the document cache, through the broker", () => {
  test("many authorizations fetch the document once", async () => {
    const url = publish("/cached.json");
    for (let i = 0; i < 5; i++) expect((await authorize(url)).status).toBe(200);
    expect(docs.hits("/cached.json")).toBe(1);
  });

  test("once the cached document is stale it is fetched again, and the client row follows it", async () => {
    const url = publish("/renamed.json", { client_name: "Old Name" }, "max-age=60");
    expect(await (await authorize(url)).text()).toContain("Old Name");
    publish("/renamed.json", { client_name: "New Name" }, "max-age=60");
    expect(await (await authorize(url)).text()).toContain("Old Name");
    offsetMs += 61_000;
    expect(await (await authorize(url)).text()).toContain("New Name");
    expect(docs.hits("/renamed.json")).toBe(2);
    expect((await t.broker.store.getClient(url))!.name).toBe("New Name");
  });

  test("a failed fetch is not repeated at once", async () => {
    const url = docs.serve("/flaky.json", () => new Response("down", { status: 503 }));
    for (let i = 0; i < 5; i++) expect((await authorize(url)).status).toBe(400);
    expect(docs.hits("/flaky.json")).toBe(1);
  });
});

// An MCP client's side of the OAuth flow for tests: an OAuthClientProvider for the official SDK
// whose redirectToAuthorization walks the consent page and the Forgejo redirects headlessly.
import type { OAuthClientProvider } from "@modelcontextprotocol/sdk/client/auth.js";
import type { OAuthClientInformationMixed, OAuthClientMetadata, OAuthTokens } from "@modelcontextprotocol/sdk/shared/auth.js";

/** A minimal cookie jar: enough for the broker's one browser-binding cookie. */
export class CookieJar {
  private readonly cookies = new Map<string, string>();

  store(response: Response): void {
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(";");
      const eq = pair!.indexOf("=");
      this.cookies.set(pair!.slice(0, eq).trim(), pair!.slice(eq + 1).trim());
    }
  }

  header(): string {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ");
  }
}

export interface ConsentForm {
  action: string;
  authorizationId: string;
  csrfToken: string;
}

export function parseConsentForm(html: string): ConsentForm {
  const field = (name: string) => new RegExp(`name="${name}" value="([^"]*)"`).exec(html)?.[1];
  const action = /<form method="post" action="([^"]+)"/.exec(html)?.[1];
  const authorizationId = field("authorization_id");
  const csrfToken = field("csrf_token");
  if (!action || !authorizationId || !csrfToken) throw new Error(`no consent form in page:\n${html.slice(0, 500)}`);
  return { action: action.replace(/&amp;/g, "&"), authorizationId, csrfToken };
}

/**
 * Plays the browser: GET the authorization URL, submit the consent form with `decision`, follow
 * redirects (Forgejo, our callback) until one leaves for the client's redirect URI; returns that URL.
 */
export async function walkBrowserFlow(authorizationUrl: URL | string, redirectUri: string, decision: "allow" | "deny" = "allow", jar = new CookieJar()): Promise<URL> {
  const page = await fetch(authorizationUrl, { redirect: "manual", headers: { cookie: jar.header() } });
  jar.store(page);
  if (page.status !== 200) throw new Error(`authorize answered ${page.status}: ${await page.text()}`);
  const form = parseConsentForm(await page.text());
  let response = await fetch(form.action, {
    method: "POST",
    redirect: "manual",
    headers: { "content-type": "application/x-www-form-urlencoded", cookie: jar.header(), origin: new URL(form.action).origin },
    body: new URLSearchParams({ authorization_id: form.authorizationId, csrf_token: form.csrfToken, decision }),
  });
  for (let hops = 0; hops < 10; hops++) {
    jar.store(response);
    const location = response.headers.get("location");
    if (response.status < 300 || response.status >= 400 || !location) {
      throw new Error(`flow stopped at ${response.status}: ${await response.text()}`);
    }
    const next = new URL(location, response.url || undefined);
    if (next.href.startsWith(redirectUri)) return next;
    response = await fetch(next, { redirect: "manual", headers: { cookie: jar.header() } });
  }
  throw new Error("too many redirects");
}

/** An in-memory OAuthClientProvider, as a CLI client would keep on disk. */
export class TestOAuthProvider implements OAuthClientProvider {
  client?: OAuthClientInformationMixed;
  savedTokens?: OAuthTokens;
  verifier?: string;
  /** Where the last walk landed: the client's redirect URI with code (or error), state and iss. */
  landing?: URL;

  constructor(
    readonly redirectUri = "http://127.0.0.1:33418/callback",
    readonly metadataOverrides: Partial<OAuthClientMetadata> = {},
    readonly decision: "allow" | "deny" = "allow",
  ) {}

  get redirectUrl(): string {
    return this.redirectUri;
  }

  get clientMetadata(): OAuthClientMetadata {
    return {
      client_name: "Test MCP Client",
      redirect_uris: [this.redirectUri],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
      ...this.metadataOverrides,
    };
  }

  clientInformation() {
    return this.client;
  }
  saveClientInformation(info: OAuthClientInformationMixed) {
    this.client = info;
  }
  tokens() {
    return this.savedTokens;
  }
  saveTokens(tokens: OAuthTokens) {
    this.savedTokens = tokens;
  }
  async redirectToAuthorization(url: URL) {
    this.landing = await walkBrowserFlow(url, this.redirectUri, this.decision);
  }
  saveCodeVerifier(verifier: string) {
    this.verifier = verifier;
  }
  codeVerifier() {
    if (!this.verifier) throw new Error("no code verifier saved");
    return this.verifier;
  }
}

export interface ObtainedTokens {
  clientId: string;
  clientSecret?: string;
  redirectUri: string;
  verifier: string;
  code: string;
  accessToken: string;
  refreshToken: string;
}

/** Registers a public client, signs in as the stand-in's current user, and exchanges the code, with plain fetch. */
export async function obtainTokens(publicUrl: string, options: { redirectUri?: string; state?: string } = {}): Promise<ObtainedTokens> {
  const redirectUri = options.redirectUri ?? "http://127.0.0.1:33418/callback";
  const registered = await fetch(`${publicUrl}/oauth/register`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ client_name: "Test", redirect_uris: [redirectUri], token_endpoint_auth_method: "none" }),
  }).then((r) => r.json() as Promise<{ client_id: string }>);
  const verifier = "v".repeat(20) + crypto.randomUUID();
  const challenge = new Bun.CryptoHasher("sha256").update(verifier).digest("base64url");
  const url = new URL(`${publicUrl}/oauth/authorize`);
  url.search = new URLSearchParams({
    client_id: registered.client_id,
    redirect_uri: redirectUri,
    response_type: "code",
    code_challenge: challenge,
    code_challenge_method: "S256",
    ...(options.state ? { state: options.state } : {}),
  }).toString();
  const landing = await walkBrowserFlow(url, redirectUri);
  const code = landing.searchParams.get("code");
  if (!code) throw new Error(`no code: ${landing.href}`);
  const tokens = await postForm(`${publicUrl}/oauth/token`, {
    grant_type: "authorization_code",
    code,
    code_verifier: verifier,
    redirect_uri: redirectUri,
    client_id: registered.client_id,
  }).then((r) => r.json() as Promise<{ access_token: string; refresh_token: string }>);
  return { clientId: registered.client_id, redirectUri, verifier, code, accessToken: tokens.access_token, refreshToken: tokens.refresh_token };
}

/** POSTs an application/x-www-form-urlencoded body, as OAuth clients do; a redirect is returned, not followed. */
export function postForm(url: string, fields: Record<string, string>, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, {
    method: "POST",
    redirect: "manual",
    headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
    body: new URLSearchParams(fields),
  });
}

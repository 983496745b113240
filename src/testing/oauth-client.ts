// An MCP client's side of the OAuth flow for tests: an OAuthClientProvider for the official SDK
// whose redirectToAuthorization walks the consent page and the Forgejo redirects headlessly.
import type { OAuthClientProvider } from "@modelcontextprotocol/sdk/client/auth.js";
import type { OAuthClientInformationMixed, OAuthClientMetadata, OAuthTokens } from "@modelcontextprotocol/sdk/shared/auth.js";
import { SIGNED_IN_COOKIE } from "./forgejo-stand-in.ts";

/** A minimal cookie jar: enough for the broker's one browser-binding cookie and the stand-in's signed-in user. */
export class CookieJar {
  private readonly cookies = new Map<string, string>();

  set(name: string, value: string): void {
    this.cookies.set(name, value);
  }

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

/** The steps of a sign-in, in order, as a failure names them. */
export type SignInStep = "registration" | "authorization" | "consent" | "Forgejo sign-in" | "broker callback" | "code exchange";

export class SignInError extends Error {
  constructor(
    readonly step: SignInStep,
    detail: string,
  ) {
    super(`sign-in failed at ${step}: ${detail}`);
    this.name = "SignInError";
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
  if (!action || !authorizationId || !csrfToken) throw new SignInError("authorization", `no consent form in page:\n${html.slice(0, 500)}`);
  return { action: action.replace(/&amp;/g, "&"), authorizationId, csrfToken };
}

export interface BrowserWalk {
  /** The client's redirect URI with code (or error), state and iss. */
  landing: URL;
  /** Which step sent the browser back with an error instead of going on; null when none did. */
  refusedBy: SignInStep | null;
}

/**
 * Plays the browser: GET the authorization URL, submit the consent form with `decision`, follow redirects
 * (Forgejo, the broker's callback) until one leaves for the client's redirect URI. Throws a SignInError
 * naming the step whose page answered neither a page nor a redirect.
 */
export async function walkBrowser(authorizationUrl: URL | string, redirectUri: string, decision: "allow" | "deny" = "allow", jar = new CookieJar()): Promise<BrowserWalk> {
  const broker = new URL(authorizationUrl).origin;
  const page = await fetch(authorizationUrl, { redirect: "manual", headers: { cookie: jar.header() } });
  jar.store(page);
  if (page.status !== 200) throw new SignInError("authorization", `${authorizationUrl} answered ${page.status}: ${await page.text()}`);
  const form = parseConsentForm(await page.text());
  let step: SignInStep = "consent";
  let refusedBy: SignInStep | null = null;
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
      throw new SignInError(step, `${response.url || form.action} answered ${response.status}: ${(await response.text()).slice(0, 500)}`);
    }
    const next = new URL(location, response.url || undefined);
    if (refusedBy === null && next.searchParams.has("error")) refusedBy = step;
    if (next.href.startsWith(redirectUri)) return { landing: next, refusedBy };
    step = next.origin !== broker ? "Forgejo sign-in" : step === "consent" ? "consent" : "broker callback";
    response = await fetch(next, { redirect: "manual", headers: { cookie: jar.header() } });
  }
  throw new SignInError(step, "more than 10 redirects");
}

/** walkBrowser's landing URL, for tests that look at it whatever it says. */
export async function walkBrowserFlow(authorizationUrl: URL | string, redirectUri: string, decision: "allow" | "deny" = "allow", jar = new CookieJar()): Promise<URL> {
  return (await walkBrowser(authorizationUrl, redirectUri, decision, jar)).landing;
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
  /** Seconds the access token lives, as the token endpoint said. */
  expiresIn: number;
}

export interface SignInFlowOptions {
  /** Who signs in at the Forgejo stand-in (its signed-in cookie); unset, whoever the stand-in has signed in. */
  user?: string;
  redirectUri?: string;
  state?: string;
  clientName?: string;
}

/**
 * Registers a public client, walks the consent page (Allow) and the Forgejo sign-in, and exchanges the code with
 * PKCE, with plain fetch. A failure is a SignInError naming its step.
 */
export async function signInFlow(publicUrl: string, options: SignInFlowOptions = {}): Promise<ObtainedTokens> {
  const redirectUri = options.redirectUri ?? "http://127.0.0.1:33418/callback";
  const registration = await fetch(`${publicUrl}/oauth/register`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ client_name: options.clientName ?? "Test", redirect_uris: [redirectUri], token_endpoint_auth_method: "none" }),
  }).catch((error: unknown) => {
    throw new SignInError("registration", `cannot reach ${publicUrl}: ${String(error)}`);
  });
  if (registration.status !== 201) throw new SignInError("registration", `${publicUrl}/oauth/register answered ${registration.status}: ${await registration.text()}`);
  const registered = (await registration.json()) as { client_id: string };
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
  const jar = new CookieJar();
  if (options.user !== undefined) jar.set(SIGNED_IN_COOKIE, encodeURIComponent(options.user));
  const { landing, refusedBy } = await walkBrowser(url, redirectUri, "allow", jar);
  const code = landing.searchParams.get("code");
  if (!code) {
    const error = [landing.searchParams.get("error"), landing.searchParams.get("error_description")].filter(Boolean).join(": ");
    throw new SignInError(refusedBy ?? "authorization", `came back without a code (${error || landing.href})`);
  }
  const exchange = await postForm(`${publicUrl}/oauth/token`, {
    grant_type: "authorization_code",
    code,
    code_verifier: verifier,
    redirect_uri: redirectUri,
    client_id: registered.client_id,
  });
  if (exchange.status !== 200) throw new SignInError("code exchange", `${publicUrl}/oauth/token answered ${exchange.status}: ${await exchange.text()}`);
  const tokens = (await exchange.json()) as { access_token: string; refresh_token: string; expires_in: number };
  return {
    clientId: registered.client_id,
    redirectUri,
    verifier,
    code,
    accessToken: tokens.access_token,
    refreshToken: tokens.refresh_token,
    expiresIn: tokens.expires_in,
  };
}

/** Signs in as the stand-in's current user: signInFlow for tests that set the user on the stand-in. */
export function obtainTokens(publicUrl: string, options: { redirectUri?: string; state?: string } = {}): Promise<ObtainedTokens> {
  return signInFlow(publicUrl, options);
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

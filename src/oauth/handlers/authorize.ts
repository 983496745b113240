// The authorization endpoint: checks the client's request, shows the broker's consent page, and
// on Allow sends the browser to Forgejo (our own PKCE and state); on Deny back with access_denied.
import { generateCodeVerifier } from "arctic";
import { Elysia, t } from "elysia";
import { constantTimeEqual, hashToken, mintToken, randomBase64Url } from "../../crypto.ts";
import type { AuthorizationRow, ClientRow } from "../../store/store.ts";
import { describeForgejoScopes, pageHeaders, renderConsentPage, renderErrorPage } from "../consent-page.ts";
import type { OAuthDeps } from "../deps.ts";
import { endpoints } from "../deps.ts";
import { isMetadataDocumentId } from "../client-metadata-document.ts";
import { isValidS256Challenge } from "../pkce.ts";
import { isLoopbackHost, resolveRedirectUri, withQuery } from "../redirect-uri.ts";
import { canonicalResource } from "../resource.ts";
import { grantedScope } from "../scope.ts";
import { optionalParam } from "./params.ts";

/** An error for the client at its (already verified) redirect URI: through a link before consent, by redirect after. */
export interface RedirectableError {
  error: string;
  description: string;
}

export interface AuthorizationRequest {
  client_id?: string;
  redirect_uri?: string;
  response_type?: string;
  code_challenge?: string;
  code_challenge_method?: string;
  state?: string;
  scope?: string;
  resource?: string;
}

export type AuthorizationVerdict =
  | { kind: "page"; status: number; title: string; message: string }
  | { kind: "client_error"; clientName: string; redirectUri: string; state?: string; error: RedirectableError }
  | { kind: "consent"; client: ClientRow; redirectUri: string; scope: string; resource: string; codeChallenge: string; state?: string };

/** A client's state is echoed back verbatim; nothing a client needs comes near this. */
export const MAX_STATE_LENGTH = 1024;

/** Sign-ins one browser may have in progress at once; opening one more drops its oldest. */
export const MAX_PENDING_PER_BROWSER = 10;

/** A client's authorize requests come from all its users' browsers: its bucket is this many addresses' worth. */
const CLIENT_RATE_SCALE = 10;

/**
 * The rules of RFC 6749 §4.1.2.1 and OAuth 2.1 in order: until the client and its redirect URI are
 * known, errors are a page; after, a client_error, which is a page with a link to the client, never
 * an automatic redirect: anyone may register a redirect URI, and RFC 9700 §4.11.2 warns that
 * redirecting on a bad request before the user has seen anything makes the broker an open redirector.
 */
export function checkAuthorizationRequest(
  query: AuthorizationRequest,
  client: ClientRow | undefined,
  resourceUrl: string,
): AuthorizationVerdict {
  if (!query.client_id) return { kind: "page", status: 400, title: "Invalid request", message: "client_id is missing." };
  if (!client) {
    return { kind: "page", status: 400, title: "Unknown application", message: "This application is not registered with the broker. Start again from your MCP client." };
  }
  const redirectUri = resolveRedirectUri(query.redirect_uri, client.redirectUris);
  if (redirectUri === null) {
    return {
      kind: "page",
      status: 400,
      title: "Invalid redirect URI",
      message: query.redirect_uri === undefined
        ? "redirect_uri is missing and the application registered more than one."
        : "redirect_uri does not match any URI this application registered.",
    };
  }
  const fail = (error: string, description: string, echoState = true): AuthorizationVerdict => ({
    kind: "client_error",
    clientName: client.name,
    redirectUri,
    state: echoState ? query.state : undefined,
    error: { error, description },
  });
  if (query.state !== undefined && query.state.length > MAX_STATE_LENGTH) {
    return fail("invalid_request", `state is longer than ${MAX_STATE_LENGTH} characters`, false);
  }
  if (query.response_type !== "code") return fail("unsupported_response_type", "response_type must be code");
  if (!query.code_challenge) return fail("invalid_request", "code_challenge is required (PKCE with S256)");
  if (query.code_challenge_method !== "S256") return fail("invalid_request", "code_challenge_method must be S256");
  if (!isValidS256Challenge(query.code_challenge)) return fail("invalid_request", "code_challenge is not a base64url SHA-256 digest");
  const resource = canonicalResource(query.resource, resourceUrl);
  if (resource !== undefined && resource !== resourceUrl) {
    return fail("invalid_target", `resource must be ${resourceUrl}`);
  }
  return {
    kind: "consent",
    client,
    redirectUri,
    scope: grantedScope(query.scope),
    resource: resourceUrl,
    codeChallenge: query.code_challenge,
    state: query.state,
  };
}

/** RFC 9207: every authorization response, success or error, names the issuer. */
export function redirectToClient(redirectUri: string, issuer: string, params: Record<string, string | null | undefined>): Response {
  return new Response(null, {
    status: 302,
    headers: { Location: withQuery(redirectUri, { ...params, iss: issuer }), "Cache-Control": "no-store" },
  });
}

export function htmlPage(status: number, title: string, message: string): Response {
  return new Response(renderErrorPage(title, message), { status, headers: pageHeaders() });
}

/** The consent endpoints' 429: a page, since a browser is what sees it. */
export function tooManySignIns(retryAfterS: number): Response {
  const page = htmlPage(429, "Too many requests", `Too many sign-in requests. Try again in ${retryAfterS} seconds.`);
  page.headers.set("Retry-After", String(retryAfterS));
  return page;
}

/** The error the client asked for, as a page whose link carries what the redirect would have (RFC 9207 iss included). */
export function clientErrorPage(verdict: Extract<AuthorizationVerdict, { kind: "client_error" }>, issuer: string): Response {
  const back = withQuery(verdict.redirectUri, {
    error: verdict.error.error,
    error_description: verdict.error.description,
    state: verdict.state,
    iss: issuer,
  });
  const html = renderErrorPage(
    "This sign-in request cannot be accepted",
    `“${verdict.clientName}” sent a request the broker refuses: ${verdict.error.description}.`,
    { href: back, label: "Return to the application" },
  );
  return new Response(html, { status: 400, headers: pageHeaders() });
}

/** The cookie that ties a consent to the browser that saw it (and the callback to that browser). */
export function browserCookieName(publicUrl: string): string {
  return publicUrl.startsWith("https:") ? "__Host-fmb_browser" : "fmb_browser";
}

export function readCookie(header: string | null, name: string): string | undefined {
  for (const part of (header ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

function browserCookie(publicUrl: string, value: string, maxAgeS: number): string {
  const secure = publicUrl.startsWith("https:") ? "; Secure" : "";
  return `${browserCookieName(publicUrl)}=${value}; Path=/; HttpOnly; SameSite=Lax; Max-Age=${maxAgeS}${secure}`;
}

/** A redirect target as a CSP form-action source: an origin, or a private-use scheme. */
function formActionSource(uri: string): string {
  const url = new URL(uri);
  return url.protocol === "http:" || url.protocol === "https:" ? url.origin : url.protocol;
}

export const AuthorizationQuery = t.Object(
  {
    client_id: optionalParam,
    redirect_uri: optionalParam,
    response_type: optionalParam,
    code_challenge: optionalParam,
    code_challenge_method: optionalParam,
    state: optionalParam,
    scope: optionalParam,
    resource: optionalParam,
  },
  { additionalProperties: true },
);

export const ConsentForm = t.Object({
  authorization_id: t.String({ maxLength: 200 }),
  csrf_token: t.String({ maxLength: 200 }),
  decision: t.Union([t.Literal("allow"), t.Literal("deny")]),
});

export function authorizeRoutes(deps: OAuthDeps) {
  const { config, store, logger } = deps;
  const urls = endpoints(config.publicUrl);
  const forgejoOrigin = new URL(config.forgejo.url).origin;
  const ourOrigin = new URL(config.publicUrl).origin;
  const cookieName = browserCookieName(config.publicUrl);
  const badRequest = () => htmlPage(400, "Invalid request", "The request is malformed: a parameter is missing, repeated or too long. Start again from your MCP client.");

  return new Elysia({ name: "oauth-authorize" })
    .get(
      "/oauth/authorize",
      async ({ query, request }) => {
        const found = query.client_id ? await deps.clients.find(query.client_id) : undefined;
        if (found?.ok === false && found.kind === "document") {
          return htmlPage(400, "This application cannot sign in", `It names itself by the URL ${query.client_id}, whose client metadata the broker cannot use: the URL ${found.reason}. Nothing was sent back to the application.`);
        }
        const verdict = checkAuthorizationRequest(query, found?.ok ? found.client : undefined, config.resourceUrl);
        if (verdict.kind === "page") return htmlPage(verdict.status, verdict.title, verdict.message);
        if (verdict.kind === "client_error") return clientErrorPage(verdict, config.publicUrl);
        // Each consent page writes a row: per address (the edge guard) and per client, before that.
        const rate = deps.rateLimiter.take(`authorize-client:${verdict.client.id}`, CLIENT_RATE_SCALE);
        if (!rate.allowed) {
          deps.metrics?.rateLimited("authorize_client");
          return tooManySignIns(rate.retryAfterS);
        }

        const now = deps.now();
        const existing = readCookie(request.headers.get("cookie"), cookieName);
        const browserValue = existing && /^[A-Za-z0-9_-]{32,64}$/.test(existing) ? existing : randomBase64Url(32);
        const csrfToken = mintToken("csrf");
        const authorization: AuthorizationRow = {
          id: randomBase64Url(24),
          clientId: verdict.client.id,
          redirectUri: verdict.redirectUri,
          codeChallenge: verdict.codeChallenge,
          clientState: verdict.state ?? null,
          resource: verdict.resource,
          scope: verdict.scope,
          csrfHash: hashToken(csrfToken),
          browserHash: hashToken(browserValue),
          upstreamStateHash: null,
          upstreamVerifierSealed: null,
          createdAt: now,
          expiresAt: now + deps.lifetimes.authorizationMs,
          consumedAt: null,
        };
        await store.createAuthorization(authorization, MAX_PENDING_PER_BROWSER);

        const html = renderConsentPage({
          clientName: verdict.client.name,
          clientId: verdict.client.id,
          metadataHost: isMetadataDocumentId(verdict.client.id) ? new URL(verdict.client.id).host : undefined,
          redirectTarget: describeRedirectTarget(verdict.redirectUri),
          forgejoHost: new URL(config.forgejo.url).host,
          access: describeForgejoScopes(config.forgejo.scopes),
          authorizationId: authorization.id,
          csrfToken,
          formAction: urls.authorization,
        });
        const headers = new Headers(pageHeaders([forgejoOrigin, formActionSource(verdict.redirectUri)]));
        headers.append("Set-Cookie", browserCookie(config.publicUrl, browserValue, Math.ceil(deps.lifetimes.authorizationMs / 1000)));
        return new Response(html, { status: 200, headers });
      },
      {
        query: AuthorizationQuery,
        error({ code }) {
          if (code === "VALIDATION") return badRequest();
        },
      },
    )
    .post(
      "/oauth/authorize",
      async ({ body, request }) => {
        // Sec-Fetch-Site, where sent (every current browser), must say the form came from our own
        // page. Origin alone cannot: our pages' no-referrer policy makes the browser send "null".
        const fetchSite = request.headers.get("sec-fetch-site");
        const origin = request.headers.get("origin");
        const foreign = fetchSite !== null ? fetchSite !== "same-origin" : origin !== null && origin !== "null" && origin !== ourOrigin;
        if (foreign) {
          return htmlPage(403, "Request refused", "This form was submitted from another site.");
        }
        const now = deps.now();
        const authorization = await store.getAuthorization(body.authorization_id, now);
        if (!authorization) {
          return htmlPage(400, "This request has expired", "The sign-in request is no longer valid (it expired or was already answered). Start again from your MCP client.");
        }
        const browserValue = readCookie(request.headers.get("cookie"), cookieName);
        const sameBrowser = browserValue !== undefined && constantTimeEqual(hashToken(browserValue), authorization.browserHash);
        if (!sameBrowser || !constantTimeEqual(hashToken(body.csrf_token), authorization.csrfHash)) {
          logger.warn("consent refused: CSRF check failed", { client_id: authorization.clientId });
          return htmlPage(403, "Request refused", "The form's security token does not match this browser. Start again from your MCP client.");
        }

        if (body.decision === "deny") {
          const denied = await store.consumeAuthorization(authorization.id, now);
          if (!denied) return htmlPage(400, "This request has expired", "The sign-in request was already answered.");
          logger.info("consent denied", { client_id: denied.clientId });
          return redirectToClient(denied.redirectUri, config.publicUrl, {
            error: "access_denied",
            error_description: "The user denied the request",
            state: denied.clientState,
          });
        }

        const upstreamState = mintToken("state");
        const verifier = generateCodeVerifier();
        const sealedVerifier = await deps.sealer.sealUpstreamToken(verifier, `pkce:${authorization.id}`);
        if (!(await store.allowAuthorization(authorization.id, hashToken(upstreamState), sealedVerifier, now))) {
          return htmlPage(400, "This request has expired", "The sign-in request was already answered.");
        }
        logger.info("consent given", { client_id: authorization.clientId });
        return new Response(null, {
          status: 303,
          headers: { Location: deps.forgejo.authorizationUrl(upstreamState, verifier).href, "Cache-Control": "no-store" },
        });
      },
      {
        parse: "urlencoded",
        body: ConsentForm,
        error({ code }) {
          if (code === "VALIDATION" || code === "PARSE") return badRequest();
        },
      },
    );
}

/** What the consent page names as the destination: a host for web clients, the scheme for native apps. */
export function describeRedirectTarget(redirectUri: string): { host: string; note?: string } {
  const url = new URL(redirectUri);
  if (url.protocol === "https:" || url.protocol === "http:") {
    return isLoopbackHost(url.hostname)
      ? { host: url.host, note: "(an application on this computer)" }
      : { host: url.host };
  }
  return { host: "an app on your computer", note: `(${url.protocol})` };
}

// The bearer guard in front of /mcp (RFC 6750, RFC 9728, RFC 8707): a token only from the
// Authorization header, live, and issued for this resource; on success the route gets the identity.
import { Elysia } from "elysia";
import type { BrokerConfig } from "../../config.ts";
import { hashToken } from "../../crypto.ts";
import { hasQueryParam } from "../../http/request-path.ts";
import type { Store, TokenIdentity } from "../../store/store.ts";
import { endpoints } from "../deps.ts";
import { BearerTokenError } from "../errors.ts";
import { AccessIdentityCache } from "../identity-cache.ts";
import { REQUIRED_SCOPES } from "../scope.ts";

/** RFC 6750 §2.1's credentials (scheme case-insensitive per RFC 9110 §11.1); undefined when malformed. */
export function bearerFromAuthorization(header: string | undefined): string | undefined {
  const match = /^bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(header ?? "");
  return match?.[1];
}

export interface BearerCheck {
  /** The query string carried a token: refused whatever else the request has. */
  tokenInQuery: boolean;
  token: string | undefined;
  /** An Authorization header was present but not a well-formed bearer credential. */
  malformed: boolean;
}

/**
 * What a request offers as a bearer credential, read with the strict grammar alone. Not
 * @elysiajs/bearer: it takes whatever follows "Bearer" and one character (`Bearer a b` → "a b",
 * `BearerX abc` → "X abc", case-sensitively) and also reads ?access_token=, which RFC 9700 forbids.
 */
export function bearerCheckOf(url: string, authorization: string | undefined): BearerCheck {
  if (hasQueryParam(url, "access_token")) return { tokenInQuery: true, token: undefined, malformed: false };
  const token = bearerFromAuthorization(authorization);
  return { tokenInQuery: false, token, malformed: authorization !== undefined && token === undefined };
}

export interface BearerDeps {
  config: BrokerConfig;
  /** Only what the guard asks: the identity behind a token hash, and whether anything was revoked since. */
  store: Pick<Store, "findAccessIdentity" | "revocationCount">;
  now: () => number;
  /** The cache the broker also tells of revocations on other replicas; one of the guard's own otherwise. */
  identities?: AccessIdentityCache;
}

/** What every refusal's WWW-Authenticate names: where to discover sign-in, and the scopes to ask for (never offline_access). */
export function bearerChallengeFor(publicUrl: string) {
  return { resourceMetadataUrl: endpoints(publicUrl).protectedResourceMetadata, scope: REQUIRED_SCOPES.join(" ") };
}

export async function authenticateBearer(
  check: BearerCheck,
  deps: Pick<BearerDeps, "config" | "now"> & { identities: Pick<AccessIdentityCache, "lookup"> },
  challenge: ReturnType<typeof bearerChallengeFor>,
): Promise<TokenIdentity> {
  if (check.tokenInQuery) {
    throw new BearerTokenError("invalid_request", "Access tokens are accepted only in the Authorization header, never in the query string", challenge);
  }
  if (check.malformed) throw new BearerTokenError("invalid_request", "The Authorization header is not a Bearer token", challenge);
  if (check.token === undefined) throw new BearerTokenError(null, "Sign-in required: send an access token in the Authorization header", challenge);
  const identity = await deps.identities.lookup(hashToken(check.token), deps.now());
  if (!identity) throw new BearerTokenError("invalid_token", "The access token is unknown, expired or revoked", challenge);
  if (identity.resource !== deps.config.resourceUrl) {
    throw new BearerTokenError("invalid_token", `The access token was not issued for ${deps.config.resourceUrl}`, challenge);
  }
  // RFC 6750 §3.1: one challenge naming every scope the request needs, so a client can ask for them all at once.
  if (REQUIRED_SCOPES.some((scope) => !identity.scopes.includes(scope))) {
    throw new BearerTokenError("insufficient_scope", `The access token lacks a scope this endpoint needs: ${REQUIRED_SCOPES.join(" ")}`, {
      ...challenge,
      scope: REQUIRED_SCOPES.join(" "),
    });
  }
  return identity;
}

/** Mount protected routes after this plugin; they receive `identity`. */
export function bearerGuard(deps: BearerDeps) {
  const challenge = bearerChallengeFor(deps.config.publicUrl);
  const checked = { config: deps.config, now: deps.now, identities: deps.identities ?? new AccessIdentityCache(deps.store) };
  return new Elysia({ name: "bearer-guard" }).resolve({ as: "scoped" }, async ({ request, headers }) => ({
    identity: await authenticateBearer(bearerCheckOf(request.url, headers.authorization), checked, challenge),
  }));
}

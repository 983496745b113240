// The token endpoint (RFC 6749 §4.1.3, §6): authenticates the client, hands a code or refresh token
// to the store's exchange with a freshly minted pair (the store keeps only hashes), renders the answer.
import { Elysia, t } from "elysia";
import { hashToken, mintToken } from "../../crypto.ts";
import type { ClientRow, Exchange, NewTokenHashes } from "../../store/store.ts";
import { authenticateClient, presentedClientCredentials } from "../client-auth.ts";
import type { GrantType } from "../../observability/metrics.ts";
import type { OAuthDeps } from "../deps.ts";
import { isMetadataDocumentId } from "../client-metadata-document.ts";
import { InvalidClientError, InvalidRequestError, OAuthError, UnsupportedGrantTypeError } from "../errors.ts";
import { canonicalResource } from "../resource.ts";
import { oauthErrorHook, requireFormBody } from "./json-errors.ts";
import { optionalParam } from "./params.ts";

export const TokenRequest = t.Object(
  {
    grant_type: optionalParam,
    code: optionalParam,
    code_verifier: optionalParam,
    redirect_uri: optionalParam,
    refresh_token: optionalParam,
    scope: optionalParam,
    resource: optionalParam,
    client_id: optionalParam,
    client_secret: optionalParam,
  },
  { additionalProperties: true },
);

type TokenInput = typeof TokenRequest.static;

export interface TokenResponse {
  access_token: string;
  token_type: "Bearer";
  expires_in: number;
  /** Only for clients that registered the refresh_token grant. */
  refresh_token?: string;
  scope: string;
}

const REPLAY_WARNINGS = {
  family: "authorization code replayed; the tokens it was exchanged for are revoked",
  grant: "rotated refresh token replayed after the grace window; the grant is revoked",
} as const;

export function tokenRoutes(deps: OAuthDeps) {
  const { store, lifetimes, logger } = deps;
  const resourceOf = (body: TokenInput) => canonicalResource(body.resource, deps.config.resourceUrl);

  /** Mints a pair, lets the store's exchange decide what of it is issued, and renders the answer. */
  const exchange = async (client: ClientRow, grantType: GrantType, spend: (tokens: NewTokenHashes, now: number) => Promise<Exchange>): Promise<TokenResponse> => {
    const now = deps.now();
    const accessToken = mintToken("at");
    const refreshToken = mintToken("rt");
    const outcome = await spend(
      {
        accessTokenHash: hashToken(accessToken),
        accessExpiresAt: now + lifetimes.accessTokenMs,
        refreshTokenHash: hashToken(refreshToken),
        refreshExpiresAt: now + lifetimes.refreshTokenMs,
      },
      now,
    );
    if (!outcome.ok) {
      if (outcome.revoked) {
        logger.warn(REPLAY_WARNINGS[outcome.revoked], { client_id: client.id });
        deps.metrics?.tokenReuseDetected(grantType);
      }
      throw new OAuthError(outcome.error, outcome.description);
    }
    deps.metrics?.tokenIssued(grantType);
    return {
      access_token: accessToken,
      token_type: "Bearer",
      expires_in: Math.floor(lifetimes.accessTokenMs / 1000),
      ...(outcome.refreshIssued ? { refresh_token: refreshToken } : {}),
      scope: outcome.scope,
    };
  };

  const redeemCode = (client: ClientRow, body: TokenInput): Promise<TokenResponse> => {
    const { code, code_verifier } = body;
    if (!code) throw new InvalidRequestError("code is required");
    if (!code_verifier) throw new InvalidRequestError("code_verifier is required (PKCE)");
    return exchange(client, "authorization_code", (tokens, now) =>
      store.exchangeCode({ client, codeHash: hashToken(code), codeVerifier: code_verifier, redirectUri: body.redirect_uri, resource: resourceOf(body), tokens, now }),
    );
  };

  const rotate = (client: ClientRow, body: TokenInput): Promise<TokenResponse> => {
    const { refresh_token } = body;
    if (!refresh_token) throw new InvalidRequestError("refresh_token is required");
    return exchange(client, "refresh_token", (tokens, now) =>
      store.exchangeRefresh({
        client,
        refreshTokenHash: hashToken(refresh_token),
        scope: body.scope,
        resource: resourceOf(body),
        tokens,
        now,
        graceMs: lifetimes.refreshReuseGraceMs,
      }),
    );
  };

  return new Elysia({ name: "oauth-token" }).post(
    "/oauth/token",
    async ({ body, request, set }) => {
      requireFormBody(request);
      const presented = presentedClientCredentials(request.headers.get("authorization") ?? undefined, body);
      // A document client is looked up again (from the cache, mostly), so its row follows its document. When the
      // document cannot be fetched, a client the broker already knows goes on with what it last said: a passing
      // outage of the client's site must not end its users' sign-ins (the SDK drops its tokens on invalid_client).
      if (isMetadataDocumentId(presented.clientId)) {
        const found = await deps.clients.find(presented.clientId);
        if (!found.ok && (await store.getClient(presented.clientId)) === undefined) {
          throw new InvalidClientError(found.kind === "document" ? `The client_id URL ${found.reason}` : "Client authentication failed");
        }
      }
      const client = await authenticateClient(store, presented);
      if (!body.grant_type) throw new InvalidRequestError("grant_type is required");
      let response: TokenResponse;
      if (body.grant_type === "authorization_code") {
        response = await redeemCode(client, body);
      } else if (body.grant_type === "refresh_token") {
        response = await rotate(client, body);
      } else {
        throw new UnsupportedGrantTypeError(`grant_type ${body.grant_type} is not supported`);
      }
      set.headers["cache-control"] = "no-store";
      set.headers["pragma"] = "no-cache";
      return response;
    },
    {
      parse: "urlencoded",
      body: TokenRequest,
      error: oauthErrorHook((description) => new InvalidRequestError(description), "The body must be application/x-www-form-urlencoded"),
    },
  );
}

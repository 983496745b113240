// The token endpoint (RFC 6749 §4.1.3, §6): redeems authorization codes with PKCE and rotates
// refresh tokens, minting opaque prefixed tokens of which the store keeps only hashes.
import { Elysia, t } from "elysia";
import { hashToken, mintToken } from "../../crypto.ts";
import type { ClientRow } from "../../store/store.ts";
import { authenticateClient, presentedClientCredentials } from "../client-auth.ts";
import type { OAuthDeps } from "../deps.ts";
import {
  InvalidGrantError,
  InvalidRequestError,
  InvalidScopeError,
  InvalidTargetError,
  UnauthorizedClientError,
  UnsupportedGrantTypeError,
} from "../errors.ts";
import { verifyS256 } from "../pkce.ts";
import { narrowScope } from "../scope.ts";
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
  refresh_token: string;
  scope: string;
}

export function tokenRoutes(deps: OAuthDeps) {
  const { store, config, lifetimes, logger } = deps;

  const issue = (grant: { grantId: string; familyId: string; clientId: string; resource: string; scope: string }): TokenResponse => {
    const now = deps.now();
    const accessToken = mintToken("at");
    const refreshToken = mintToken("rt");
    store.insertTokenPair(
      {
        ...grant,
        accessTokenHash: hashToken(accessToken),
        accessExpiresAt: now + lifetimes.accessTokenMs,
        refreshTokenHash: hashToken(refreshToken),
        refreshExpiresAt: now + lifetimes.refreshTokenMs,
      },
      now,
    );
    return {
      access_token: accessToken,
      token_type: "Bearer",
      expires_in: Math.floor(lifetimes.accessTokenMs / 1000),
      refresh_token: refreshToken,
      scope: grant.scope,
    };
  };

  const checkResource = (resource: string | undefined) => {
    if (resource !== undefined && resource !== config.resourceUrl) throw new InvalidTargetError(`resource must be ${config.resourceUrl}`);
  };

  const requireGrantType = (client: ClientRow, grantType: string) => {
    const allowed = (client.metadata.grant_types as string[] | undefined) ?? ["authorization_code", "refresh_token"];
    if (!allowed.includes(grantType)) throw new UnauthorizedClientError(`This client did not register the ${grantType} grant type`);
  };

  const redeemCode = (client: ClientRow, body: TokenInput): TokenResponse => {
    if (!body.code) throw new InvalidRequestError("code is required");
    if (!body.code_verifier) throw new InvalidRequestError("code_verifier is required (PKCE)");
    checkResource(body.resource);
    const redemption = store.redeemAuthCode(hashToken(body.code), deps.now());
    if (redemption.status === "replayed") {
      logger.warn("authorization code replayed; its tokens are revoked", { client_id: client.id });
      throw new InvalidGrantError("The authorization code was already used");
    }
    if (redemption.status !== "redeemed") throw new InvalidGrantError("The authorization code is invalid or expired");
    const code = redemption.code;
    if (code.clientId !== client.id) throw new InvalidGrantError("The authorization code was issued to another client");
    if (body.redirect_uri !== undefined && body.redirect_uri !== code.redirectUri) {
      throw new InvalidGrantError("redirect_uri does not match the authorization request");
    }
    if (!verifyS256(body.code_verifier, code.codeChallenge)) throw new InvalidGrantError("code_verifier does not match the code_challenge");
    if (body.resource !== undefined && body.resource !== code.resource) throw new InvalidTargetError("resource differs from the authorization request");
    return issue({ grantId: code.grantId, familyId: code.familyId, clientId: client.id, resource: code.resource, scope: code.scope });
  };

  const rotate = (client: ClientRow, body: TokenInput): TokenResponse => {
    if (!body.refresh_token) throw new InvalidRequestError("refresh_token is required");
    checkResource(body.resource);
    const rotation = store.rotateRefreshToken(hashToken(body.refresh_token), client.id, deps.now(), lifetimes.refreshReuseGraceMs);
    if (rotation.status === "replayed") {
      if (rotation.grantRevoked) logger.warn("rotated refresh token replayed; grant revoked", { client_id: client.id });
      throw new InvalidGrantError("The refresh token was already used");
    }
    if (rotation.status !== "rotated") throw new InvalidGrantError("The refresh token is invalid, expired or revoked");
    const previous = rotation.token;
    const scope = narrowScope(previous.scope, body.scope);
    if (!scope.ok) throw new InvalidScopeError(scope.reason);
    return issue({ grantId: previous.grantId, familyId: previous.familyId, clientId: client.id, resource: previous.resource, scope: scope.scope });
  };

  return new Elysia({ name: "oauth-token" }).post(
    "/oauth/token",
    ({ body, request, set }) => {
      requireFormBody(request);
      const client = authenticateClient(store, presentedClientCredentials(request.headers.get("authorization") ?? undefined, body));
      if (!body.grant_type) throw new InvalidRequestError("grant_type is required");
      let response: TokenResponse;
      if (body.grant_type === "authorization_code") {
        requireGrantType(client, "authorization_code");
        response = redeemCode(client, body);
      } else if (body.grant_type === "refresh_token") {
        requireGrantType(client, "refresh_token");
        response = rotate(client, body);
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

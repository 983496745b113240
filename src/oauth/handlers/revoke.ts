// RFC 7009 token revocation: an authenticated client revokes one of its access or refresh
// tokens; unknown tokens get 200 too, so the endpoint reveals nothing about what exists.
import { Elysia, t } from "elysia";
import { hashToken } from "../../crypto.ts";
import { authenticateClient, presentedClientCredentials } from "../client-auth.ts";
import type { OAuthDeps } from "../deps.ts";
import { InvalidRequestError } from "../errors.ts";
import { oauthErrorHook, requireFormBody } from "./json-errors.ts";
import { optionalParam } from "./params.ts";

export const RevocationRequest = t.Object(
  { token: optionalParam, token_type_hint: optionalParam, client_id: optionalParam, client_secret: optionalParam },
  { additionalProperties: true },
);

export function revokeRoutes(deps: OAuthDeps) {
  return new Elysia({ name: "oauth-revoke" }).post(
    "/oauth/revoke",
    async ({ body, request }) => {
      requireFormBody(request);
      const client = await authenticateClient(deps.store, presentedClientCredentials(request.headers.get("authorization") ?? undefined, body));
      if (!body.token) throw new InvalidRequestError("token is required");
      const revoked = await deps.store.revokeToken(hashToken(body.token), client.id, deps.now());
      if (revoked !== "unknown") deps.logger.info("token revoked", { client_id: client.id, kind: revoked });
      return new Response(null, { status: 200, headers: { "Cache-Control": "no-store" } });
    },
    {
      parse: "urlencoded",
      body: RevocationRequest,
      error: oauthErrorHook((description) => new InvalidRequestError(description), "The body must be application/x-www-form-urlencoded"),
    },
  );
}

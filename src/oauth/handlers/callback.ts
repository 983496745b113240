// Forgejo's redirect back to us: match our single-use state to the browser that consented,
// exchange Forgejo's code, keep the user's one upstream credential, and hand the client its code.
import { Elysia, t } from "elysia";
import { constantTimeEqual, hashToken, mintToken, randomBase64Url } from "../../crypto.ts";
import { UpstreamRefusedError } from "../../upstream/forgejo.ts";
import type { OAuthDeps } from "../deps.ts";
import { browserCookieName, htmlPage, readCookie, redirectToClient } from "./authorize.ts";
import { optionalParam } from "./params.ts";

export const CallbackQuery = t.Object(
  { code: optionalParam, state: optionalParam, error: optionalParam, error_description: optionalParam },
  { additionalProperties: true },
);

export function callbackRoutes(deps: OAuthDeps) {
  const { config, store, logger } = deps;
  const cookieName = browserCookieName(config.publicUrl);
  const restart = "Start again from your MCP client.";

  return new Elysia({ name: "oauth-callback" }).get(
    "/oauth/callback",
    async ({ query, request }) => {
      if (!query.state) return htmlPage(400, "Invalid sign-in response", `Forgejo's response has no state. ${restart}`);
      const now = deps.now();
      const authorization = await store.consumeAuthorizationByUpstreamState(hashToken(query.state), now);
      if (!authorization) {
        return htmlPage(400, "This sign-in has expired", `This sign-in link has expired or was already used. ${restart}`);
      }
      const browserValue = readCookie(request.headers.get("cookie"), cookieName);
      if (browserValue === undefined || !constantTimeEqual(hashToken(browserValue), authorization.browserHash)) {
        logger.warn("callback refused: not the browser that consented", { client_id: authorization.clientId });
        return htmlPage(403, "Sign-in refused", `This sign-in was started in another browser. ${restart}`);
      }
      const toClient = (params: Record<string, string>) =>
        redirectToClient(authorization.redirectUri, config.publicUrl, { ...params, state: authorization.clientState });

      if (query.error !== undefined || !query.code) {
        const denied = query.error === "access_denied";
        logger.info("forgejo did not authorize", { client_id: authorization.clientId, upstream_error: query.error ?? "no code" });
        return toClient({
          error: denied ? "access_denied" : "server_error",
          error_description: denied ? "The user denied access on Forgejo" : `Forgejo did not authorize: ${query.error ?? "no code returned"}`,
        });
      }

      try {
        const verifier = await deps.sealer.unsealUpstreamToken(authorization.upstreamVerifierSealed!, `pkce:${authorization.id}`);
        const tokens = await deps.forgejo.exchangeCode(query.code, verifier);
        const user = await deps.forgejo.fetchUser(tokens.accessToken);
        await deps.credentials.saveFromSignIn(user, tokens);
        const grant = await store.findOrCreateGrant({
          id: randomBase64Url(18),
          clientId: authorization.clientId,
          forgejoUserId: user.id,
          forgejoLogin: user.login,
          scope: authorization.scope,
          now,
        });
        const code = mintToken("code");
        await store.createAuthCode({
          codeHash: hashToken(code),
          grantId: grant.id,
          clientId: authorization.clientId,
          redirectUri: authorization.redirectUri,
          codeChallenge: authorization.codeChallenge,
          resource: authorization.resource,
          scope: authorization.scope,
          familyId: randomBase64Url(18),
          expiresAt: now + deps.lifetimes.authCodeMs,
          usedAt: null,
        });
        logger.info("signed in", { client_id: authorization.clientId, forgejo_user: user.login });
        return toClient({ code });
      } catch (error) {
        const refused = error instanceof UpstreamRefusedError;
        logger.error("forgejo sign-in failed", { client_id: authorization.clientId, refused, error: error instanceof Error ? error.message : String(error) });
        return toClient(
          refused
            ? { error: "access_denied", error_description: "Forgejo refused the sign-in; ask the broker's operator to check its Forgejo application" }
            : { error: "temporarily_unavailable", error_description: "Forgejo could not be reached; try again in a moment" },
        );
      }
    },
    {
      query: CallbackQuery,
      error({ code }) {
        if (code === "VALIDATION") return htmlPage(400, "Invalid sign-in response", `Forgejo's response is malformed. ${restart}`);
      },
    },
  );
}

// RFC 7591 dynamic client registration: checks the metadata, stores the client (a confidential
// client's secret only as a hash) and echoes the registered metadata with the credentials once.
import { Elysia, t } from "elysia";
import { hashToken, mintToken, randomBase64Url } from "../../crypto.ts";
import { CLIENT_AUTH_METHODS, type ClientAuthMethod } from "../client-auth.ts";
import type { OAuthDeps } from "../deps.ts";
import { InvalidClientMetadataError, InvalidRedirectUriError } from "../errors.ts";
import { applicationTypeProblem, checkRedirectUri } from "../redirect-uri.ts";
import { oauthErrorHook } from "./json-errors.ts";
import { grantedScope } from "../scope.ts";

const GRANT_TYPES = ["authorization_code", "refresh_token"];
const MAX_REDIRECT_URIS = 20;

const optionalString = t.Optional(t.String({ maxLength: 2000 }));

export const RegistrationRequest = t.Object(
  {
    redirect_uris: t.Optional(t.Unknown()),
    token_endpoint_auth_method: optionalString,
    grant_types: t.Optional(t.Unknown()),
    response_types: t.Optional(t.Unknown()),
    client_name: optionalString,
    client_uri: optionalString,
    logo_uri: optionalString,
    tos_uri: optionalString,
    policy_uri: optionalString,
    scope: optionalString,
    contacts: t.Optional(t.Array(t.String({ maxLength: 320 }), { maxItems: 10 })),
    software_id: optionalString,
    software_version: optionalString,
    application_type: optionalString,
  },
  { additionalProperties: true },
);

export type RegistrationInput = typeof RegistrationRequest.static;

/** More top-level fields than any real client sends; a body past this is not client metadata. */
export const MAX_METADATA_FIELDS = 50;

/** An https URL is shown or linked safely; anything else (data:, javascript:, http:) is dropped, not refused. */
const safeUrl = (value: string | undefined) => (value !== undefined && /^https:\/\/[^\s]+$/i.test(value) && URL.canParse(value) ? value : undefined);

/**
 * The metadata to store and echo, or the RFC 7591 error that says what is wrong with it. Liberal where
 * the server may choose (RFC 7591 §3.2.1): grant types and scopes it does not serve are dropped, unsafe URLs ignored.
 */
export function validateRegistration(input: RegistrationInput) {
  if (Object.keys(input).length > MAX_METADATA_FIELDS) throw new InvalidClientMetadataError(`at most ${MAX_METADATA_FIELDS} metadata fields`);
  const uris = input.redirect_uris;
  if (!Array.isArray(uris) || uris.length === 0 || !uris.every((u) => typeof u === "string")) {
    throw new InvalidRedirectUriError("redirect_uris must be a non-empty array of strings");
  }
  if (uris.length > MAX_REDIRECT_URIS) throw new InvalidRedirectUriError(`at most ${MAX_REDIRECT_URIS} redirect_uris`);
  for (const uri of uris as string[]) {
    const verdict = checkRedirectUri(uri);
    if (!verdict.ok) throw new InvalidRedirectUriError(`redirect_uri ${JSON.stringify(uri.slice(0, 200))} ${verdict.reason}`);
  }
  const applicationType = input.application_type;
  if (applicationType !== undefined) {
    if (applicationType !== "web" && applicationType !== "native") throw new InvalidClientMetadataError("application_type must be web or native");
    const problem = applicationTypeProblem(applicationType, uris as string[]);
    if (problem !== undefined) throw new InvalidRedirectUriError(problem);
  }

  const method = input.token_endpoint_auth_method ?? "client_secret_basic";
  if (!(CLIENT_AUTH_METHODS as readonly string[]).includes(method)) {
    throw new InvalidClientMetadataError(`token_endpoint_auth_method must be one of ${CLIENT_AUTH_METHODS.join(", ")}`);
  }

  const requestedGrants = input.grant_types ?? ["authorization_code", "refresh_token"];
  if (!Array.isArray(requestedGrants) || !requestedGrants.every((g) => typeof g === "string")) {
    throw new InvalidClientMetadataError("grant_types must be an array of strings");
  }
  if (!requestedGrants.includes("authorization_code")) {
    throw new InvalidClientMetadataError("grant_types must include authorization_code");
  }
  const grantTypes = GRANT_TYPES.filter((grant) => requestedGrants.includes(grant));
  const responseTypes = input.response_types ?? ["code"];
  if (!Array.isArray(responseTypes) || !responseTypes.includes("code")) {
    throw new InvalidClientMetadataError('response_types must include "code"');
  }

  const name = (input.client_name ?? "").trim();
  return {
    method: method as ClientAuthMethod,
    metadata: {
      redirect_uris: uris as string[],
      token_endpoint_auth_method: method,
      grant_types: grantTypes,
      response_types: ["code"],
      application_type: applicationType,
      client_name: name === "" ? undefined : name,
      client_uri: safeUrl(input.client_uri),
      logo_uri: safeUrl(input.logo_uri),
      tos_uri: safeUrl(input.tos_uri),
      policy_uri: safeUrl(input.policy_uri),
      scope: input.scope === undefined ? undefined : grantedScope(input.scope),
      contacts: input.contacts,
      software_id: input.software_id,
      software_version: input.software_version,
    },
  };
}

export function registerRoutes(deps: OAuthDeps) {
  return new Elysia({ name: "oauth-register" }).post(
    "/oauth/register",
    async ({ body, set }) => {
      const { method, metadata } = validateRegistration(body);
      const now = deps.now();
      const clientId = `fmb_client_${randomBase64Url(18)}`;
      const clientSecret = method === "none" ? undefined : mintToken("cs");
      await deps.store.createClient({
        id: clientId,
        secretHash: clientSecret === undefined ? null : hashToken(clientSecret),
        tokenEndpointAuthMethod: method,
        name: metadata.client_name ?? clientId,
        redirectUris: metadata.redirect_uris,
        metadata,
        createdAt: now,
      });
      deps.logger.info("client registered", { client_id: clientId, auth_method: method });
      set.status = 201;
      set.headers["cache-control"] = "no-store";
      return {
        client_id: clientId,
        client_id_issued_at: Math.floor(now / 1000),
        ...(clientSecret === undefined ? {} : { client_secret: clientSecret, client_secret_expires_at: 0 }),
        ...metadata,
      };
    },
    {
      parse: "json",
      body: RegistrationRequest,
      error: oauthErrorHook((description) => new InvalidClientMetadataError(description), "The body must be a JSON object"),
    },
  );
}

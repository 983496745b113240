// Discovery documents: RFC 8414 authorization-server metadata (also served as openid-configuration)
// and RFC 9728 protected-resource metadata, both built from BROKER_PUBLIC_URL, never the Host header.
import { Elysia } from "elysia";
import type { BrokerConfig } from "../../config.ts";
import { CLIENT_AUTH_METHODS } from "../client-auth.ts";
import { endpoints } from "../deps.ts";
import { SUPPORTED_SCOPES } from "../scope.ts";

export function authorizationServerMetadata(config: BrokerConfig) {
  const urls = endpoints(config.publicUrl);
  return {
    issuer: config.publicUrl,
    authorization_endpoint: urls.authorization,
    token_endpoint: urls.token,
    registration_endpoint: urls.registration,
    revocation_endpoint: urls.revocation,
    scopes_supported: [...SUPPORTED_SCOPES],
    response_types_supported: ["code"],
    response_modes_supported: ["query"],
    grant_types_supported: ["authorization_code", "refresh_token"],
    token_endpoint_auth_methods_supported: [...CLIENT_AUTH_METHODS],
    revocation_endpoint_auth_methods_supported: [...CLIENT_AUTH_METHODS],
    code_challenge_methods_supported: ["S256"],
    authorization_response_iss_parameter_supported: true,
    client_id_metadata_document_supported: true,
  };
}

export function protectedResourceMetadata(config: BrokerConfig) {
  return {
    resource: config.resourceUrl,
    authorization_servers: [config.publicUrl],
    scopes_supported: [...SUPPORTED_SCOPES],
    bearer_methods_supported: ["header"],
    resource_name: "Forgejo MCP broker",
  };
}

export function metadataRoutes(config: BrokerConfig) {
  const as = JSON.stringify(authorizationServerMetadata(config));
  const prm = JSON.stringify(protectedResourceMetadata(config));
  // Discovery is public and read by browser-based clients, so it is served with CORS open.
  const headers = { "Content-Type": "application/json", "Access-Control-Allow-Origin": "*", "Cache-Control": "public, max-age=300" };
  const serve = (body: string) => () => new Response(body, { headers });
  return new Elysia({ name: "oauth-metadata" })
    .get("/.well-known/oauth-authorization-server", serve(as))
    .get("/.well-known/openid-configuration", serve(as))
    .get("/.well-known/oauth-protected-resource", serve(prm))
    .get("/.well-known/oauth-protected-resource/mcp", serve(prm));
}

// Authenticates the client at the token and revocation endpoints the way it registered:
// `none` (client_id only), `client_secret_basic` (RFC 6749 §2.3.1) or `client_secret_post`.
import { constantTimeEqual, hashToken } from "../crypto.ts";
import type { ClientRow, Store } from "../store/store.ts";
import { InvalidClientError, InvalidRequestError } from "./errors.ts";

/** What registration accepts and discovery advertises, for the token and revocation endpoints alike. */
export const CLIENT_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"] as const;
export type ClientAuthMethod = (typeof CLIENT_AUTH_METHODS)[number];

export interface PresentedClientCredentials {
  clientId: string;
  clientSecret?: string;
  method: ClientAuthMethod;
}

/**
 * The client credentials in an `Authorization: Basic` header: undefined when the header is not Basic,
 * "malformed" when it is but cannot be decoded. RFC 6749 §2.3.1: both parts are form-urlencoded.
 */
export function parseBasicCredentials(authorization: string | undefined): { clientId: string; clientSecret: string } | "malformed" | undefined {
  const basic = /^basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(authorization ?? "");
  if (!basic) return undefined;
  const decoded = Buffer.from(basic[1]!, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon < 0) return "malformed";
  const clientId = decodeFormComponent(decoded.slice(0, colon));
  const clientSecret = decodeFormComponent(decoded.slice(colon + 1));
  return clientId === null || clientSecret === null ? "malformed" : { clientId, clientSecret };
}

/** Reads the client's credentials from an Authorization: Basic header or the form body. */
export function presentedClientCredentials(
  authorization: string | undefined,
  body: { client_id?: string; client_secret?: string },
): PresentedClientCredentials {
  const basic = parseBasicCredentials(authorization);
  if (basic === "malformed") throw new InvalidClientError("Malformed HTTP Basic client credentials", true);
  if (basic) {
    if (body.client_id !== undefined && body.client_id !== basic.clientId) {
      throw new InvalidRequestError("client_id in the body differs from the one in the Authorization header");
    }
    return { ...basic, method: "client_secret_basic" };
  }
  if (body.client_id === undefined || body.client_id === "") throw new InvalidClientError("client_id is required");
  if (body.client_secret !== undefined) return { clientId: body.client_id, clientSecret: body.client_secret, method: "client_secret_post" };
  return { clientId: body.client_id, method: "none" };
}

function decodeFormComponent(value: string): string | null {
  try {
    return decodeURIComponent(value.replace(/\+/g, " "));
  } catch {
    return null;
  }
}

/**
 * The registered client the credentials prove, or invalid_client. An unknown client, a wrong secret
 * and a wrong method get one answer, so the endpoint does not tell a stranger which client ids exist.
 */
export async function authenticateClient(store: Pick<Store, "getClient">, presented: PresentedClientCredentials): Promise<ClientRow> {
  const client = await store.getClient(presented.clientId);
  const proven =
    client !== undefined &&
    client.tokenEndpointAuthMethod === presented.method &&
    (client.secretHash === null || (presented.clientSecret !== undefined && constantTimeEqual(hashToken(presented.clientSecret), client.secretHash)));
  if (!proven) throw new InvalidClientError("Client authentication failed", presented.method === "client_secret_basic");
  return client;
}

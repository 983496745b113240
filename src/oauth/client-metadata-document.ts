// The rules of Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document): which
// client_id is a document URL, and whether a fetched document is client metadata the broker accepts.
import { OAuthError } from "./errors.ts";
import { validateRegistration, type RegistrationInput } from "./handlers/register.ts";

/** A client_id that names a document rather than a registration: registered ids never look like URLs. */
export function isMetadataDocumentId(clientId: string): boolean {
  return /^https?:\/\//i.test(clientId);
}

/** Why a client_id URL breaks the draft's §3 rules, or undefined when it keeps them. */
export function clientIdUrlProblem(raw: string): string | undefined {
  if (raw.length > 2000) return "is longer than 2000 characters";
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return "is not a URL";
  }
  if (url.username || url.password) return "must not carry credentials";
  if (raw.includes("#")) return "must not have a fragment";
  if (url.pathname === "/" || url.pathname === "") return "must have a path";
  // URL() removes dot segments, so they are looked for in what the client sent.
  const rawPath = raw.replace(/^[a-z]+:\/\/[^/?]*/i, "").split("?")[0]!;
  if (rawPath.split("/").some((segment) => segment === "." || segment === ".." || /^%2e%2e?$/i.test(segment) || /^\.%2e$|^%2e\.$/i.test(segment))) {
    return "must not have . or .. path segments";
  }
  return undefined;
}

export interface DocumentClient {
  name: string;
  redirectUris: string[];
  /** The metadata as the broker keeps it, for the client row. */
  metadata: Record<string, unknown>;
}

export type DocumentVerdict = { ok: true; client: DocumentClient } | { ok: false; reason: string };

const STRING_FIELDS = ["token_endpoint_auth_method", "client_name", "client_uri", "logo_uri", "tos_uri", "policy_uri", "scope", "software_id", "software_version", "application_type"];

/** Whether a fetched document is client metadata for exactly this URL, by the rules registration applies. */
export function validateMetadataDocument(url: string, body: unknown): DocumentVerdict {
  if (typeof body !== "object" || body === null || Array.isArray(body)) return { ok: false, reason: "serves a document that is not a JSON object" };
  const doc = body as Record<string, unknown>;
  if (doc.client_id !== url) return { ok: false, reason: "serves a document whose client_id is not exactly this URL" };
  for (const field of STRING_FIELDS) {
    const value = doc[field];
    if (value !== undefined && (typeof value !== "string" || value.length > 2000)) return { ok: false, reason: `serves a document whose ${field} is not a string of at most 2000 characters` };
  }
  if (doc.client_secret !== undefined || doc.client_secret_expires_at !== undefined) return { ok: false, reason: "serves a document with a client_secret, which a public client must not have" };
  const method = doc.token_endpoint_auth_method ?? "none";
  if (method !== "none") return { ok: false, reason: "serves a document whose token_endpoint_auth_method is not none (the broker does not take private_key_jwt)" };
  const contacts = doc.contacts;
  const input = { ...doc, contacts: Array.isArray(contacts) && contacts.every((c) => typeof c === "string") ? contacts : undefined, token_endpoint_auth_method: "none" } as RegistrationInput;
  try {
    const { metadata } = validateRegistration(input);
    return { ok: true, client: { name: metadata.client_name ?? new URL(url).host, redirectUris: metadata.redirect_uris, metadata: { ...metadata, client_id: url } } };
  } catch (error) {
    if (error instanceof OAuthError) return { ok: false, reason: `serves a document that is not valid client metadata: ${error.description}` };
    throw error;
  }
}

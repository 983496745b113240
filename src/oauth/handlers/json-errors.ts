// The error hook the JSON OAuth endpoints share: typed OAuth errors render themselves, and
// Elysia's parse and validation failures become the endpoint's own OAuth error code.
import { InvalidRequestError, OAuthError } from "../errors.ts";

/** Elysia's validation error as one short sentence naming the offending field. */
export function describeValidation(error: unknown): string {
  const detail = (error as { valueError?: { path: string; message: string } }).valueError;
  if (!detail) return "The request does not match the expected shape";
  const field = detail.path.replace(/^\//, "").replace(/\//g, ".") || "body";
  return `${field}: ${detail.message}`;
}

/** RFC 6749 §3.2 and RFC 7009 §2.1: these endpoints take form-encoded bodies only. */
export function requireFormBody(request: Request): void {
  const type = request.headers.get("content-type")?.split(";")[0]?.trim().toLowerCase();
  if (type !== "application/x-www-form-urlencoded") {
    throw new InvalidRequestError("The body must be application/x-www-form-urlencoded");
  }
}

export function oauthErrorHook(bodyError: (description: string) => OAuthError, unparsable: string) {
  return ({ code, error }: { code: unknown; error: unknown }) => {
    if (error instanceof OAuthError) return error.toResponse();
    if (code === "PARSE") return bodyError(unparsable).toResponse();
    if (code === "VALIDATION") return bodyError(describeValidation(error)).toResponse();
  };
}

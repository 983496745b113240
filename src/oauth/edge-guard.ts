// What an OAuth request must pass before anything reads its body: its endpoint's rate limit, keyed
// on the client's address, and a body of at most 64 KiB, declared or chunked; refused in the endpoint's format.
import { Elysia } from "elysia";
import { readAtMost } from "../http/bounded-body.ts";
import { requestPath } from "../http/request-path.ts";
import type { RateLimitedEndpoint } from "../observability/metrics.ts";
import type { OAuthDeps } from "./deps.ts";
import { TooManyRequestsError } from "./errors.ts";
import { htmlPage, tooManySignIns } from "./handlers/authorize.ts";

/** Far above any registration, token, revocation or consent body; far below what would hurt. */
export const MAX_OAUTH_BODY_BYTES = 64 * 1024;

interface Refusals {
  tooMany(retryAfterS: number): Response;
  tooLarge(): Response;
}

const TOO_LARGE = `The body is larger than ${MAX_OAUTH_BODY_BYTES / 1024} KiB`;

const jsonRefusals: Refusals = {
  tooMany: (retryAfterS) => new TooManyRequestsError(retryAfterS).toResponse(),
  tooLarge: () => Response.json({ error: "invalid_request", error_description: TOO_LARGE }, { status: 413, headers: { "Cache-Control": "no-store" } }),
};

const pageRefusals: Refusals = {
  tooMany: tooManySignIns,
  tooLarge: () => htmlPage(413, "Request too large", `${TOO_LARGE}. Start again from your MCP client.`),
};

/** Each guarded endpoint: its own bucket (so token traffic cannot starve revocation) and its refusal format. */
const GUARDED = new Map<string, { bucket: RateLimitedEndpoint; refusals: Refusals }>([
  ["POST /oauth/register", { bucket: "register", refusals: jsonRefusals }],
  ["POST /oauth/token", { bucket: "token", refusals: jsonRefusals }],
  ["POST /oauth/revoke", { bucket: "revoke", refusals: jsonRefusals }],
  ["GET /oauth/authorize", { bucket: "authorize", refusals: pageRefusals }],
  ["POST /oauth/authorize", { bucket: "consent", refusals: pageRefusals }],
]);

/**
 * Mounted before the OAuth routes. An onRequest hook, because it is the only one Elysia runs
 * before it parses a body (parse comes before transform and beforeHandle).
 */
export function oauthEdgeGuard(
  deps: Pick<OAuthDeps, "rateLimiter" | "sharedRateLimiter" | "clientAddress" | "metrics">,
  /** Sees each refusal: onAfterResponse hooks (the request log) never run for an answer given here. */
  refused: (request: Request, response: Response) => Response,
) {
  return new Elysia({ name: "oauth-edge-guard" }).onRequest(async (ctx) => {
    const { request } = ctx;
    const path = requestPath(request.url);
    if (!path.startsWith("/oauth/")) return;
    const rule = GUARDED.get(`${request.method} ${path}`);
    if (rule === undefined) return;
    const key = `${rule.bucket}:${deps.clientAddress(request)}`;
    const rate = deps.sharedRateLimiter === undefined ? deps.rateLimiter.take(key) : await deps.sharedRateLimiter.take(key);
    if (!rate.allowed) {
      deps.metrics?.rateLimited(rule.bucket);
      return refused(request, rule.refusals.tooMany(rate.retryAfterS));
    }
    if (request.body === null) return;
    const declared = request.headers.get("content-length");
    if (declared !== null) return Number(declared) > MAX_OAUTH_BODY_BYTES ? refused(request, rule.refusals.tooLarge()) : undefined;
    // Chunked: read it here, bounded, and hand the routes a request that carries what was read.
    const body = await readAtMost(request.body, MAX_OAUTH_BODY_BYTES);
    if (body === undefined) return refused(request, rule.refusals.tooLarge());
    (ctx as { request: Request }).request = new Request(request.url, { method: request.method, headers: request.headers, body });
  });
}

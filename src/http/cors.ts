// Which browser origins may call which endpoints (CORS): discovery and the OAuth JSON endpoints
// answer any origin (browser-based MCP clients such as the Inspector), /mcp only allowed origins.
//
// Not @elysiajs/cors: it puts its headers on every response, Origin or not, and a response with
// extra headers is rebuilt by Elysia around a stream (chunked, no Content-Length). On /mcp that cost
// 12–15 µs of CPU per message (bench/README.md). Here a request without Origin is left untouched.
import { Elysia } from "elysia";
import { requestPath } from "./request-path.ts";

const OPEN_POST_PATHS = new Set(["/oauth/register", "/oauth/token", "/oauth/revoke"]);
export const CORS_ALLOWED_HEADERS = "authorization, content-type, accept, mcp-protocol-version, mcp-session-id, last-event-id";
export const CORS_EXPOSED_HEADERS = "mcp-session-id, mcp-protocol-version, www-authenticate, retry-after";
const PREFLIGHT_MAX_AGE_S = "600";

export interface CrossOriginRequest {
  method: string;
  path: string;
  origin: string;
  /** Access-Control-Request-Method: present on a preflight. */
  requestMethod: string | null;
}

export interface CorsAnswer {
  /** A preflight is answered at once, with 204 and these headers. */
  preflight: boolean;
  /** What to add to the response; no Access-Control-Allow-Origin when the origin is not admitted. */
  headers: Record<string, string>;
}

/** Who may call a path cross-origin, and with which methods; null for a path no other origin may read. */
function corsRuleFor(path: string): { methods: string; anyOrigin: boolean } | null {
  if (path.startsWith("/.well-known/")) return { methods: "GET", anyOrigin: true };
  if (OPEN_POST_PATHS.has(path)) return { methods: "POST", anyOrigin: true };
  if (path === "/mcp") return { methods: "GET, POST, DELETE", anyOrigin: false };
  return null;
}

export function corsAnswer(request: CrossOriginRequest, mcpOrigins: ReadonlySet<string>): CorsAnswer {
  const preflight = request.method === "OPTIONS" && request.requestMethod !== null;
  const rule = corsRuleFor(request.path);
  if (rule === null) return { preflight, headers: {} };
  // The answer depends on the caller's origin from here on, so caches must key on it.
  if (!rule.anyOrigin && !mcpOrigins.has(request.origin)) return { preflight, headers: { Vary: "Origin" } };
  const admitted = { "Access-Control-Allow-Origin": request.origin, Vary: "Origin" };
  if (!preflight) return { preflight, headers: { ...admitted, "Access-Control-Expose-Headers": CORS_EXPOSED_HEADERS } };
  return {
    preflight,
    headers: {
      ...admitted,
      "Access-Control-Allow-Methods": rule.methods,
      "Access-Control-Allow-Headers": CORS_ALLOWED_HEADERS,
      "Access-Control-Max-Age": PREFLIGHT_MAX_AGE_S,
    },
  };
}

export function corsPolicy(mcpOrigins: string[]) {
  const allowed = new Set(mcpOrigins);
  return new Elysia({ name: "cors" }).onRequest(({ request, set }) => {
    const origin = request.headers.get("origin");
    if (origin === null) return;
    const answer = corsAnswer(
      { method: request.method, path: requestPath(request.url), origin, requestMethod: request.headers.get("access-control-request-method") },
      allowed,
    );
    if (answer.preflight) return new Response(null, { status: 204, headers: answer.headers });
    Object.assign(set.headers, answer.headers);
  });
}

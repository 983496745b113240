// Which browser origins may call which endpoints: discovery and the OAuth JSON endpoints are open
// to any origin (browser-based MCP clients such as the Inspector), /mcp only to allowed origins.
import { cors } from "@elysiajs/cors";
import { requestPath } from "./request-path.ts";

const OPEN_PATHS = new Set(["/oauth/register", "/oauth/token", "/oauth/revoke"]);

export function corsPolicy(mcpOrigins: string[]) {
  const allowed = new Set(mcpOrigins);
  return cors({
    origin: (request) => {
      const path = requestPath(request.url);
      if (path.startsWith("/.well-known/") || OPEN_PATHS.has(path)) return true;
      const origin = request.headers.get("origin");
      return path === "/mcp" && origin !== null && allowed.has(origin);
    },
    methods: ["GET", "POST", "DELETE", "OPTIONS"],
    allowedHeaders: ["authorization", "content-type", "accept", "mcp-protocol-version", "mcp-session-id", "last-event-id"],
    exposeHeaders: ["mcp-session-id", "mcp-protocol-version", "www-authenticate", "retry-after"],
    credentials: false,
    maxAge: 600,
  });
}

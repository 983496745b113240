// What a legacy child's answer becomes for a modern caller: results gain resultType (and the cache
// hints on lists and resources/read), -32002 becomes -32602, and log notifications respect logLevel.
import { ErrorCode, type JsonRpcMessage } from "../bridge/jsonrpc.ts";

/** What each list and resources/read may be cached for: the child's lists depend on the user, so private and short. */
export const CACHE_TTL_MS = 0;
const CACHEABLE = new Set(["server/discover", "tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"]);
/** The legacy "resource not found", which 2026-07-28 forbids in favour of -32602. */
const LEGACY_RESOURCE_NOT_FOUND = -32002;

/** The cache hints and resultType a complete modern result of `method` carries, over `result`. */
export function completeResult(method: string, result: Record<string, unknown>): Record<string, unknown> {
  const cache = CACHEABLE.has(method) ? { ttlMs: CACHE_TTL_MS, cacheScope: "private" } : {};
  return { ...result, resultType: "complete", ...cache };
}

/** The child's answer to `method`, as the modern caller gets it (the id is already the caller's). */
export function modernAnswer(method: string, answer: JsonRpcMessage): string {
  if ("error" in answer) {
    const error = answer.error as { code?: unknown } | null;
    if (error?.code !== LEGACY_RESOURCE_NOT_FOUND) return JSON.stringify(answer);
    return JSON.stringify({ ...answer, error: { ...error, code: ErrorCode.InvalidParams } });
  }
  const result = answer.result !== null && typeof answer.result === "object" ? (answer.result as Record<string, unknown>) : {};
  return JSON.stringify({ ...answer, result: completeResult(method, result) });
}

/** RFC 5424 severities, lowest first, as MCP's logging names them. */
const LOG_LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

/** Whether a notifications/message at `level` goes to a request that asked for `wanted` (null: asked for none). */
export function logWanted(level: unknown, wanted: unknown): boolean {
  if (typeof wanted !== "string" || !LOG_LEVELS.includes(wanted)) return false;
  return LOG_LEVELS.indexOf(String(level)) >= LOG_LEVELS.indexOf(wanted);
}

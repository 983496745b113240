// The broker's own scopes: what a client may ask for, and what it is told it got. One scope
// today, `mcp`: use the Forgejo MCP tools with the signed-in user's own Forgejo rights.

export const MCP_SCOPE = "mcp";
export const SUPPORTED_SCOPES = [MCP_SCOPE] as const;

export type ScopeVerdict = { ok: true; scope: string } | { ok: false; reason: string };

/** An absent or empty scope means the default; an unknown scope is refused rather than silently dropped. */
export function resolveRequestedScope(requested: string | undefined): ScopeVerdict {
  const parts = (requested ?? "").split(" ").filter(Boolean);
  if (parts.length === 0) return { ok: true, scope: MCP_SCOPE };
  const unknown = parts.filter((part) => !(SUPPORTED_SCOPES as readonly string[]).includes(part));
  if (unknown.length > 0) return { ok: false, reason: `unknown scope ${unknown.join(" ")}; supported: ${SUPPORTED_SCOPES.join(" ")}` };
  return { ok: true, scope: [...new Set(parts)].join(" ") };
}

/** A refresh may narrow the scope, never widen it (RFC 6749 §6). */
export function narrowScope(granted: string, requested: string | undefined): ScopeVerdict {
  if (requested === undefined || requested.trim() === "") return { ok: true, scope: granted };
  const allowed = new Set(granted.split(" "));
  const parts = requested.split(" ").filter(Boolean);
  const extra = parts.filter((part) => !allowed.has(part));
  if (extra.length > 0) return { ok: false, reason: `scope ${extra.join(" ")} was not granted` };
  return { ok: true, scope: [...new Set(parts)].join(" ") };
}

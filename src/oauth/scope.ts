// The broker's own scopes: what a client may ask for, and what it is told it got. One scope
// today, `mcp`: use the Forgejo MCP tools with the signed-in user's own Forgejo rights.

export const MCP_SCOPE = "mcp";
export const SUPPORTED_SCOPES = [MCP_SCOPE] as const;

/** What every /mcp request needs: a 403 names all of these in one challenge. */
export const REQUIRED_SCOPES: readonly string[] = [MCP_SCOPE];

export type ScopeVerdict = { ok: true; scope: string } | { ok: false; reason: string };

const known = (part: string) => (SUPPORTED_SCOPES as readonly string[]).includes(part);

/**
 * The scope granted for a request. OAuth lets the server grant less than asked (RFC 6749 §3.3), so scopes
 * the broker does not know (openid, profile, offline_access, …) are dropped, and nothing known left means the default.
 */
export function grantedScope(requested: string | undefined): string {
  const parts = (requested ?? "").split(" ").filter(known);
  return parts.length === 0 ? MCP_SCOPE : [...new Set(parts)].join(" ");
}

/** A refresh may narrow the scope, never widen it (RFC 6749 §6); scopes the broker does not know are dropped first. */
export function narrowScope(granted: string, requested: string | undefined): ScopeVerdict {
  const parts = (requested ?? "").split(" ").filter(known);
  if (parts.length === 0) return { ok: true, scope: granted };
  const allowed = new Set(granted.split(" "));
  const extra = parts.filter((part) => !allowed.has(part));
  if (extra.length > 0) return { ok: false, reason: `scope ${extra.join(" ")} was not granted` };
  return { ok: true, scope: [...new Set(parts)].join(" ") };
}

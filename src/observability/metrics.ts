// What the broker's parts record for its metrics, as small calls on a collaborator: the label values (each from
// a closed set), the no-op a broker without metrics gets, and the rules that map a method or a path to a label.

export type Era = "legacy" | "modern";
/** Why a child ended: each path that stops one names its reason, a child that exits by itself "crashed". */
export type ChildExitReason = "idle" | "evicted" | "deleted" | "revoked" | "rotated" | "crashed" | "shutdown";
export type EvictedBy = "user" | "global";
/** ok / error: the request's JSON-RPC answer; refused: an HTTP refusal with no answer from a child; gone: the client left first. */
export type McpOutcome = "ok" | "error" | "refused" | "gone";
/** input_required: a call's questions went out; resumed: its retry came; expired: none came in time; rejected: a retry's state was refused; full: no room to park it. */
export type MrtrResult = "input_required" | "resumed" | "expired" | "rejected" | "full";
export type OAuthEndpoint = "metadata" | "register" | "authorize" | "callback" | "token" | "revoke";
export type RateLimitedEndpoint = "register" | "token" | "revoke" | "authorize" | "consent" | "authorize_client";
export type GrantType = "authorization_code" | "refresh_token";
export type UpstreamCall = "code_exchange" | "refresh" | "user";
export type UpstreamResult = "ok" | "refused" | "unavailable";

/** What the broker's parts record; a broker without metrics gets `noMetrics`. */
export interface BrokerMetrics {
  /** A child is being started (spawned and initialized); call what it returns once that succeeded or failed. */
  childStarting(): (result: "ok" | "failed") => void;
  childExited(reason: ChildExitReason): void;
  sessionEvicted(cap: EvictedBy): void;
  /** One JSON-RPC request on /mcp, and the child round trip in seconds when a child answered it. */
  mcpRequest(era: Era, method: string, outcome: McpOutcome, roundTripS?: number): void;
  mrtr(result: MrtrResult): void;
  oauthRequest(endpoint: OAuthEndpoint, status: number): void;
  tokenIssued(grantType: GrantType): void;
  tokenReuseDetected(grantType: GrantType): void;
  rateLimited(endpoint: RateLimitedEndpoint): void;
  upstreamRefresh(result: UpstreamResult): void;
  upstreamRequest(call: UpstreamCall, result: UpstreamResult, seconds: number): void;
  /** A /mcp request for a session another replica owns, passed on to it ("failed": the owner did not answer). */
  forwardedRequest(result: ForwardResult): void;
  /** A session whose replica was gone, started again here under its id ("failed": its child did not start). */
  sessionRestored(result: ForwardResult): void;
}

export type ForwardResult = "ok" | "failed";

const ignore = () => {};
export const noMetrics: BrokerMetrics = {
  childStarting: () => ignore,
  childExited: ignore,
  sessionEvicted: ignore,
  mcpRequest: ignore,
  mrtr: ignore,
  oauthRequest: ignore,
  tokenIssued: ignore,
  tokenReuseDetected: ignore,
  rateLimited: ignore,
  upstreamRefresh: ignore,
  upstreamRequest: ignore,
  forwardedRequest: ignore,
  sessionRestored: ignore,
};

/** The client→server methods of both MCP eras: any other method is labelled `other`, so a caller cannot grow the label set. */
const MCP_METHODS = new Set([
  "initialize",
  "ping",
  "tools/list",
  "tools/call",
  "resources/list",
  "resources/read",
  "resources/templates/list",
  "resources/subscribe",
  "resources/unsubscribe",
  "prompts/list",
  "prompts/get",
  "completion/complete",
  "logging/setLevel",
  "tasks/get",
  "tasks/list",
  "tasks/result",
  "tasks/cancel",
  "server/discover",
  "subscriptions/listen",
]);

export function mcpMethodLabel(method: unknown): string {
  return typeof method === "string" && MCP_METHODS.has(method) ? method : "other";
}

/** What the scrape reads from the running broker at that moment. */
export interface ScrapeSources {
  sessions(): Record<Era, number>;
  /** The pids the broker started children as, alive now. */
  childPids(): Iterable<number>;
  continuations(): number;
}

/** The OAuth endpoint a request path belongs to, or null for any other path (so the label set stays fixed). */
export function oauthEndpointOf(path: string): OAuthEndpoint | null {
  if (path.startsWith("/.well-known/")) return "metadata";
  switch (path) {
    case "/oauth/register":
      return "register";
    case "/oauth/authorize":
      return "authorize";
    case "/oauth/callback":
      return "callback";
    case "/oauth/token":
      return "token";
    case "/oauth/revoke":
      return "revoke";
    default:
      return null;
  }
}

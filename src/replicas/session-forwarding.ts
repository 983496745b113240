// Passes a /mcp request for a session another live replica owns on to that replica, streaming both ways,
// marked with the hop's HMAC; and refuses a request that claims to be forwarded but cannot prove it.
import type { Logger } from "../log.ts";
import type { BrokerMetrics } from "../observability/metrics.ts";
import { rpcErrorResponse, TRANSPORT_ERROR } from "../session/errors.ts";
import { HOP_HEADER, signHop, verifyHop } from "./internal-hop.ts";
import type { SessionDirectory } from "./session-directory.ts";

const SESSION_HEADER = "mcp-session-id";
/** Only what the registry mints: anything else is no session anywhere, and never leaves this replica. */
const SESSION_ID = /^[0-9a-f]{48}$/;
/** Connection-level headers are this hop's own; the rest (Authorization, Accept, Last-Event-ID, …) go through unchanged. */
const HOP_BY_HOP = new Set(["host", "connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer", HOP_HEADER]);

export interface SessionForwardingDeps {
  directory: Pick<SessionDirectory, "find">;
  /** Whether this replica holds the session itself. */
  holds: (sessionId: string) => boolean;
  replicaId: string;
  hopKey: Uint8Array;
  now: () => number;
  fetch: (url: string, init: RequestInit) => Promise<Response>;
  logger: Logger;
  metrics: Pick<BrokerMetrics, "forwardedRequest">;
}

/**
 * Runs before /mcp serves a request (after the bearer check): a Response when the request is answered
 * here by forwarding or refusing it, undefined when this replica serves it as usual.
 */
export function sessionForwarding(deps: SessionForwardingDeps): (request: Request) => Promise<Response | undefined> {
  return async (request) => {
    const sessionId = request.headers.get(SESSION_HEADER)?.trim() ?? null;
    const target = { method: request.method, path: new URL(request.url).pathname, sessionId: sessionId ?? "" };
    const hop = request.headers.get(HOP_HEADER);
    if (hop !== null) {
      // Forwarded by a replica that found this one named as the owner: served here, never passed on again.
      const verdict = sessionId === null ? "invalid" : verifyHop(deps.hopKey, hop, target, deps.now());
      if (verdict === "ok") return undefined;
      deps.logger.warn("refused a request claiming to come from another replica", { verdict });
      return rpcErrorResponse(403, null, TRANSPORT_ERROR, "Forbidden: the replica hop could not be verified");
    }
    if (sessionId === null || !SESSION_ID.test(sessionId) || deps.holds(sessionId)) return undefined;
    let whereabouts;
    try {
      whereabouts = await deps.directory.find(sessionId);
    } catch (error) {
      deps.logger.warn("could not ask the session directory", { error: error instanceof Error ? error.message : String(error) });
      return undefined;
    }
    if (whereabouts === undefined || whereabouts.ownerUrl === null || whereabouts.entry.owner === deps.replicaId) return undefined;
    const headers = new Headers();
    request.headers.forEach((value, name) => {
      if (!HOP_BY_HOP.has(name.toLowerCase())) headers.set(name, value);
    });
    headers.set(HOP_HEADER, signHop(deps.hopKey, target, deps.now()));
    let answer: Response;
    try {
      answer = await deps.fetch(new URL(target.path, whereabouts.ownerUrl).href, {
        method: request.method,
        headers,
        body: request.body,
        redirect: "manual",
        // The caller going away ends the owner's side too (a GET stream's listener, a POST's wait).
        signal: request.signal,
      });
    } catch (error) {
      deps.metrics.forwardedRequest("failed");
      deps.logger.warn("the session's replica did not answer", { session: sessionId, owner_url: whereabouts.ownerUrl, error: error instanceof Error ? error.message : String(error) });
      return undefined;
    }
    deps.metrics.forwardedRequest("ok");
    const passed = new Headers();
    answer.headers.forEach((value, name) => {
      if (!HOP_BY_HOP.has(name.toLowerCase()) && name.toLowerCase() !== "content-encoding") passed.set(name, value);
    });
    return new Response(answer.body, { status: answer.status, headers: passed });
  };
}

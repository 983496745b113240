// Passes a /mcp request for a session another live replica owns on to that replica, streaming both ways,
// marked with the hop's HMAC; and refuses a request that claims to be forwarded but cannot prove it.
import type { Logger } from "../log.ts";
import type { BrokerMetrics } from "../observability/metrics.ts";
import { rpcErrorResponse, TRANSPORT_ERROR } from "../session/errors.ts";
import { HOP_HEADER, signHop, verifyHop } from "./internal-hop.ts";
import type { SessionIdentity } from "../session/legacy-session.ts";
import type { DirectoryEntry, SessionDirectory } from "./session-directory.ts";

const SESSION_HEADER = "mcp-session-id";
/** Only what the registry mints: anything else is no session anywhere, and never leaves this replica. */
const SESSION_ID = /^[0-9a-f]{48}$/;
/** Connection-level headers are this hop's own; the rest (Authorization, Accept, Last-Event-ID, …) go through unchanged. */
const HOP_BY_HOP = new Set(["host", "connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer", HOP_HEADER]);

/** Restores a session whose owner is gone, here under its id, for the live request's identity. */
export type RestoreSession = (sessionId: string, entry: DirectoryEntry, identity: SessionIdentity) => Promise<Response | undefined>;

export interface SessionForwardingDeps {
  directory: Pick<SessionDirectory, "find">;
  restore: RestoreSession;
  /** Whether this replica holds the session itself. */
  holds: (sessionId: string) => boolean;
  replicaId: string;
  hopKey: Uint8Array;
  now: () => number;
  fetch: (url: string, init: RequestInit) => Promise<Response>;
  logger: Logger;
  metrics: Pick<BrokerMetrics, "forwardedRequest">;
  /** Lifts the server's idle timeout for the request (a call may be silent for minutes); call what it returns once the answer is over. */
  keepOpen: (request: Request) => () => void;
}

/**
 * Runs before /mcp serves a request (after the bearer check): a Response when the request is answered
 * here by forwarding or refusing it, undefined when this replica serves it as usual.
 */
export function sessionForwarding(deps: SessionForwardingDeps): (request: Request, identity: SessionIdentity) => Promise<Response | undefined> {
  return async (request, identity) => {
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
    if (whereabouts === undefined || whereabouts.entry.owner === deps.replicaId) return undefined;
    if (whereabouts.ownerUrl === null) return deps.restore(sessionId, whereabouts.entry, identity);
    const headers = new Headers();
    request.headers.forEach((value, name) => {
      if (!HOP_BY_HOP.has(name.toLowerCase())) headers.set(name, value);
    });
    headers.set(HOP_HEADER, signHop(deps.hopKey, target, deps.now()));
    let answer: Response;
    const release = deps.keepOpen(request);
    try {
      answer = await deps.fetch(new URL(target.path, whereabouts.ownerUrl).href, {
        method: request.method,
        headers,
        // A copy (Bun's body limit bounds what it holds): a refused connection leaves the body intact for a restore here.
        body: request.body === null ? null : request.clone().body,
        redirect: "manual",
        // The caller going away ends the owner's side too (a GET stream's listener, a POST's wait).
        signal: request.signal,
      });
    } catch (error) {
      release();
      deps.metrics.forwardedRequest("failed");
      deps.logger.warn("the session's replica did not answer; restoring the session here", { session: sessionId, owner_url: whereabouts.ownerUrl, error: error instanceof Error ? error.message : String(error) });
      // A replica that refuses connections is gone, whatever its liveness key still says.
      return deps.restore(sessionId, whereabouts.entry, identity);
    }
    deps.metrics.forwardedRequest("ok");
    const passed = new Headers();
    answer.headers.forEach((value, name) => {
      if (!HOP_BY_HOP.has(name.toLowerCase()) && name.toLowerCase() !== "content-encoding") passed.set(name, value);
    });
    if (answer.body === null) {
      release();
      return new Response(null, { status: answer.status, headers: passed });
    }
    // The owner ending its answer ends the hold; a caller who leaves closes the connection anyway.
    const body = answer.body.pipeThrough(new TransformStream({ flush: release }));
    return new Response(body, { status: answer.status, headers: passed });
  };
}

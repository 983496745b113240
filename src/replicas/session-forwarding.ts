// Passes a /mcp request for a session another live replica owns on to that replica, streaming both ways,
// marked with the hop's HMAC; and refuses a request that claims to be forwarded but cannot prove it.
import type { Logger } from "../log.ts";
import { rpcErrorResponse, TRANSPORT_ERROR } from "../session/errors.ts";
import { bodySubject, HOP_HEADER, verifyHop } from "./internal-hop.ts";
import { relayToReplica, type RelayDeps } from "./replica-relay.ts";
import type { SessionIdentity } from "../session/legacy-session.ts";
import type { DirectoryEntry, SessionDirectory } from "./session-directory.ts";

const SESSION_HEADER = "mcp-session-id";
/** Only what the registry mints: anything else is no session anywhere, and never leaves this replica. */
const SESSION_ID = /^[0-9a-f]{48}$/;

/**
 * Restores a session whose owner is gone, here under its id, for the live request's identity: undefined to
 * serve the request here, "moved" when another replica restored it (forward there), or the answer itself.
 */
export type RestoreSession = (sessionId: string, entry: DirectoryEntry, identity: SessionIdentity, request: Request) => Promise<Response | undefined | "moved">;

export interface SessionForwardingDeps extends RelayDeps {
  directory: Pick<SessionDirectory, "find">;
  restore: RestoreSession;
  /** Whether this replica holds the session itself. */
  holds: (sessionId: string) => boolean;
  replicaId: string;
  logger: Logger;
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
      // Forwarded by a replica that found this one named as the owner (of the session, or of the MRTR
      // continuation the body's requestState names): served here, never passed on again.
      const bound = sessionId === null ? { ...target, sessionId: bodySubject(await request.clone().text()) } : target;
      const verdict = verifyHop(deps.hopKey, hop, bound, deps.now());
      if (verdict === "ok") return undefined;
      deps.logger.warn("refused a request claiming to come from another replica", { verdict });
      return rpcErrorResponse(403, null, TRANSPORT_ERROR, "Forbidden: the replica hop could not be verified");
    }
    if (sessionId === null || !SESSION_ID.test(sessionId) || deps.holds(sessionId)) return undefined;
    // A second look, after another replica won the restore: it owns the session now.
    for (let look = 0; look < 2; look++) {
      let whereabouts;
      try {
        whereabouts = await deps.directory.find(sessionId);
      } catch (error) {
        deps.logger.warn("could not ask the session directory", { error: error instanceof Error ? error.message : String(error) });
        return undefined;
      }
      if (whereabouts === undefined || whereabouts.entry.owner === deps.replicaId) return undefined;
      if (whereabouts.ownerUrl !== null) {
        // A copy (Bun's body limit bounds what it holds): a refused connection leaves the body intact for a restore here.
        const answer = await relayToReplica(deps, request, whereabouts.ownerUrl, target, request.body === null ? null : request.clone().body);
        if (answer !== null) return answer;
        // A replica that refuses connections is gone, whatever its liveness key still says.
        deps.logger.warn("the session's replica did not answer; restoring the session here", { session: sessionId, owner_url: whereabouts.ownerUrl });
      }
      const restored = await deps.restore(sessionId, whereabouts.entry, identity, request);
      if (restored !== "moved") return restored;
    }
    return undefined;
  };
}

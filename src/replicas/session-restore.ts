// Restores here a legacy session whose replica is gone: only for a request of the session's own grant, by
// exactly one replica (a claim in Redis), with a child for the live request's user and the stored initialize.
import type { IncomingMessage } from "../bridge/jsonrpc.ts";
import type { Logger } from "../log.ts";
import type { BrokerMetrics } from "../observability/metrics.ts";
import { rpcErrorResponse, TRANSPORT_ERROR } from "../session/errors.ts";
import type { SessionIdentity } from "../session/legacy-session.ts";
import type { LegacySession } from "../session/legacy-session.ts";
import type { DirectoryEntry, SessionDirectory } from "./session-directory.ts";
import type { RestoreSession } from "./session-forwarding.ts";

/** Another replica restoring the same session is done within its initialize timeout; a retry then finds it. */
const CLAIM_RETRY_AFTER_S = 1;

export interface SessionRestoreDeps {
  directory: Pick<SessionDirectory, "claim">;
  restore: (sessionId: string, identity: SessionIdentity, initialize: IncomingMessage) => Promise<LegacySession>;
  /** How long a claim holds: the initialize timeout, past which a restore has failed anyway. */
  claimMs: number;
  logger: Logger;
  metrics: Pick<BrokerMetrics, "sessionRestored">;
}

/** The stored initialize as a message, or undefined when it is not one (nothing is rebuilt from a damaged entry). */
export function storedInitialize(entry: DirectoryEntry): IncomingMessage | undefined {
  try {
    const message = JSON.parse(entry.initialize);
    return typeof message === "object" && message !== null && message.method === "initialize" ? { raw: entry.initialize, message } : undefined;
  } catch {
    return undefined;
  }
}

/** Undefined: serve the request here (restored, or refused as an unknown session); a Response: answered already. */
export function sessionRestore(deps: SessionRestoreDeps): RestoreSession {
  /** Restores under way here: a second request for the same session (a client's GET beside its POST) waits for the first. */
  const underWay = new Map<string, Promise<"here" | "elsewhere">>();
  /** "elsewhere": another replica holds the claim. */
  const claimAndStart = async (sessionId: string, identity: SessionIdentity, initialize: IncomingMessage): Promise<"here" | "elsewhere"> => {
    let claimed: boolean;
    try {
      claimed = await deps.directory.claim(sessionId, deps.claimMs);
    } catch {
      return "here";
    }
    if (!claimed) return "elsewhere";
    try {
      await deps.restore(sessionId, identity, initialize);
      deps.metrics.sessionRestored("ok");
      deps.logger.info("restored a session whose replica is gone", { session: sessionId, forgejo_user_id: identity.forgejoUserId });
    } catch (error) {
      deps.metrics.sessionRestored("failed");
      deps.logger.warn("could not restore a session whose replica is gone", { session: sessionId, error: error instanceof Error ? error.message : String(error) });
    }
    return "here";
  };
  return async (sessionId, entry, identity) => {
    // The identity is the live request's, never the stored one: another grant's request learns nothing (404 here).
    if (entry.grantId !== identity.grantId) return undefined;
    const initialize = storedInitialize(entry);
    if (initialize === undefined) return undefined;
    let restoring = underWay.get(sessionId);
    if (restoring === undefined) {
      restoring = claimAndStart(sessionId, identity, initialize).finally(() => underWay.delete(sessionId));
      underWay.set(sessionId, restoring);
    }
    if ((await restoring) === "here") return undefined;
    return rpcErrorResponse(503, null, TRANSPORT_ERROR, "Service Unavailable: the session is being restored on another replica; retry", {
      "Retry-After": String(CLAIM_RETRY_AFTER_S),
    });
  };
}

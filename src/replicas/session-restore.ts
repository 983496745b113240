// Restores here a legacy session whose replica is gone: only for a request of the session's own grant and
// negotiated version, by exactly one replica (a claim in Redis), with a child for the live request's user and the stored initialize.
import type { IncomingMessage } from "../bridge/jsonrpc.ts";
import type { Logger } from "../log.ts";
import type { BrokerMetrics } from "../observability/metrics.ts";
import { rpcErrorResponse, TRANSPORT_ERROR } from "../session/errors.ts";
import type { SessionIdentity } from "../session/legacy-session.ts";
import type { LegacySession } from "../session/legacy-session.ts";
import type { Timers } from "../supervisor/timers.ts";
import type { DirectoryEntry, SessionDirectory } from "./session-directory.ts";
import type { RestoreSession } from "./session-forwarding.ts";

/** Past the claim's life without the winner's entry, the winner failed: the caller retries, and the next claim is free. */
const CLAIM_RETRY_AFTER_S = 1;
/** How often the loser of a claim looks for the winner's entry in the directory. */
const WINNER_POLL_MS = 100;

export interface SessionRestoreDeps {
  directory: Pick<SessionDirectory, "claim" | "find" | "forget">;
  restore: (sessionId: string, identity: SessionIdentity, initialize: IncomingMessage) => Promise<LegacySession>;
  /** How long a claim holds: the initialize timeout, past which a restore has failed anyway. */
  claimMs: number;
  timers: Timers;
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

/** Why the request's MCP-Protocol-Version does not fit the session's negotiated version; null when it does (or says none). */
export function versionProblem(header: string | null, negotiated: string): string | null {
  if (header === null || negotiated === "" || header.trim() === negotiated) return null;
  return `Bad Request: MCP-Protocol-Version ${JSON.stringify(header.trim())} is not the session's negotiated version ${negotiated}`;
}

/**
 * Undefined: serve the request here (restored, or refused as an unknown session); "moved": another replica
 * restored it, forward there; a Response: answered already (a DELETE, a wrong version, a restore that never came).
 */
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
  const pause = (ms: number) => new Promise<void>((resolve) => deps.timers.setTimeout(resolve, ms));
  /** The claim's winner records the session under its own name once restored: "moved" then; undefined once the session is gone. */
  const winnerOf = async (sessionId: string, deadOwner: string): Promise<"moved" | undefined | null> => {
    const until = deps.timers.now() + deps.claimMs;
    while (deps.timers.now() < until) {
      await pause(WINNER_POLL_MS);
      const now = await deps.directory.find(sessionId).catch(() => null);
      if (now === undefined) return undefined;
      if (now !== null && now.entry.owner !== deadOwner && now.ownerUrl !== null) return "moved";
    }
    return null;
  };
  /** A DELETE needs no child: the claim's winner removes the entry, and the session is over everywhere. */
  const forget = async (sessionId: string, entry: DirectoryEntry): Promise<Response | "moved" | undefined> => {
    let claimed: boolean;
    try {
      claimed = await deps.directory.claim(sessionId, deps.claimMs);
    } catch {
      return undefined;
    }
    if (!claimed) return afterClaimLost(await winnerOf(sessionId, entry.owner));
    await deps.directory.forget(sessionId, entry.owner);
    deps.logger.info("ended a session whose replica is gone, at its client's DELETE", { session: sessionId });
    return new Response(null, { status: 204, headers: { "mcp-session-id": sessionId } });
  };
  return async (sessionId, entry, identity, request) => {
    // The identity is the live request's, never the stored one: another grant's request learns nothing (404 here).
    if (entry.grantId !== identity.grantId) return undefined;
    const problem = versionProblem(request.headers.get("mcp-protocol-version"), entry.protocolVersion);
    if (problem !== null) return rpcErrorResponse(400, null, TRANSPORT_ERROR, problem);
    if (request.method === "DELETE") return forget(sessionId, entry);
    const initialize = storedInitialize(entry);
    if (initialize === undefined) return undefined;
    let restoring = underWay.get(sessionId);
    if (restoring === undefined) {
      restoring = claimAndStart(sessionId, identity, initialize).finally(() => underWay.delete(sessionId));
      underWay.set(sessionId, restoring);
    }
    if ((await restoring) === "here") return undefined;
    return afterClaimLost(await winnerOf(sessionId, entry.owner));
  };
}

/** What the loser of a claim answers: forward to the winner, serve here (the session is gone: 404), or 503 when no winner showed. */
function afterClaimLost(winner: "moved" | undefined | null): Response | "moved" | undefined {
  if (winner !== null) return winner;
  return rpcErrorResponse(503, null, TRANSPORT_ERROR, "Service Unavailable: the session is being restored on another replica; retry", {
    "Retry-After": String(CLAIM_RETRY_AFTER_S),
  });
}

// Routes a modern caller's MRTR retry to the replica holding its continuation, over the internal hop;
// when that replica is gone (no liveness key, or it refuses the connection) the retry is served here, by a re-run.
import type { Logger } from "../log.ts";
import { rpcErrorResponse, TRANSPORT_ERROR } from "../session/errors.ts";
import { bodySubject } from "./internal-hop.ts";
import { relayToReplica, type RelayDeps } from "./replica-relay.ts";

/** Redis not answering says nothing about the holder: the caller retries rather than have its call run twice. */
const UNKNOWN_HOLDER_RETRY_AFTER_S = 1;

export interface RetryForwardingDeps extends RelayDeps {
  /** The address a live replica publishes (its liveness key), null once it is gone. Throws when Redis does not answer. */
  replicaUrl: (replicaId: string) => Promise<string | null>;
  logger: Logger;
}

/** The holder's answer to the retry (`raw` its body), or undefined when the holder is gone and this replica serves it. */
export type RetryElsewhere = (request: Request, raw: string, holder: string) => Promise<Response | undefined>;

export function retryForwarding(deps: RetryForwardingDeps): RetryElsewhere {
  return async (request, raw, holder) => {
    let url: string | null;
    try {
      url = await deps.replicaUrl(holder);
    } catch (error) {
      deps.logger.warn("could not ask Redis where an MRTR retry's call is held", { error: error instanceof Error ? error.message : String(error) });
      return rpcErrorResponse(503, null, TRANSPORT_ERROR, "Service Unavailable: the replica holding this call cannot be located now; retry", {
        "Retry-After": String(UNKNOWN_HOLDER_RETRY_AFTER_S),
      });
    }
    if (url === null) return undefined;
    const target = { method: request.method, path: new URL(request.url).pathname, sessionId: bodySubject(raw) };
    const answer = await relayToReplica(deps, request, url, target, raw);
    if (answer === null) deps.logger.warn("the replica holding an MRTR call did not answer; re-running the call here", { holder_url: url });
    return answer ?? undefined;
  };
}

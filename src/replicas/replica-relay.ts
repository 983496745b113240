// Passes a /mcp request on to another replica, marked with the hop's HMAC, and streams its answer back;
// null when that replica does not answer (refused connection), which callers take as the replica being gone.
import type { BrokerMetrics } from "../observability/metrics.ts";
import { HOP_HEADER, signHop, type HopTarget } from "./internal-hop.ts";

/** Connection-level headers are this hop's own; the rest (Authorization, Accept, Last-Event-ID, …) go through unchanged. */
const HOP_BY_HOP = new Set(["host", "connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer", HOP_HEADER]);

export interface RelayDeps {
  hopKey: Uint8Array;
  now: () => number;
  fetch: (url: string, init: RequestInit) => Promise<Response>;
  metrics: Pick<BrokerMetrics, "forwardedRequest">;
  /** Lifts the server's idle timeout for the request (a call may be silent for minutes); call what it returns once the answer is over. */
  keepOpen: (request: Request) => () => void;
}

/** The other replica's answer to `request` (sent with `body`, signed for `target`), or null when it did not answer. */
export async function relayToReplica(deps: RelayDeps, request: Request, replicaUrl: string, target: HopTarget, body: BodyInit | null): Promise<Response | null> {
  const headers = new Headers();
  request.headers.forEach((value, name) => {
    if (!HOP_BY_HOP.has(name.toLowerCase())) headers.set(name, value);
  });
  headers.set(HOP_HEADER, signHop(deps.hopKey, target, deps.now()));
  let answer: Response;
  const release = deps.keepOpen(request);
  try {
    answer = await deps.fetch(new URL(target.path, replicaUrl).href, {
      method: request.method,
      headers,
      body,
      redirect: "manual",
      // The caller going away ends the other replica's side too (a GET stream's listener, a POST's wait).
      signal: request.signal,
    });
  } catch {
    release();
    deps.metrics.forwardedRequest("failed");
    return null;
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
  // The other replica ending its answer ends the hold; a caller who leaves closes the connection anyway.
  const streamed = answer.body.pipeThrough(new TransformStream({ flush: release }));
  return new Response(streamed, { status: answer.status, headers: passed });
}

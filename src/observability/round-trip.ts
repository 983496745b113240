// One JSON-RPC request on /mcp as metrics and traces see it: counted once by era, method and outcome, timed
// from its hand-over to the child to its answer, and a span whose traceparent a modern child can join.
import type { IncomingMessage } from "../bridge/jsonrpc.ts";
import type { EventSource } from "../http/sse-response.ts";
import { mcpMethodLabel, noMetrics, type BrokerMetrics, type Era, type McpOutcome } from "./metrics.ts";
import { noSpan, type Tracing } from "./tracing.ts";

export interface RoundTrip {
  /** The W3C traceparent of the request's span; null when not tracing. */
  readonly traceparent: string | null;
  /** `source` (what the child sends back), counting the request when its answer arrives or the client goes. */
  watch(source: EventSource): EventSource;
  /** Counts the request as over without a child's answer (refused, or answered by the broker itself). */
  settle(outcome: McpOutcome): void;
}

const untracked: RoundTrip = { traceparent: null, watch: (source) => source, settle: () => {} };

/** Who sent the request, for the span only (an operator looking for one user's slow call); never a metric label. */
export interface Caller {
  forgejoUserId: number;
  clientId: string;
}

export function startRoundTrip(metrics: BrokerMetrics, tracing: Tracing, era: Era, method: unknown, caller: Caller): RoundTrip {
  // Nothing to record: nothing added to the request's path.
  if (metrics === noMetrics && !tracing.enabled) return untracked;
  const label = mcpMethodLabel(method);
  const begun = performance.now();
  const span = tracing.enabled
    ? tracing.start(`mcp ${label}`, { "rpc.system": "jsonrpc", "rpc.method": label, "fmb.mcp.era": era, "enduser.id": String(caller.forgejoUserId), "fmb.client_id": caller.clientId }, "client")
    : noSpan;
  let over = false;
  const finish = (outcome: McpOutcome, timed: boolean) => {
    if (over) return;
    over = true;
    metrics.mcpRequest(era, label, outcome, timed ? (performance.now() - begun) / 1000 : undefined);
    span.end({ "fmb.mcp.outcome": outcome });
  };
  return {
    traceparent: span.traceparent(),
    settle: (outcome) => finish(outcome, false),
    watch: (source) => ({
      next: async () => {
        const event = await source.next();
        if (event === null) finish("gone", false);
        else if (event.kind === "response") finish("error" in event.message ? "error" : "ok", true);
        return event;
      },
      close: (reason) => {
        finish("gone", false);
        source.close(reason);
      },
    }),
  };
}

/** A modern request with its span's traceparent in params._meta, so the child can join the trace (MRTR's params hash ignores _meta). */
export function withTraceparent(incoming: IncomingMessage, traceparent: string | null): IncomingMessage {
  if (traceparent === null) return incoming;
  const params = (incoming.message.params ?? {}) as Record<string, unknown>;
  const meta = (params._meta ?? {}) as Record<string, unknown>;
  const message = { ...incoming.message, params: { ...params, _meta: { ...meta, traceparent } } };
  return { raw: JSON.stringify(message), message };
}

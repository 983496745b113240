// The Streamable HTTP /mcp endpoint behind the bearer guard: checks each POST, GET and DELETE, hands a
// legacy one to its session and a modern POST to its principal's child, and answers in JSON or SSE, every refusal a JSON-RPC error.
import { Elysia } from "elysia";
import { ErrorCode, isJsonRpcId, parseMessage, type IncomingMessage, type JsonRpcId } from "../bridge/jsonrpc.ts";
import type { OutboundEvent } from "../bridge/message-stream.ts";
import type { InFlightLimits, SessionConfig } from "../config.ts";
import type { Logger } from "../log.ts";
import { noMetrics, type BrokerMetrics } from "../observability/metrics.ts";
import { startRoundTrip, withTraceparent, type RoundTrip } from "../observability/round-trip.ts";
import { noTracing, type Tracing } from "../observability/tracing.ts";
import { classifyPost } from "../modern/classify.ts";
import { MISSING_CAPABILITY } from "../modern/modern-call.ts";
import type { PrincipalChildren } from "../modern/principals.ts";
import type { RetryElsewhere } from "../replicas/retry-forwarding.ts";
import { checkModernRequest } from "../modern/request-rules.ts";
import { LEGACY_PROTOCOL_VERSIONS } from "../modern/versions.ts";
import { BearerTokenError } from "../oauth/errors.ts";
import { bearerChallengeFor, type bearerGuard } from "../oauth/middleware/bearer-auth.ts";
import { InitializeRejectedError, McpRefusal, rpcErrorResponse, TRANSPORT_ERROR, type RefusalContext } from "../session/errors.ts";
import type { LegacySession } from "../session/legacy-session.ts";
import type { SessionRegistry } from "../session/registry.ts";
import type { TokenIdentity } from "../store/store.ts";
import { acceptedReplies, type AcceptedReplies } from "./accept.ts";
import { readAtMost } from "./bounded-body.ts";
import { InFlightCounter } from "./in-flight.ts";
import { initializeParamsProblem } from "./initialize-params.ts";
import { fixedEvents, prefixed, sseResponse, type EventSource } from "./sse-response.ts";
import type { StreamTokens } from "./stream-tokens.ts";

export const SUPPORTED_PROTOCOL_VERSIONS = LEGACY_PROTOCOL_VERSIONS;

/** What a modern caller may ask a principal's child; anything else (initialize, ping, …) is unknown in 2026-07-28. */
const MODERN_FORWARDED = new Set([
  "tools/list",
  "tools/call",
  "resources/list",
  "resources/read",
  "resources/templates/list",
  "prompts/list",
  "prompts/get",
  "completion/complete",
]);

export interface McpRoutesDeps {
  registry: SessionRegistry;
  /** Answers a request for a session held elsewhere (another replica) before this replica would; undefined: serve it here. */
  elsewhere?: (request: Request, identity: TokenIdentity) => Promise<Response | undefined>;
  /** Passes an MRTR retry to the replica `holder` holding its call; undefined: that replica is gone, the retry is served here. */
  retryElsewhere?: RetryElsewhere;
  principals: PrincipalChildren;
  sessions: SessionConfig;
  publicUrl: string;
  logger: Logger;
  /**
   * Turns the server's idle timeout off for this request (its answer may be long in coming or never
   * end); the function it returns turns it back on, and must be called before the answer has ended.
   */
  keepOpen(request: Request): () => void;
  inFlight: InFlightLimits;
  /** Ends each stream when the access token that opened it expires or is revoked. */
  streamTokens: StreamTokens;
  heartbeatMs?: number;
  /** Each JSON-RPC request counted and timed; none without it. */
  metrics?: BrokerMetrics;
  /** A span per request's child round trip; none without it. */
  tracing?: Tracing;
}

const SESSION_HEADER = "Mcp-Session-Id";
/** A slot frees as soon as any of the caller's requests is answered. */
const IN_FLIGHT_RETRY_AFTER_S = 1;

/** Reads at most `limit` bytes of the body; null when there is more. */
async function readBody(request: Request, limit: number): Promise<string | null> {
  const declared = Number(request.headers.get("content-length") ?? Number.NaN);
  if (declared > limit) return null;
  // Bun.serve holds a request to its Content-Length, so a declared length lets the native reader do it all.
  if (Number.isFinite(declared)) return request.text();
  if (request.body === null) return "";
  const body = await readAtMost(request.body, limit);
  return body === undefined ? null : new TextDecoder().decode(body);
}

/** `source`, calling `done` once when it runs out or the client goes: the answer is over then. */
function endingWith(source: EventSource, done: () => void): EventSource {
  return {
    next: async () => {
      const event = await source.next();
      if (event === null) done();
      return event;
    },
    close: (reason) => {
      done();
      source.close(reason);
    },
  };
}

/** A modern request that carries a requestState: the retry of a call that asked its caller for input. */
function isRetry(incoming: IncomingMessage): boolean {
  const params = incoming.message.params;
  return params !== null && typeof params === "object" && "requestState" in params;
}

/** The broker's -32021 for a capability the request did not declare: HTTP 400 when it is the first thing sent. */
function missingCapability(first: OutboundEvent): boolean {
  return first.kind === "response" && first.origin === "broker" && (first.message.error as { code?: unknown } | undefined)?.code === MISSING_CAPABILITY;
}

export function mcpRoutes(deps: McpRoutesDeps) {
  const { registry, sessions, logger } = deps;
  const heartbeatMs = deps.heartbeatMs ?? 15_000;
  const allowedOrigins = new Set(sessions.allowedOrigins);
  const challenge = bearerChallengeFor(deps.publicUrl);
  const refusalContext: RefusalContext = {
    logger,
    unauthorized: (description) => new BearerTokenError("invalid_token", description, challenge).toResponse(),
  };
  const inFlight = new InFlightCounter(deps.inFlight);
  const metrics = deps.metrics ?? noMetrics;
  const tracing = deps.tracing ?? noTracing;

  const checkProtocolVersion = (request: Request) => {
    const version = request.headers.get("mcp-protocol-version");
    if (version !== null && !(SUPPORTED_PROTOCOL_VERSIONS as readonly string[]).includes(version.trim())) {
      throw new McpRefusal(
        400,
        TRANSPORT_ERROR,
        `Unsupported MCP-Protocol-Version ${JSON.stringify(version)}; supported: ${SUPPORTED_PROTOCOL_VERSIONS.join(", ")}`,
      );
    }
  };

  const sessionIdOf = (request: Request): string => {
    const id = request.headers.get(SESSION_HEADER);
    if (id === null || id.trim() === "") {
      throw new McpRefusal(400, TRANSPORT_ERROR, "Bad Request: the Mcp-Session-Id header is required; start a session with initialize");
    }
    return id.trim();
  };

  /**
   * Takes an in-flight slot for a request of `session` (null: a GET stream or initialize) and keeps the
   * socket open; the function returned gives both back. Throws McpRefusal 429 past a cap.
   */
  const hold = (request: Request, identity: TokenIdentity, session: string | null): (() => void) => {
    const slot = inFlight.acquire(identity.forgejoUserId, session);
    if (!slot.ok) {
      const what =
        slot.scope === "session"
          ? `this session has ${slot.limit} requests in flight`
          : `you have ${slot.limit} requests in flight and streams open`;
      throw new McpRefusal(429, TRANSPORT_ERROR, `Too Many Requests: ${what}, the most allowed; send more once one is answered`, {
        "Retry-After": String(IN_FLIGHT_RETRY_AFTER_S),
      });
    }
    const restoreIdleTimeout = deps.keepOpen(request);
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      restoreIdleTimeout();
      slot.release();
    };
  };

  /** An SSE answer from `source`: over (done) when it runs out or the client goes, or ended when the request's token does. */
  const streamed = (request: Request, identity: TokenIdentity, source: EventSource, headers: Record<string, string>, done: () => void): Response => {
    const watchedSource = endingWith(source, () => {
      stopWatching();
      done();
    });
    const stopWatching = deps.streamTokens.watch({ grantId: identity.grantId, tokenHash: identity.tokenHash, expiresAt: identity.expiresAt }, (reason) =>
      watchedSource.close(reason),
    );
    return sseResponse(watchedSource, { heartbeatMs, headers, signal: request.signal });
  };

  /** The one place a thrown error becomes a response; anything unforeseen is logged, never a crash. */
  const refusal = (error: unknown, id: JsonRpcId | null, sessionId?: string): Response => {
    const session: Record<string, string> = sessionId === undefined ? {} : { [SESSION_HEADER]: sessionId };
    if (error instanceof McpRefusal) return error.toResponse(id, refusalContext, session);
    logger.error("/mcp request failed", { error: error instanceof Error ? error : String(error) });
    return rpcErrorResponse(500, id, ErrorCode.InternalError, "Internal error", session);
  };

  /**
   * JSON when the first thing for the request is its answer and the client takes JSON; otherwise SSE.
   * A first event that `refusedAtOnce` picks is an error answered with HTTP 400 (nothing was sent before it).
   */
  const answer = async (
    request: Request,
    identity: TokenIdentity,
    replies: AcceptedReplies,
    source: EventSource,
    headers: Record<string, string>,
    done: () => void,
    refusedAtOnce?: (first: OutboundEvent) => boolean,
  ): Promise<Response> => {
    const gone = () => source.close("client disconnected");
    request.signal.addEventListener("abort", gone, { once: true });
    let first: OutboundEvent | null;
    try {
      // For a client that takes only JSON the session sends nothing before the answer (LegacySession.request's `sse`).
      first = await source.next();
    } finally {
      request.signal.removeEventListener("abort", gone);
    }
    if (first === null) {
      done();
      return rpcErrorResponse(499, null, TRANSPORT_ERROR, "the client went away", headers);
    }
    if (refusedAtOnce?.(first) === true) {
      done();
      return new Response(first.data, { status: 400, headers: { "Content-Type": "application/json", ...headers } });
    }
    if (replies.json && first.kind === "response") {
      done();
      return new Response(first.data, { status: 200, headers: { "Content-Type": "application/json", ...headers } });
    }
    return streamed(request, identity, prefixed([first], source), headers, done);
  };

  const initialize = async (
    request: Request,
    replies: AcceptedReplies,
    identity: TokenIdentity,
    incoming: IncomingMessage,
    id: JsonRpcId,
    trip: RoundTrip,
  ): Promise<Response> => {
    const existing = request.headers.get(SESSION_HEADER);
    if (existing !== null) {
      const entry = registry.get(existing.trim(), identity);
      return rpcErrorResponse(400, id, ErrorCode.InvalidRequest, "Bad Request: this session is already initialized; send initialize without Mcp-Session-Id for a new one", {
        [SESSION_HEADER]: entry.id,
      });
    }
    // A child never answers an initialize it cannot parse: refuse it before one is started.
    const problem = initializeParamsProblem(incoming.message.params);
    if (problem !== null) return rpcErrorResponse(400, id, ErrorCode.InvalidParams, `Invalid params: ${problem}`);
    const done = hold(request, identity, null);
    try {
      const { entry, events } = await registry.create(identity, incoming);
      return await answer(request, identity, replies, trip.watch(fixedEvents(events)), { [SESSION_HEADER]: entry.id }, done);
    } catch (error) {
      if (error instanceof InitializeRejectedError) return answer(request, identity, replies, trip.watch(fixedEvents(error.events)), {}, done);
      done();
      throw error;
    }
  };

  const forward = async (
    request: Request,
    replies: AcceptedReplies,
    identity: TokenIdentity,
    entry: LegacySession,
    incoming: IncomingMessage,
    trip: RoundTrip,
  ): Promise<Response> => {
    const done = hold(request, identity, entry.id);
    try {
      const stream = trip.watch(entry.request(incoming, { jsonAnswer: replies.json, sse: replies.sse }));
      return await answer(request, identity, replies, stream, { [SESSION_HEADER]: entry.id }, done);
    } catch (error) {
      done();
      throw error;
    }
  };

  /** A subscriptions/listen: an SSE answer open until the caller closes it, its token ends or the child goes; it counts as an open stream. */
  const listen = async (request: Request, replies: AcceptedReplies, identity: TokenIdentity, incoming: IncomingMessage): Promise<Response> => {
    if (!replies.sse) throw new McpRefusal(406, TRANSPORT_ERROR, "Not Acceptable: subscriptions/listen answers with an event stream; the client must accept text/event-stream");
    const done = hold(request, identity, null);
    try {
      const stream = (await deps.principals.childFor(identity)).listen(incoming);
      return streamed(request, identity, stream, {}, done);
    } catch (error) {
      done();
      throw error;
    }
  };

  /** A modern (2026-07-28) request: checked, then answered by the broker (server/discover) or its principal's child. */
  const modern = async (request: Request, replies: AcceptedReplies, identity: TokenIdentity, incoming: IncomingMessage, version: string, id: JsonRpcId, trip: RoundTrip): Promise<Response> => {
    checkModernRequest(incoming.message, version, request.headers);
    const method = String(incoming.message.method);
    if (method === "server/discover") {
      const child = await deps.principals.childFor(identity);
      const body = JSON.stringify({ jsonrpc: "2.0", id, result: child.discoverResult });
      trip.settle("ok");
      return new Response(body, { status: 200, headers: { "Content-Type": "application/json" } });
    }
    if (method === "subscriptions/listen") {
      const opened = await listen(request, replies, identity, incoming);
      // Open until the caller closes it: counted when opened, not timed as a round trip.
      trip.settle("ok");
      return opened;
    }
    if (!MODERN_FORWARDED.has(method)) throw new McpRefusal(404, ErrorCode.MethodNotFound, `Method not found: ${method}`);
    const holder = isRetry(incoming) && deps.retryElsewhere !== undefined ? deps.principals.holderElsewhere(identity, incoming) : null;
    if (holder !== null) {
      const relayed = await deps.retryElsewhere!(request, incoming.raw, holder);
      if (relayed !== undefined) {
        // The holder counts the call itself.
        trip.settle("ok");
        return relayed;
      }
    }
    const done = hold(request, identity, null);
    try {
      // An MRTR retry resumes the call its requestState names, on whichever child holds it.
      const forwarded = withTraceparent(incoming, trip.traceparent);
      const stream = trip.watch(
        isRetry(incoming)
          ? await deps.principals.resume(identity, forwarded, { sse: replies.sse })
          : (await deps.principals.childFor(identity)).call(forwarded, { sse: replies.sse }),
      );
      return await answer(request, identity, replies, stream, {}, done, missingCapability);
    } catch (error) {
      done();
      throw error;
    }
  };

  const post = async (request: Request, identity: TokenIdentity): Promise<Response> => {
    let id: JsonRpcId | null = null;
    let sessionId: string | undefined;
    let trip: RoundTrip | undefined;
    try {
      const contentType = (request.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
      if (contentType !== "application/json") {
        throw new McpRefusal(415, TRANSPORT_ERROR, "Unsupported Media Type: Content-Type must be application/json");
      }
      const replies = acceptedReplies(request.headers.get("accept"));
      if (!replies.json && !replies.sse) {
        throw new McpRefusal(406, TRANSPORT_ERROR, "Not Acceptable: the client must accept application/json or text/event-stream");
      }
      const raw = await readBody(request, sessions.maxMessageBytes);
      if (raw === null) {
        throw new McpRefusal(413, ErrorCode.InvalidRequest, `Payload Too Large: a message may have at most ${sessions.maxMessageBytes} bytes`);
      }
      const parsed = parseMessage(raw);
      if (!parsed.ok) {
        if (parsed.problem === "parse") throw new McpRefusal(400, ErrorCode.ParseError, "Parse error: the body is not JSON");
        if (parsed.problem === "batch") {
          throw new McpRefusal(400, ErrorCode.InvalidRequest, "Invalid Request: JSON-RPC batches are not supported (MCP 2025-11-25); send one message per request");
        }
        throw new McpRefusal(400, ErrorCode.InvalidRequest, "Invalid Request: the body is not a JSON-RPC 2.0 message");
      }
      const { incoming, kind } = parsed;
      if (kind === "request" && isJsonRpcId(incoming.message.id)) id = incoming.message.id;
      const era = classifyPost(incoming.message, kind, request.headers.get("mcp-protocol-version"));
      if (kind === "request") trip = startRoundTrip(metrics, tracing, era.era, incoming.message.method, identity);
      if (era.era === "modern") {
        // 2026-07-28 has no client notifications over HTTP (a stream's end is its cancellation): nothing to forward.
        if (kind === "notification") return new Response(null, { status: 202 });
        return await modern(request, replies, identity, incoming, era.version, id!, trip!);
      }
      checkProtocolVersion(request);
      if (kind === "request" && incoming.message.method === "initialize") return await initialize(request, replies, identity, incoming, id!, trip!);
      const entry = registry.get(sessionIdOf(request), identity);
      sessionId = entry.id;
      if (kind === "request") return await forward(request, replies, identity, entry, incoming, trip!);
      entry.send(incoming, kind);
      return new Response(null, { status: 202, headers: { [SESSION_HEADER]: entry.id } });
    } catch (error) {
      // A request whose answer was under way is counted already; settle counts each request once.
      trip?.settle("refused");
      return refusal(error, id, sessionId);
    }
  };

  const get = (request: Request, identity: TokenIdentity): Response => {
    let sessionId: string | undefined;
    try {
      if (!acceptedReplies(request.headers.get("accept")).sse) {
        throw new McpRefusal(406, TRANSPORT_ERROR, "Not Acceptable: the client must accept text/event-stream");
      }
      checkProtocolVersion(request);
      const entry = registry.get(sessionIdOf(request), identity);
      sessionId = entry.id;
      const lastEventId = request.headers.get("last-event-id");
      const done = hold(request, identity, null);
      let stream;
      try {
        stream = lastEventId === null ? entry.openStandalone() : entry.resume(lastEventId);
      } catch (error) {
        done();
        throw error;
      }
      return streamed(request, identity, stream, { [SESSION_HEADER]: entry.id }, done);
    } catch (error) {
      return refusal(error, null, sessionId);
    }
  };

  const del = (request: Request, identity: TokenIdentity): Response => {
    try {
      checkProtocolVersion(request);
      const entry = registry.get(sessionIdOf(request), identity);
      registry.delete(entry.id);
      return new Response(null, { status: 204, headers: { [SESSION_HEADER]: entry.id } });
    } catch (error) {
      return refusal(error, null);
    }
  };

  return (guarded: ReturnType<typeof bearerGuard>) =>
    new Elysia({ name: "mcp" })
      // Before the guard: a page on a foreign origin (DNS rebinding) learns nothing, not even whether a token is good.
      .onBeforeHandle(({ request }) => {
        const origin = request.headers.get("origin");
        if (origin !== null && !allowedOrigins.has(origin)) {
          return rpcErrorResponse(403, null, TRANSPORT_ERROR, `Forbidden: Origin ${JSON.stringify(origin)} is not allowed`);
        }
      })
      .use(guarded)
      .post("/mcp", async ({ request, identity }) => (await deps.elsewhere?.(request, identity)) ?? post(request, identity), { parse: "none" })
      .get("/mcp", async ({ request, identity }) => (await deps.elsewhere?.(request, identity)) ?? get(request, identity))
      .delete("/mcp", async ({ request, identity }) => (await deps.elsewhere?.(request, identity)) ?? del(request, identity))
      .all("/mcp", () => rpcErrorResponse(405, null, TRANSPORT_ERROR, "Method Not Allowed: use POST, GET or DELETE", { Allow: "GET, POST, DELETE" }));
}

// What /mcp refuses, as typed errors: each knows its HTTP status, JSON-RPC code and headers and
// renders itself with the request's id, so the route has one path from any refusal to a response.
import { ErrorCode, errorResponse, type JsonRpcId } from "../bridge/jsonrpc.ts";
import type { OutboundEvent } from "../bridge/message-stream.ts";
import type { Logger } from "../log.ts";
import { isReported, reportChildFailure } from "../supervisor/failure-report.ts";

/** The codes the SDK's own servers use for transport refusals and for an unknown session. */
export const TRANSPORT_ERROR = -32000;
export const SESSION_NOT_FOUND = -32001;

/** What a refusal may need from the route to render itself. */
export interface RefusalContext {
  logger: Logger;
  /** A 401 with the RFC 6750 challenge, which sends the client through sign-in again. */
  unauthorized(description: string): Response;
}

/** A JSON-RPC error object as the whole answer, with an HTTP status. */
export function rpcErrorResponse(
  status: number,
  id: JsonRpcId | null,
  code: number,
  message: string,
  headers: Record<string, string> = {},
  data?: unknown,
): Response {
  return new Response(errorResponse(id, code, message, data), { status, headers: { "Content-Type": "application/json", ...headers } });
}

/**
 * A refusal the route answers with `status` and a JSON-RPC error `code` (its message is the error's),
 * and the error's `data` when the protocol asks for one (e.g. the versions a server supports).
 */
export class McpRefusal extends Error {
  readonly data: unknown;

  constructor(
    readonly status: number,
    readonly code: number,
    message: string,
    readonly headers: Record<string, string> = {},
    options?: ErrorOptions & { data?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
    this.data = options?.data;
  }

  /** `extraHeaders`: the route's own (the session the answer is about). */
  toResponse(id: JsonRpcId | null, context: RefusalContext, extraHeaders: Record<string, string> = {}): Response {
    return rpcErrorResponse(this.status, id, this.code, this.clientMessage(context), { ...this.headers, ...extraHeaders }, this.data);
  }

  /** What the client reads in the JSON-RPC error. */
  protected clientMessage(_context: RefusalContext): string {
    return this.message;
  }
}

/** BROKER_MAX_SESSIONS reached with every session busy (none to evict), or the broker is shutting down → 503 with Retry-After. */
export class SessionLimitError extends McpRefusal {
  constructor(
    message: string,
    readonly retryAfterS: number,
  ) {
    super(503, TRANSPORT_ERROR, message, { "Retry-After": String(retryAfterS) });
  }
}

/** A draining broker is usually stopped and replaced within this long; the load balancer sends a retry elsewhere meanwhile. */
const DRAIN_RETRY_AFTER_S = 30;

/**
 * The broker drains (the admin command's drain, or a stop under way) and starts nothing new, neither a session
 * nor a modern call (`what`): 503 with Retry-After, which another replica can take.
 */
export function drainingRefusal(what: "sessions" | "calls"): SessionLimitError {
  return new SessionLimitError(`this broker is draining and starts no new ${what}; retry later`, DRAIN_RETRY_AFTER_S);
}

/** BROKER_MAX_SESSIONS_PER_USER reached with every session of the user busy (none to evict) → 429 with Retry-After. */
export class UserSessionLimitError extends McpRefusal {
  constructor(
    message: string,
    readonly retryAfterS: number,
  ) {
    super(429, TRANSPORT_ERROR, message, { "Retry-After": String(retryAfterS) });
  }
}

/** Unknown, ended or malformed Mcp-Session-Id → 404 (clients re-initialize on 404). */
export class SessionNotFoundError extends McpRefusal {
  constructor() {
    super(404, SESSION_NOT_FOUND, "session not found");
  }

  protected override clientMessage(): string {
    return "Session not found";
  }
}

/** The session belongs to another grant → 403. */
export class SessionForbiddenError extends McpRefusal {
  constructor() {
    super(403, TRANSPORT_ERROR, "this session belongs to another authorization");
  }
}

/** Every token of the session's sign-in was revoked while it started → 401, as its next request would get. */
export class SessionRevokedError extends McpRefusal {
  constructor() {
    super(401, TRANSPORT_ERROR, "the sign-in was revoked while the session started");
  }

  override toResponse(_id: JsonRpcId | null, context: RefusalContext): Response {
    return context.unauthorized("The access token was revoked while the session started");
  }
}

/**
 * The user's Forgejo credential is gone (refused or unreadable) and their grants are revoked already →
 * 401, which sends the client through sign-in again.
 */
export class SignInEndedError extends McpRefusal {
  constructor(options?: ErrorOptions) {
    super(401, TRANSPORT_ERROR, "the sign-in to Forgejo has ended", {}, options);
  }

  override toResponse(_id: JsonRpcId | null, context: RefusalContext): Response {
    return context.unauthorized("The sign-in to Forgejo has ended; sign in again");
  }
}

/** A Forgejo that did not answer is usually back, or known to be down, within seconds. */
const UPSTREAM_RETRY_AFTER_S = 10;

/** Forgejo could not be reached to refresh the user's token for a new session → 503 with Retry-After. */
export class ForgejoUnreachableError extends McpRefusal {
  constructor(options?: ErrorOptions) {
    super(503, TRANSPORT_ERROR, "Forgejo could not be reached to refresh the user's token; try again shortly", { "Retry-After": String(UPSTREAM_RETRY_AFTER_S) }, options);
  }
}

/**
 * The child could not start or exited before answering initialize → 502 with a JSON-RPC error
 * (code -32000) with this message; the child's last stderr line (masked) is for the broker log only.
 */
export class SessionStartError extends McpRefusal {
  constructor(
    message: string,
    readonly lastStderrLine: string | null,
  ) {
    super(502, TRANSPORT_ERROR, message);
  }

  protected override clientMessage(context: RefusalContext): string {
    // A child that exited while the broker waited on it was reported by its channel, stderr line and all: one reference.
    return isReported(this.message) ? this.message : reportChildFailure(context.logger, this.message, this.lastStderrLine);
  }
}

/** A message over maxMessageBytes from the client → 413. */
export class MessageTooLargeError extends McpRefusal {
  constructor(
    readonly bytes: number,
    readonly limit: number,
  ) {
    super(413, ErrorCode.InvalidRequest, `message of ${bytes} bytes is over the limit of ${limit} bytes`);
  }
}

/** A second standalone GET stream while one is open → 409. */
export class StreamConflictError extends McpRefusal {
  constructor() {
    super(409, TRANSPORT_ERROR, "this session already has an open standalone SSE stream");
  }
}

/** A Last-Event-ID this session never issued → 400. */
export class InvalidEventIdError extends McpRefusal {
  constructor(readonly lastEventId: string) {
    super(400, TRANSPORT_ERROR, "Last-Event-ID is not an event id of this session");
  }
}

/**
 * The child answered initialize with a JSON-RPC error: not a refusal but the answer, so the route
 * returns `events` to the client as they are (status 200, like any JSON-RPC answer), without a session.
 */
export class InitializeRejectedError extends Error {
  override readonly name = "InitializeRejectedError";
  readonly status = 200;
  constructor(readonly events: OutboundEvent[]) {
    super("the MCP server refused initialize");
  }
}

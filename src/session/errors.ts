// The registry's refusals as typed errors; each says which HTTP answer the /mcp route gives, so
// the mapping lives next to the rule that causes it.
import type { OutboundEvent } from "../bridge/message-stream.ts";

/** BROKER_MAX_SESSIONS reached with every session busy (none to evict), or the broker is shutting down → 503 with Retry-After. */
export class SessionLimitError extends Error {
  override readonly name = "SessionLimitError";
  readonly status = 503;
  constructor(
    message: string,
    readonly retryAfterS: number,
  ) {
    super(message);
  }
}

/** BROKER_MAX_SESSIONS_PER_USER reached with every session of the user busy (none to evict) → 429 with Retry-After. */
export class UserSessionLimitError extends Error {
  override readonly name = "UserSessionLimitError";
  readonly status = 429;
  constructor(
    message: string,
    readonly retryAfterS: number,
  ) {
    super(message);
  }
}

/** Unknown, ended or malformed Mcp-Session-Id → 404 (clients re-initialize on 404). */
export class SessionNotFoundError extends Error {
  override readonly name = "SessionNotFoundError";
  readonly status = 404;
  constructor() {
    super("session not found");
  }
}

/** The session belongs to another grant → 403. */
export class SessionForbiddenError extends Error {
  override readonly name = "SessionForbiddenError";
  readonly status = 403;
  constructor() {
    super("this session belongs to another authorization");
  }
}

/** Every token of the session's sign-in was revoked while it started → 401, as its next request would get. */
export class SessionRevokedError extends Error {
  override readonly name = "SessionRevokedError";
  readonly status = 401;
  constructor() {
    super("the sign-in was revoked while the session started");
  }
}

/**
 * The child could not start or exited before answering initialize → 502 with a JSON-RPC error
 * (code -32000) with this message; the child's last stderr line (masked) is for the broker log only.
 */
export class SessionStartError extends Error {
  override readonly name = "SessionStartError";
  readonly status = 502;
  constructor(
    message: string,
    readonly lastStderrLine: string | null,
  ) {
    super(message);
  }
}

/**
 * The child answered initialize with a JSON-RPC error → return `events` to the client as they are
 * (status 200, like any JSON-RPC answer), without a session.
 */
export class InitializeRejectedError extends Error {
  override readonly name = "InitializeRejectedError";
  readonly status = 200;
  constructor(readonly events: OutboundEvent[]) {
    super("the MCP server refused initialize");
  }
}

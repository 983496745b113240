// Each /mcp refusal renders itself: HTTP status, JSON-RPC code and message under the request's id, its
// own headers beside the route's, and the two that send the client through sign-in as RFC 6750 401s.
import { describe, expect, test } from "bun:test";
import { createMemoryLogger } from "../../src/log.ts";
import {
  ForgejoUnreachableError,
  InvalidEventIdError,
  McpRefusal,
  MessageTooLargeError,
  SessionForbiddenError,
  SessionLimitError,
  SessionNotFoundError,
  SessionRevokedError,
  SessionStartError,
  SignInEndedError,
  StreamConflictError,
  UserSessionLimitError,
  type RefusalContext,
} from "../../src/session/errors.ts";
import { failureRef, loggedUnder } from "../helpers/failure-report.ts";

function context() {
  const logger = createMemoryLogger();
  const refusalContext: RefusalContext = {
    logger,
    unauthorized: (description) =>
      Response.json({ error: "invalid_token", error_description: description }, { status: 401, headers: { "WWW-Authenticate": `Bearer error="invalid_token"` } }),
  };
  return { logger, refusalContext };
}

describe("a refusal as a JSON-RPC error", () => {
  const cases: { refusal: McpRefusal; status: number; code: number; message: string; headers?: Record<string, string> }[] = [
    { refusal: new McpRefusal(415, -32000, "Unsupported Media Type"), status: 415, code: -32000, message: "Unsupported Media Type" },
    { refusal: new SessionLimitError("at the limit", 12), status: 503, code: -32000, message: "at the limit", headers: { "retry-after": "12" } },
    { refusal: new UserSessionLimitError("your limit", 3), status: 429, code: -32000, message: "your limit", headers: { "retry-after": "3" } },
    { refusal: new SessionNotFoundError(), status: 404, code: -32001, message: "Session not found" },
    { refusal: new SessionForbiddenError(), status: 403, code: -32000, message: "this session belongs to another authorization" },
    { refusal: new MessageTooLargeError(300, 200), status: 413, code: -32600, message: "message of 300 bytes is over the limit of 200 bytes" },
    { refusal: new StreamConflictError(), status: 409, code: -32000, message: "this session already has an open standalone SSE stream" },
    { refusal: new InvalidEventIdError("7_3"), status: 400, code: -32000, message: "Last-Event-ID is not an event id of this session" },
    {
      refusal: new ForgejoUnreachableError(),
      status: 503,
      code: -32000,
      message: "Forgejo could not be reached to refresh the user's token; try again shortly",
      headers: { "retry-after": "10" },
    },
  ];
  for (const { refusal, status, code, message, headers } of cases) {
    test(`${refusal.name}: ${status} ${code}`, async () => {
      const response = refusal.toResponse(5, context().refusalContext, { "Mcp-Session-Id": "abc" });
      expect(response.status).toBe(status);
      expect(response.headers.get("content-type")).toBe("application/json");
      expect(response.headers.get("mcp-session-id")).toBe("abc");
      for (const [name, value] of Object.entries(headers ?? {})) expect(response.headers.get(name)).toBe(value);
      expect(await response.json()).toEqual({ jsonrpc: "2.0", id: 5, error: { code, message } });
    });
  }

  test("a child that could not start: the client reads a reference, the log holds the child's last stderr line under it", async () => {
    const { logger, refusalContext } = context();
    const response = new SessionStartError("the MCP server exited before answering initialize", "panic: 401").toResponse(null, refusalContext);
    expect(response.status).toBe(502);
    const body = (await response.json()) as { id: unknown; error: { code: number; message: string } };
    const ref = failureRef(body.error.message, "the MCP server exited before answering initialize");
    expect(ref).not.toBeNull();
    expect([body.id, body.error.code]).toEqual([null, -32000]);
    expect(loggedUnder(logger.lines, ref!)).toEqual([expect.objectContaining({ last_stderr_line: "panic: 401" })]);
  });

  test("a failure its channel reported already keeps that one reference, and is not logged again", async () => {
    const { logger, refusalContext } = context();
    const reported = "the MCP server exited (the broker log has the details under ref 0123456789ab)";
    const body = (await new SessionStartError(reported, "panic: 401").toResponse(null, refusalContext).json()) as { error: { message: string } };
    expect([body.error.message, logger.lines]).toEqual([reported, []]);
  });
});

describe("a refusal that sends the client through sign-in again", () => {
  for (const [refusal, description] of [
    [new SessionRevokedError(), "The access token was revoked while the session started"],
    [new SignInEndedError(), "The sign-in to Forgejo has ended; sign in again"],
  ] as const) {
    test(`${refusal.name}: the route's 401 with its challenge`, async () => {
      const response = refusal.toResponse(1, context().refusalContext);
      expect(response.status).toBe(401);
      expect(response.headers.get("www-authenticate")).toBe(`Bearer error="invalid_token"`);
      expect(await response.json()).toEqual({ error: "invalid_token", error_description: description });
    });
  }
});

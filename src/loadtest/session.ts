// One MCP caller over Streamable HTTP with fetch: a legacy session (initialize, tools/call, DELETE) or a
// modern 2026-07-28 caller (server/discover, then self-describing tools/calls); one exchange path for both.

import { META } from "../modern/versions.ts";
import { readSseResponse, type JsonRpcMessage } from "./sse.ts";

export const PROTOCOL_VERSION = "2025-11-25";
export const MODERN_PROTOCOL_VERSION = "2026-07-28";

/** legacy: one session per caller (initialize, Mcp-Session-Id); modern: stateless, every request carries its envelope. */
export type Era = "legacy" | "modern";
export const ERAS: readonly Era[] = ["legacy", "modern"];

const CLIENT_INFO = { name: "forgejo-mcp-broker-loadtest", version: "0.1.0" };

export type FailureKind = "http" | "jsonrpc" | "tool" | "network" | "timeout" | "protocol";

/** Allocated only when something went wrong; success is `null`, so the hot path allocates nothing. */
export interface Failure {
  kind: FailureKind;
  /** HTTP status, JSON-RPC error code, or the network error's code: groups failures in the report. */
  detail: string;
  message: string;
  /** Set on a 401, so the caller can show the server's challenge. */
  wwwAuthenticate?: string | null;
}

export interface Target {
  url: string;
  /** Sent as `Authorization: Bearer …` when given. */
  token?: string;
  fetch: typeof fetch;
  /** Default legacy. */
  era?: Era;
}

export interface CallSpec {
  tool: string;
  args: unknown;
}

/** A header value as the spec carries it: printable ASCII as is, anything else as `=?base64?…?=` of its UTF-8. */
export function headerValue(value: string): string {
  return /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/.test(value) ? value : `=?base64?${Buffer.from(value, "utf8").toString("base64")}?=`;
}

export interface RequestShape {
  /** The JSON body around its id: `prefix + id + suffix`, so a timed call only joins strings. */
  prefix: string;
  suffix: string;
  /** Headers beyond content-type, accept and authorization. */
  headers: Record<string, string>;
}

/**
 * A request of `era`: legacy params as they are (the session's headers say the rest); modern params
 * with the `_meta` envelope (version, capabilities, client info) and the MCP-Protocol-Version,
 * Mcp-Method and Mcp-Name headers the broker checks against the body.
 */
export function requestShape(era: Era, method: string, params: Record<string, unknown>): RequestShape {
  if (era === "legacy") {
    return { prefix: '{"jsonrpc":"2.0","id":', suffix: `,"method":${JSON.stringify(method)},"params":${JSON.stringify(params)}}`, headers: {} };
  }
  const meta = { [META.protocolVersion]: MODERN_PROTOCOL_VERSION, [META.clientCapabilities]: {}, [META.clientInfo]: CLIENT_INFO };
  const modernParams = { ...params, _meta: meta };
  const headers: Record<string, string> = { "mcp-protocol-version": MODERN_PROTOCOL_VERSION, "mcp-method": method };
  const named = method === "resources/read" ? params.uri : method === "tools/call" || method === "prompts/get" ? params.name : undefined;
  if (typeof named === "string") headers["mcp-name"] = headerValue(named);
  return { prefix: '{"jsonrpc":"2.0","id":', suffix: `,"method":${JSON.stringify(method)},"params":${JSON.stringify(modernParams)}}`, headers };
}

function setHeaders(target: Headers, headers: Record<string, string>): void {
  for (const [name, value] of Object.entries(headers)) target.set(name, value);
}

export class McpHttpSession {
  /** Set after initialize (modern: after server/discover): the protocol version spoken and the server's session id (legacy, if stateful). */
  protocolVersion: string | null = null;
  sessionId: string | null = null;
  /** performance.now() when the current request began, or -1: read by the timeout watchdog. */
  startedAt = -1;

  private readonly headers: Headers;
  private readonly init: { method: string; headers: Headers; body: string | null; signal: AbortSignal };
  /** The response of the last exchange that had an id: a field rather than a return value, so a call allocates no result object. */
  private lastMessage: JsonRpcMessage | null = null;
  private readonly era: Era;
  private readonly callShape: RequestShape;
  private readonly decoder = new TextDecoder();
  private controller = new AbortController();
  /** Why the request in flight was aborted, so its rejection is reported as what it is. */
  private abortReason: "timeout" | "stop" | null = null;
  private nextId = 1;

  constructor(
    private readonly target: Target,
    call: CallSpec,
    private readonly now: () => number,
  ) {
    this.headers = new Headers({
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
    });
    if (target.token !== undefined) this.headers.set("authorization", `Bearer ${target.token}`);
    this.init = { method: "POST", headers: this.headers, body: null, signal: this.controller.signal };
    this.era = target.era ?? "legacy";
    this.callShape = requestShape(this.era, "tools/call", { name: call.tool, arguments: call.args });
  }

  /** Aborts the request in flight as a timeout; the session stays usable for the next request. */
  timeout(): void {
    this.interrupt("timeout");
  }

  /** Aborts the request in flight because the run is stopping; a DELETE can still follow. */
  abort(): void {
    this.interrupt("stop");
  }

  private interrupt(reason: "timeout" | "stop"): void {
    this.abortReason = reason;
    this.controller.abort();
    // The request in flight holds the old signal; the next one must not start out aborted.
    this.controller = new AbortController();
    this.init.signal = this.controller.signal;
  }

  /** Legacy: initialize and notifications/initialized. Modern: server/discover, which must offer 2026-07-28. */
  async initialize(): Promise<Failure | null> {
    if (this.era === "modern") return this.discover();
    const id = this.nextId++;
    this.init.body = JSON.stringify({
      jsonrpc: "2.0",
      id,
      method: "initialize",
      params: {
        protocolVersion: PROTOCOL_VERSION,
        capabilities: {},
        clientInfo: CLIENT_INFO,
      },
    });
    let sessionId: string | null = null;
    const failure = await this.exchange(id, (response) => {
      sessionId = response.headers.get("mcp-session-id");
    });
    if (failure !== null) return failure;
    const version = this.lastMessage?.result?.protocolVersion;
    if (typeof version !== "string") {
      return { kind: "protocol", detail: "initialize", message: "InitializeResult has no protocolVersion" };
    }
    this.protocolVersion = version;
    this.headers.set("mcp-protocol-version", version);
    if (sessionId !== null) {
      this.sessionId = sessionId;
      this.headers.set("mcp-session-id", sessionId);
    }
    this.init.body = '{"jsonrpc":"2.0","method":"notifications/initialized"}';
    return this.exchange(null);
  }

  private async discover(): Promise<Failure | null> {
    const id = this.nextId++;
    const shape = requestShape("modern", "server/discover", {});
    setHeaders(this.headers, shape.headers);
    this.init.body = shape.prefix + id + shape.suffix;
    const failure = await this.exchange(id);
    if (failure !== null) return failure;
    const versions = this.lastMessage?.result?.supportedVersions;
    if (!Array.isArray(versions) || !versions.includes(MODERN_PROTOCOL_VERSION)) {
      return { kind: "protocol", detail: "server/discover", message: `server/discover does not offer ${MODERN_PROTOCOL_VERSION}: ${JSON.stringify(versions)}` };
    }
    this.protocolVersion = MODERN_PROTOCOL_VERSION;
    // Only tools/calls follow: their headers are set once, not per call.
    setHeaders(this.headers, this.callShape.headers);
    return null;
  }

  /** One tools/call; a tool result with isError counts as a failure of kind "tool". */
  async call(): Promise<Failure | null> {
    const id = this.nextId++;
    this.init.body = this.callShape.prefix + id + this.callShape.suffix;
    return this.exchange(id);
  }

  /** Ends the session on the server (a modern caller has none). 2xx is success; 405 means the server does not allow it. */
  async close(): Promise<Failure | null> {
    if (this.sessionId === null) return null;
    this.init.method = "DELETE";
    this.init.body = null;
    try {
      return await this.exchange(null);
    } finally {
      this.init.method = "POST";
    }
  }

  /**
   * Sends the prepared request. With an id, waits for the JSON-RPC response with that id
   * (JSON or SSE); without one (a notification or DELETE), any 2xx is success.
   */
  private async exchange(
    id: number | null,
    onResponse?: (response: Response) => void,
  ): Promise<Failure | null> {
    this.startedAt = this.now();
    this.lastMessage = null;
    this.abortReason = null;
    try {
      const response = await this.target.fetch(this.target.url, this.init);
      if (response.status < 200 || response.status > 299) {
        const text = await response.text();
        return {
          kind: "http",
          detail: String(response.status),
          message: `HTTP ${response.status}${text ? `: ${text.slice(0, 200)}` : ""}`,
          wwwAuthenticate: response.status === 401 ? response.headers.get("www-authenticate") : undefined,
        };
      }
      onResponse?.(response);
      if (id === null) {
        await response.body?.cancel();
        return null;
      }
      const type = response.headers.get("content-type") ?? "";
      let message: JsonRpcMessage | null;
      if (type.startsWith("text/event-stream")) {
        if (response.body === null) message = null;
        else message = await readSseResponse(response.body, id, this.decoder);
      } else if (type.startsWith("application/json")) {
        message = (await response.json()) as JsonRpcMessage;
        if (message?.id !== id) {
          return { kind: "protocol", detail: "id", message: `response id ${JSON.stringify(message?.id)}, expected ${id}` };
        }
      } else {
        await response.body?.cancel();
        return { kind: "protocol", detail: "content-type", message: `unexpected content-type ${JSON.stringify(type)}` };
      }
      if (message === null) {
        return { kind: "protocol", detail: "sse", message: "the event stream ended without the response" };
      }
      if (message.error !== undefined) {
        return { kind: "jsonrpc", detail: String(message.error.code), message: String(message.error.message) };
      }
      if (message.result?.isError === true) {
        return { kind: "tool", detail: "isError", message: JSON.stringify(message.result).slice(0, 200) };
      }
      this.lastMessage = message;
      return null;
    } catch (error) {
      return this.classify(error);
    } finally {
      this.startedAt = -1;
    }
  }

  private classify(error: unknown): Failure {
    if (this.abortReason === "timeout") return { kind: "timeout", detail: "timeout", message: "no response within the timeout" };
    if (this.abortReason === "stop") return { kind: "network", detail: "aborted", message: "the run was stopped" };
    if (error instanceof SyntaxError) return { kind: "protocol", detail: "json", message: error.message };
    const code = (error as { code?: unknown }).code;
    const message = error instanceof Error ? error.message : String(error);
    return { kind: "network", detail: typeof code === "string" ? code : "error", message };
  }
}

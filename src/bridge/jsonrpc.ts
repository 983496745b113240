// JSON-RPC 2.0 messages as the bridge sees them: classified for routing and forwarded as received,
// rebuilt only where the broker must own an id, so no field a client or server sends is ever lost.

export type JsonRpcId = string | number;

/** A parsed message; only the routing fields are typed, everything else is carried as is. */
export interface JsonRpcMessage {
  jsonrpc?: unknown;
  id?: unknown;
  method?: unknown;
  params?: unknown;
  result?: unknown;
  error?: unknown;
  [field: string]: unknown;
}

/** A message together with the exact text it arrived as; the text is what gets forwarded. */
export interface IncomingMessage {
  raw: string;
  message: JsonRpcMessage;
}

export type MessageKind = "request" | "notification" | "response";

export const ErrorCode = {
  ParseError: -32700,
  InvalidRequest: -32600,
  MethodNotFound: -32601,
  InvalidParams: -32602,
  InternalError: -32603,
  /** The SDKs' "connection closed": the server process went away. */
  ConnectionClosed: -32000,
  RequestTimeout: -32001,
  /**
   * A child's request the client has no channel to receive (it takes only JSON and has no GET stream
   * open). From the implementation-defined server range like the transport errors, not -32601: the
   * client may well support the method, it just cannot be reached now.
   */
  Undeliverable: -32003,
} as const;

export function isJsonRpcId(value: unknown): value is JsonRpcId {
  return typeof value === "string" || (typeof value === "number" && Number.isFinite(value));
}

/** Map key for an id: 1 and "1" are different ids. */
export function idKey(id: JsonRpcId): string {
  return typeof id === "string" ? `s:${id}` : `n:${id}`;
}

export function classify(message: JsonRpcMessage): MessageKind | null {
  if (message.jsonrpc !== "2.0") return null;
  if (typeof message.method === "string") {
    if (!("id" in message)) return "notification";
    return isJsonRpcId(message.id) ? "request" : null;
  }
  if (("result" in message || "error" in message) && (isJsonRpcId(message.id) || message.id === null)) return "response";
  return null;
}

export type ParseOutcome =
  | { ok: true; incoming: IncomingMessage; kind: MessageKind }
  | { ok: false; problem: "parse" | "batch" | "invalid" };

/** Parses one message as received; a batch (array) is reported separately because 2025-11-25 refuses it. */
export function parseMessage(raw: string): ParseOutcome {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    return { ok: false, problem: "parse" };
  }
  if (Array.isArray(value)) return { ok: false, problem: "batch" };
  if (value === null || typeof value !== "object") return { ok: false, problem: "invalid" };
  const message = value as JsonRpcMessage;
  const kind = classify(message);
  if (kind === null) return { ok: false, problem: "invalid" };
  return { ok: true, incoming: { raw, message }, kind };
}

export function errorResponse(id: JsonRpcId | null, code: number, message: string, data?: unknown): string {
  const error = data === undefined ? { code, message } : { code, message, data };
  return JSON.stringify({ jsonrpc: "2.0", id, error });
}

export function notification(method: string, params: Record<string, unknown>): string {
  return JSON.stringify({ jsonrpc: "2.0", method, params });
}

/**
 * One line for newline-delimited stdio. Raw CR and LF can only be whitespace between tokens in
 * valid JSON (inside strings they must be escaped), so replacing them keeps the message intact.
 */
export function toLine(raw: string): string {
  return /[\r\n]/.test(raw) ? raw.replace(/\r\n|\r|\n/g, " ") : raw;
}

/** The message text with only its id changed, for the rare cases the broker must own an id. */
export function withId(message: JsonRpcMessage, id: JsonRpcId): string {
  return JSON.stringify({ ...message, id });
}

// The rules a modern (2026-07-28) request must meet before it reaches a child: a supported version,
// the required _meta, and the MCP-Protocol-Version, Mcp-Method and Mcp-Name headers agreeing with the body.
import { ErrorCode, type JsonRpcMessage } from "../bridge/jsonrpc.ts";
import { McpRefusal } from "../session/errors.ts";
import { ALL_PROTOCOL_VERSIONS, isModernVersion, META, metaOf } from "./versions.ts";

/** The spec's codes for a header missing or disagreeing with the body, and for an unsupported version. */
export const HEADER_MISMATCH = -32020;
export const UNSUPPORTED_VERSION = -32022;

/** The methods whose Mcp-Name header names the tool, prompt or resource, and where in params it is. */
const NAMED_BY: Record<string, "name" | "uri"> = { "tools/call": "name", "prompts/get": "name", "resources/read": "uri" };

const ENCODED = /^=\?base64\?([A-Za-z0-9+/]*={0,2})\?=$/;

/** A header value with the spec's `=?base64?…?=` form decoded (UTF-8); null when that form is malformed. */
export function decodeHeaderValue(value: string): string | null {
  const trimmed = value.trim();
  if (!trimmed.startsWith("=?base64?")) return trimmed;
  const match = ENCODED.exec(trimmed);
  if (match === null) return null;
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(Buffer.from(match[1]!, "base64"));
  } catch {
    return null;
  }
}

/** Throws McpRefusal (400) for the first rule `message`, claiming `version`, breaks. */
export function checkModernRequest(message: JsonRpcMessage, version: string, headers: Headers): void {
  const meta = metaOf(message.params)!;
  const capabilities = meta[META.clientCapabilities];
  if (capabilities === null || typeof capabilities !== "object" || Array.isArray(capabilities)) {
    throw new McpRefusal(400, ErrorCode.InvalidParams, `Invalid params: _meta["${META.clientCapabilities}"] is required on every request`);
  }
  // A header that disagrees with the body is the client's transport fault, whatever the version it names.
  expectHeader(headers, "MCP-Protocol-Version", version);
  if (!isModernVersion(version)) {
    throw new McpRefusal(400, UNSUPPORTED_VERSION, `Unsupported protocol version ${JSON.stringify(version)}`, {}, {
      data: { supported: ALL_PROTOCOL_VERSIONS, requested: version },
    });
  }
  const method = String(message.method);
  expectHeader(headers, "Mcp-Method", method);
  const field = NAMED_BY[method];
  if (field !== undefined) {
    const named = (message.params as Record<string, unknown>)[field];
    expectHeader(headers, "Mcp-Name", typeof named === "string" ? named : "");
  }
}

function expectHeader(headers: Headers, name: string, expected: string): void {
  const value = headers.get(name);
  if (value === null) throw new McpRefusal(400, HEADER_MISMATCH, `Header mismatch: the ${name} header is required`);
  const decoded = decodeHeaderValue(value);
  if (decoded === null) throw new McpRefusal(400, HEADER_MISMATCH, `Header mismatch: the ${name} header is not valid =?base64?…?= text`);
  if (decoded !== expected) {
    throw new McpRefusal(400, HEADER_MISMATCH, `Header mismatch: ${name} ${JSON.stringify(decoded)} does not match the body's ${JSON.stringify(expected)}`);
  }
}

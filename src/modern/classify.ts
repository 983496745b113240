// Which era a POST to /mcp belongs to, decided from its body as the SDK's classifier does: a request
// claiming a protocol version in params._meta is modern; initialize and anything unclaimed is legacy.
import { ErrorCode, type JsonRpcMessage, type MessageKind } from "../bridge/jsonrpc.ts";
import { McpRefusal } from "../session/errors.ts";
import { isModernVersion, META, metaOf } from "./versions.ts";

export type Era = { era: "legacy" } | { era: "modern"; version: string };

/**
 * The era of one parsed message; `headerVersion` is MCP-Protocol-Version (null when absent), which
 * never changes what the body says but must not claim a modern version the body does not.
 * Throws McpRefusal (400): a malformed claim, a modern header on an unclaimed request or on a response.
 */
export function classifyPost(message: JsonRpcMessage, kind: MessageKind, headerVersion: string | null): Era {
  const modernHeader = headerVersion !== null && isModernVersion(headerVersion.trim());
  if (kind === "response") {
    if (modernHeader) throw new McpRefusal(400, ErrorCode.InvalidRequest, "Invalid Request: a client of MCP 2026-07-28 must not send JSON-RPC responses");
    return { era: "legacy" };
  }
  const meta = metaOf(message.params);
  if (meta !== null && META.protocolVersion in meta) {
    const claimed = meta[META.protocolVersion];
    if (typeof claimed !== "string" || claimed === "") {
      throw new McpRefusal(400, ErrorCode.InvalidParams, `Invalid params: _meta["${META.protocolVersion}"] must be a protocol version string`);
    }
    return { era: "modern", version: claimed };
  }
  if (modernHeader) {
    throw new McpRefusal(
      400,
      ErrorCode.InvalidParams,
      `Invalid params: MCP-Protocol-Version ${headerVersion!.trim()} needs params._meta["${META.protocolVersion}"] and ["${META.clientCapabilities}"] on every request`,
    );
  }
  return { era: "legacy" };
}

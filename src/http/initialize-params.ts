// The fields of an `initialize` request the broker relies on (MCP 2025-11-25 InitializeRequestParams),
// checked before any child is started, so a malformed one is refused at once instead of left unanswered.

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** Null when `params` can be handed to a child; otherwise what is wrong, for a -32602 message. */
export function initializeParamsProblem(params: unknown): string | null {
  if (!isObject(params)) return "params must be an object";
  if (typeof params.protocolVersion !== "string" || params.protocolVersion.trim() === "") {
    return "params.protocolVersion must be a non-empty string";
  }
  if (!isObject(params.capabilities)) return "params.capabilities must be an object";
  if (!isObject(params.clientInfo)) return "params.clientInfo must be an object";
  if (typeof params.clientInfo.name !== "string") return "params.clientInfo.name must be a string";
  if (typeof params.clientInfo.version !== "string") return "params.clientInfo.version must be a string";
  return null;
}

// What another replica wrote (a Redis value, a channel message) is read defensively: the fields of a JSON object,
// or undefined for anything else (a damaged value, another version's, a stray publish); each reader checks its fields.

export function parseJsonObject(text: unknown): Record<string, unknown> | undefined {
  if (typeof text !== "string") return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

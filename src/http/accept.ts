// Which reply formats a Streamable HTTP client takes, read from its Accept header (RFC 9110
// §12.5.1): JSON, SSE, both or neither; remembered per header text since clients repeat theirs.

export interface AcceptedReplies {
  json: boolean;
  sse: boolean;
}

/** Whether an Accept header admits `type` (absent or empty = anything; q=0 = refused). */
export function accepts(header: string | null, type: string): boolean {
  if (header === null || header.trim() === "") return true;
  const [major] = type.split("/");
  return header.split(",").some((range) => {
    const [media = "", ...params] = range.split(";").map((part) => part.trim().toLowerCase());
    const q = params.find((param) => param.startsWith("q="));
    if (q !== undefined && !(Number(q.slice(2)) > 0)) return false;
    return media === type || media === `${major}/*` || media === "*/*";
  });
}

const MAX_REMEMBERED = 64;
const remembered = new Map<string, AcceptedReplies>();

/** JSON and SSE admission for one Accept header; every message of a session sends the same one. */
export function acceptedReplies(header: string | null): AcceptedReplies {
  const key = header ?? "";
  const known = remembered.get(key);
  if (known !== undefined) return known;
  const replies = { json: accepts(header, "application/json"), sse: accepts(header, "text/event-stream") };
  if (remembered.size >= MAX_REMEMBERED) remembered.clear();
  remembered.set(key, replies);
  return replies;
}

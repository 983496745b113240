// The protected resource a request names (RFC 8707), read the way clients write it: the MCP endpoint's
// URL with a trailing slash is the same resource, so a client that adds one is not refused for it.

/** `requested`, or the resource URL itself when `requested` is that URL with a trailing slash. */
export function canonicalResource(requested: string | undefined, resourceUrl: string): string | undefined {
  return requested === `${resourceUrl}/` ? resourceUrl : requested;
}

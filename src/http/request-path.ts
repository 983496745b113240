// The path of a request URL without building a URL object: Bun hands every handler an absolute
// URL, and parsing one whole on each /mcp message only to read its path costs more than the rest.

/**
 * How the router is told to find the path. Elysia's default assumes a host of at least four
 * characters and searches for the path's "/" from index 11 (`http://a.bc/`): with `Host: x` it skips
 * the real path's first segment (`http://x/.well-known/mcp` routes as `/mcp`). From index 7, right
 * after `http://`, it finds the same "/" as requestPath for every absolute http URL.
 */
export const ROUTER_CONFIG = { handler: { standardHostname: false } } as const;

/** The path of an absolute URL (`http://host:port/path?query#frag` → `/path`); `/` when it has none. */
export function requestPath(url: string): string {
  const scheme = url.indexOf("://");
  const start = url.indexOf("/", scheme === -1 ? 0 : scheme + 3);
  if (start === -1) return "/";
  let end = url.length;
  const query = url.indexOf("?", start);
  if (query !== -1) end = query;
  const fragment = url.indexOf("#", start);
  if (fragment !== -1 && fragment < end) end = fragment;
  return url.slice(start, end);
}

/** The path Elysia's router (with ROUTER_CONFIG) matches, derived the way its compiled handler does. */
export function routerPath(url: string): string {
  const start = url.indexOf("/", 7);
  const query = url.indexOf("?", start + 1);
  return url.substring(start, query === -1 ? undefined : query);
}

/**
 * Whether the router, CORS, the log and the bearer query check all read this URL the same way.
 * Bun hands over a host-less URL (`/.well-known/mcp`) when the Host header is empty or invalid.
 */
export function isRoutable(url: string): boolean {
  return url.startsWith("http://") && routerPath(url) === requestPath(url);
}

/** Whether the URL has a query string parameter `name`; the URL is parsed only when it has a query at all. */
export function hasQueryParam(url: string, name: string): boolean {
  return url.includes("?") && new URL(url).searchParams.has(name);
}

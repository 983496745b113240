// The path of a request URL without building a URL object: Bun hands every handler an absolute
// URL, and parsing one whole on each /mcp message only to read its path costs more than the rest.

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

/** Whether the URL has a query string parameter `name`; the URL is parsed only when it has a query at all. */
export function hasQueryParam(url: string, name: string): boolean {
  return url.includes("?") && new URL(url).searchParams.has(name);
}

// Redirect-URI rules for registration and authorization (OAuth 2.1 §2.3.1, RFC 8252 §7, MCP):
// https anywhere, http only on loopback, private-use schemes (cursor:, com.example.app:) for native apps.

const LOOPBACK_HOSTS = new Set(["localhost", "127.0.0.1", "[::1]"]);

/** A hostname (as URL.hostname gives it) that names this computer. */
export function isLoopbackHost(hostname: string): boolean {
  return LOOPBACK_HOSTS.has(hostname);
}
/** Schemes a browser would run, read locally or hand to something other than the app that asked: never a redirect target. */
const REFUSED_SCHEMES = new Set([
  "javascript:", "data:", "file:", "vbscript:", "blob:", "about:", "filesystem:", "view-source:", "ftp:", "ws:", "wss:",
  "mailto:", "tel:", "sms:", "intent:", "chrome:", "chrome-extension:", "moz-extension:", "resource:", "jar:",
]);

export type RedirectUriVerdict = { ok: true } | { ok: false; reason: string };

/** Whether a client may register this redirect URI. */
export function checkRedirectUri(raw: string): RedirectUriVerdict {
  if (raw.length > 2000) return { ok: false, reason: "is longer than 2000 characters" };
  if (/[\s*]/.test(raw)) return { ok: false, reason: "contains white space or a wildcard" };
  if (raw.includes("#")) return { ok: false, reason: "must not contain a fragment" };
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return { ok: false, reason: "is not an absolute URI" };
  }
  if (REFUSED_SCHEMES.has(url.protocol)) return { ok: false, reason: `uses the refused scheme ${url.protocol}` };
  if (url.username || url.password) return { ok: false, reason: "must not carry credentials" };
  if (url.protocol === "https:") {
    return url.hostname ? { ok: true } : { ok: false, reason: "has no host" };
  }
  if (url.protocol === "http:") {
    return isLoopbackHost(url.hostname)
      ? { ok: true }
      : { ok: false, reason: "uses http, which is allowed only for localhost, 127.0.0.1 and [::1]" };
  }
  // RFC 8252 §7.1 asks for reverse-DNS private-use schemes, but clients people use register others (cursor:, vscode:).
  return url.protocol.length > 2 ? { ok: true } : { ok: false, reason: `uses the one-letter scheme ${url.protocol}, which reads as a Windows drive` };
}

/**
 * Why redirect URIs do not fit the declared application_type, as OpenID Connect Dynamic Registration §2 rules:
 * a web client's are https off loopback; a native client's are private-use schemes or http on loopback.
 */
export function applicationTypeProblem(applicationType: "web" | "native", uris: string[]): string | undefined {
  for (const uri of uris) {
    const url = new URL(uri);
    const web = url.protocol === "https:" && !isLoopbackHost(url.hostname);
    const native = (url.protocol !== "https:" && url.protocol !== "http:") || (url.protocol === "http:" && isLoopbackHost(url.hostname));
    if (applicationType === "web" && !web) return `redirect_uri ${JSON.stringify(uri.slice(0, 200))} does not suit application_type web, which allows only https off loopback`;
    if (applicationType === "native" && !native) return `redirect_uri ${JSON.stringify(uri.slice(0, 200))} does not suit application_type native, which allows only private-use schemes and http on loopback`;
  }
  return undefined;
}

/**
 * The redirect URI an authorization request resolves to, or null: an exact match, except that a loopback
 * http URI matches on any port (RFC 8252 §7.3), since a native app takes whatever port is free when it starts.
 */
export function resolveRedirectUri(requested: string | undefined, registered: string[]): string | null {
  if (requested === undefined) return registered.length === 1 ? registered[0]! : null;
  if (registered.includes(requested)) return requested;
  const portless = loopbackWithoutPort(requested);
  return portless !== undefined && registered.some((uri) => loopbackWithoutPort(uri) === portless) ? requested : null;
}

/** A loopback http URI written without its port, for comparing; undefined for any other URI. */
function loopbackWithoutPort(raw: string): string | undefined {
  if (!/^http:\/\//.test(raw) || !URL.canParse(raw)) return undefined;
  const url = new URL(raw);
  if (!isLoopbackHost(url.hostname) || url.username || url.password || url.hash) return undefined;
  // The URI must be what it parses to (apart from the port), so "exact" still means character for character elsewhere.
  const rest = raw.replace(/^http:\/\/(\[[^\]]*\]|[^/:?#]*)(:\d+)?/, "");
  if (`${url.pathname}${url.search}` !== rest) return undefined;
  return `http://${url.hostname}${rest}`;
}

/** Appends query parameters to a redirect URI, keeping the ones it already has. */
export function withQuery(redirectUri: string, params: Record<string, string | null | undefined>): string {
  const url = new URL(redirectUri);
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) url.searchParams.set(key, value);
  }
  return url.href;
}

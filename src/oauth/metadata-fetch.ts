// Fetches a client's metadata document from the URL a stranger named as its client_id, without letting
// that URL reach anything but a public host: vetted addresses only, one request, bounded in time and size.
import { lookup as dnsLookup } from "node:dns/promises";
import type { Timers } from "../supervisor/timers.ts";
import { isLoopbackAddress, isPublicAddress } from "./public-address.ts";

export const METADATA_FETCH_TIMEOUT_MS = 5_000;
export const METADATA_MAX_BYTES = 16 * 1024;

export interface MetadataFetchDeps {
  /** Every address the host name resolves to; an IP literal resolves to itself. */
  lookup: (hostname: string) => Promise<string[]>;
  /**
   * Sends one GET for `url` to `address` and nothing else: the URL's own host goes in TLS SNI and the
   * Host header, so the certificate is checked against the name while the socket goes to the vetted address.
   */
  connect: (url: URL, address: string, signal: AbortSignal) => Promise<Response>;
  timers: Timers;
  /** `host:port` entries that may be fetched over http and on loopback: tests and local development only. */
  insecureHosts: ReadonlySet<string>;
}

export type FetchedDocument = { ok: true; body: unknown; maxAgeMs: number | undefined } | { ok: false; reason: string };

/** `host:port` as BROKER_CIMD_INSECURE_HOSTS spells it, with the scheme's default port made explicit. */
export function hostPortOf(url: URL): string {
  return `${url.hostname}:${url.port || (url.protocol === "http:" ? "80" : "443")}`;
}

class Refusal extends Error {}

/** GETs the document, refusing (with a reason fit for the user's error page) whatever breaks a rule. */
export async function fetchMetadataDocument(url: URL, deps: MetadataFetchDeps): Promise<FetchedDocument> {
  const controller = new AbortController();
  let timedOut = false;
  const timer = deps.timers.setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, METADATA_FETCH_TIMEOUT_MS);
  const timeout = new Promise<never>((_, reject) => controller.signal.addEventListener("abort", () => reject(new Refusal("timed out"))));
  try {
    return await Promise.race([fetchWithin(url, deps, controller.signal), timeout]);
  } catch (error) {
    if (timedOut) return { ok: false, reason: `did not answer within ${METADATA_FETCH_TIMEOUT_MS / 1000} s` };
    if (error instanceof Refusal) return { ok: false, reason: error.message };
    return { ok: false, reason: `could not be fetched (${failureName(error)})` };
  } finally {
    deps.timers.clearTimeout(timer);
    controller.abort();
  }
}

async function fetchWithin(url: URL, deps: MetadataFetchDeps, signal: AbortSignal): Promise<FetchedDocument> {
  const insecureAllowed = deps.insecureHosts.has(hostPortOf(url));
  if (url.protocol !== "https:" && !(url.protocol === "http:" && insecureAllowed)) throw new Refusal("is not an https URL");
  const hostname = url.hostname.replace(/^\[|\]$/g, "");
  const addresses = await deps.lookup(hostname);
  if (addresses.length === 0) throw new Refusal("has a host name that does not resolve");
  // Every address, not just the one used: otherwise a name could pair one public address with a private one.
  const allowed = (address: string) => isPublicAddress(address) || (insecureAllowed && isLoopbackAddress(address));
  if (!addresses.every(allowed)) throw new Refusal("has a host name that resolves to an address that is not public");
  const response = await connectToFirst(url, addresses, deps, signal);
  if (response.status >= 300 && response.status < 400) throw new Refusal(`answered with a redirect (HTTP ${response.status}), which is not followed`);
  if (response.status !== 200) throw new Refusal(`answered HTTP ${response.status}`);
  const type = response.headers.get("content-type")?.split(";")[0]?.trim().toLowerCase();
  if (type !== "application/json") throw new Refusal(`is served as ${type ?? "no content type"}, not application/json`);
  const declared = Number(response.headers.get("content-length") ?? "0");
  if (declared > METADATA_MAX_BYTES) throw new Refusal(`is larger than ${METADATA_MAX_BYTES / 1024} KiB`);
  const text = await readCapped(response, METADATA_MAX_BYTES);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Refusal("is not valid JSON");
  }
  return { ok: true, body, maxAgeMs: maxAgeOf(response.headers.get("cache-control")) };
}

/** Tries the vetted addresses in the resolver's order (an IPv6 one first on a host without IPv6, say) until one connects. */
async function connectToFirst(url: URL, addresses: string[], deps: MetadataFetchDeps, signal: AbortSignal): Promise<Response> {
  let failure: unknown;
  for (const address of addresses) {
    try {
      return await deps.connect(url, address, signal);
    } catch (error) {
      if (signal.aborted) throw error;
      failure = error;
    }
  }
  throw failure;
}

/** A failure by its code (ENOTFOUND, ERR_TLS_CERT_ALTNAME_INVALID, …), not its message, which may name the address connected to. */
function failureName(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string" && /^[\w.-]{1,60}$/.test(code)) return code;
  return error instanceof Error ? error.name : "unknown error";
}

/** Reads the body and stops the moment it passes `cap` bytes, whatever the headers claimed. */
async function readCapped(response: Response, cap: number): Promise<string> {
  if (response.body === null) return "";
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > cap) {
      void reader.cancel().catch(() => {});
      throw new Refusal(`is larger than ${cap / 1024} KiB`);
    }
    chunks.push(value);
  }
  return new TextDecoder("utf-8", { fatal: false }).decode(Buffer.concat(chunks));
}

/** How long the document may be kept, from Cache-Control: 0 for no-store or no-cache, undefined when it does not say. */
export function maxAgeOf(cacheControl: string | null): number | undefined {
  if (cacheControl === null) return undefined;
  const directives = cacheControl.toLowerCase().split(",").map((part) => part.trim());
  if (directives.some((d) => d === "no-store" || d === "no-cache")) return 0;
  const maxAge = directives.map((d) => /^max-age="?(\d+)"?$/.exec(d)).find((match) => match !== null);
  return maxAge ? Number(maxAge[1]) * 1000 : undefined;
}

/** The real lookup: every address the system resolver gives, in its order. */
export async function systemLookup(hostname: string): Promise<string[]> {
  return (await dnsLookup(hostname, { all: true, verbatim: true })).map((entry) => entry.address);
}

/**
 * The real connect: Bun's fetch to the address itself, with the URL's host name as TLS server name
 * and Host header; no redirect followed, no connection kept. `ca` replaces the system roots (tests only).
 */
export function directConnect(ca?: string): MetadataFetchDeps["connect"] {
  return (url, address, signal) => {
    const target = new URL(url);
    target.hostname = address.includes(":") ? `[${address}]` : address;
    return fetch(target, {
      // identity: the 16 KiB cap then counts what was sent, not what a small compressed body expands to.
      headers: { host: url.host, accept: "application/json", "accept-encoding": "identity" },
      redirect: "manual",
      keepalive: false,
      signal,
      tls: { serverName: url.hostname.replace(/^\[|\]$/g, ""), ...(ca === undefined ? {} : { ca }) },
    });
  };
}

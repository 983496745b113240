// Where the metrics are scraped: a listener of their own (BROKER_METRICS_ADDR), or /metrics on the main
// listener for the bearer token BROKER_METRICS_TOKEN only, compared in constant time; never public by accident.
import { timingSafeEqual, createHash } from "node:crypto";
import { requestPath } from "../http/request-path.ts";

export const METRICS_PATH = "/metrics";

type Scrape = () => Promise<Response>;

/** Whether `presented` is the token, in time independent of where they differ (both hashed to one length first). */
function sameToken(presented: string, token: string): boolean {
  const digest = (text: string) => createHash("sha256").update(text).digest();
  return timingSafeEqual(digest(presented), digest(token));
}

const refuse = (status: number, error: string) =>
  new Response(`${error}\n`, {
    status,
    headers: { "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store", ...(status === 401 ? { "WWW-Authenticate": 'Bearer realm="metrics"' } : {}) },
  });

/** /metrics on the main listener: 401 without the token or with another, 405 for other than GET. */
export function metricsBehindToken(token: string, scrape: Scrape): (request: Request) => Promise<Response> {
  return async (request) => {
    const presented = /^Bearer ([^\s]+)$/i.exec(request.headers.get("authorization") ?? "")?.[1];
    if (presented === undefined || !sameToken(presented, token)) return refuse(401, "a bearer token is required for /metrics");
    if (request.method !== "GET" && request.method !== "HEAD") return refuse(405, "use GET");
    return scrape();
  };
}

/** BROKER_METRICS_ADDR names an address the broker cannot listen on: a configuration problem, exit 2. */
export class MetricsListenerError extends Error {
  override readonly name = "MetricsListenerError";
}

/** The separate metrics listener: /metrics and nothing else, no token (it is meant for a loopback or private address). */
export function serveMetrics(address: { host: string; port: number }, scrape: Scrape): ReturnType<typeof Bun.serve> {
  try {
    return listen(address, scrape);
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    const reason = code === "EADDRINUSE" ? "the port is in use" : typeof code === "string" ? code : error instanceof Error ? error.message : String(error);
    throw new MetricsListenerError(`BROKER_METRICS_ADDR: cannot listen on ${address.host}:${address.port}: ${reason}`, { cause: error });
  }
}

function listen(address: { host: string; port: number }, scrape: Scrape): ReturnType<typeof Bun.serve> {
  return Bun.serve({
    hostname: address.host,
    port: address.port,
    fetch: (request) => {
      if (requestPath(request.url) !== METRICS_PATH) return refuse(404, "not found: the metrics are at /metrics");
      if (request.method !== "GET" && request.method !== "HEAD") return refuse(405, "use GET");
      return scrape();
    },
  });
}

// The broker's Prometheus metrics: one prom-client registry per broker (never the global default), the
// counters and histograms its parts record into, and the gauges read at scrape time. Loaded only when metrics are on.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry, Summary } from "prom-client";
import { processRssBytes } from "../supervisor/process-rss.ts";
import {
  mcpMethodLabel,
  type BrokerMetrics,
  type ChildExitReason,
  type Era,
  type EvictedBy,
  type GrantType,
  type McpOutcome,
  type MrtrResult,
  type OAuthEndpoint,
  type ForwardResult,
  type RateLimitedEndpoint,
  type ScrapeSources,
  type UpstreamCall,
  type UpstreamResult,
} from "./metrics.ts";

const noSources: ScrapeSources = { sessions: () => ({ legacy: 0, modern: 0 }), childPids: () => [], continuations: () => 0 };

export class PrometheusMetrics implements BrokerMetrics {
  readonly registry = new Registry();
  private sources: ScrapeSources = noSources;
  private readonly childStarts: Counter<"result">;
  private readonly childStartSeconds: Histogram;
  private readonly childExits: Counter<"reason">;
  private readonly evictions: Counter<"cap">;
  private readonly mcpRequests: Counter<"era" | "method" | "outcome">;
  private readonly mcpSeconds: Histogram<"era" | "method">;
  private readonly mrtrTotal: Counter<"result">;
  private readonly oauthRequests: Counter<"endpoint" | "status">;
  private readonly tokensIssued: Counter<"grant_type">;
  private readonly reuseDetected: Counter<"grant_type">;
  private readonly rateLimitedTotal: Counter<"endpoint">;
  private readonly forwardedRequests: Counter<"result">;
  private readonly sessionRestores: Counter<"result">;
  private readonly upstreamRefreshes: Counter<"result">;
  private readonly upstreamSeconds: Histogram<"call" | "result">;

  constructor(options: { processMetrics?: boolean; readRss?: (pid: number) => number | null } = {}) {
    const registers = [this.registry];
    const sources = () => this.sources;
    const readRss = options.readRss ?? processRssBytes;
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    new Gauge({
      name: "fmb_sessions",
      help: "Live MCP sessions: legacy sessions (Mcp-Session-Id) and modern principals (one child per grant)",
      labelNames: ["era"],
      registers,
      collect() {
        const counts = sources().sessions();
        for (const era of ["legacy", "modern"] as const) this.set({ era }, counts[era]);
      },
    });
    new Gauge({
      name: "fmb_children",
      help: "Child processes alive, serving or on their way out",
      registers,
      collect() {
        this.set([...sources().childPids()].length);
      },
    });
    new Summary({
      name: "fmb_child_rss_bytes",
      help: "Resident memory of each live child with everything it started, read from /proc at scrape time (count: children measured)",
      percentiles: [0.5, 0.9, 0.99, 1],
      registers,
      collect() {
        this.reset();
        for (const pid of sources().childPids()) {
          const rss = readRss(pid);
          if (rss !== null) this.observe(rss);
        }
      },
    });
    new Gauge({
      name: "fmb_mrtr_continuations",
      help: "Modern calls waiting for their caller's retry (input_required sent)",
      registers,
      collect() {
        this.set(sources().continuations());
      },
    });
    this.childStarts = new Counter({ name: "fmb_child_starts_total", help: "Children started (spawned and initialized), by result", labelNames: ["result"], registers });
    this.childStartSeconds = new Histogram({
      name: "fmb_child_start_seconds",
      help: "Time from spawning a child to its answer to initialize",
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.childExits = new Counter({ name: "fmb_child_exits_total", help: "Children ended, by why", labelNames: ["reason"], registers });
    this.evictions = new Counter({ name: "fmb_session_evictions_total", help: "Idle sessions ended to make room at a cap", labelNames: ["cap"], registers });
    this.mcpRequests = new Counter({ name: "fmb_mcp_requests_total", help: "JSON-RPC requests on /mcp, by era, method and outcome", labelNames: ["era", "method", "outcome"], registers });
    this.mcpSeconds = new Histogram({
      name: "fmb_mcp_request_seconds",
      help: "Child round trip of a request: from handing it to the child to its answer",
      labelNames: ["era", "method"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.mrtrTotal = new Counter({ name: "fmb_mrtr_total", help: "MRTR (input_required) events, by result", labelNames: ["result"], registers });
    this.oauthRequests = new Counter({ name: "fmb_oauth_requests_total", help: "Requests to the OAuth endpoints, by endpoint and HTTP status", labelNames: ["endpoint", "status"], registers });
    this.tokensIssued = new Counter({ name: "fmb_tokens_issued_total", help: "Access tokens issued by the token endpoint, by grant type", labelNames: ["grant_type"], registers });
    this.reuseDetected = new Counter({
      name: "fmb_token_reuse_detected_total",
      help: "Replayed authorization codes and refresh tokens (after the grace window): the grant's tokens were revoked",
      labelNames: ["grant_type"],
      registers,
    });
    this.forwardedRequests = new Counter({ name: "fmb_forwarded_requests_total", help: "/mcp requests passed on to the replica owning their session, by result", labelNames: ["result"], registers });
    this.sessionRestores = new Counter({ name: "fmb_session_restores_total", help: "Sessions of a replica that was gone, started again on this one under their id, by result", labelNames: ["result"], registers });
    this.rateLimitedTotal = new Counter({ name: "fmb_rate_limited_total", help: "OAuth requests refused by a rate limit, by bucket", labelNames: ["endpoint"], registers });
    this.upstreamRefreshes = new Counter({ name: "fmb_upstream_refresh_total", help: "Refreshes of users' Forgejo tokens, by result", labelNames: ["result"], registers });
    this.upstreamSeconds = new Histogram({
      name: "fmb_upstream_request_seconds",
      help: "Calls to Forgejo (code exchange, token refresh, user lookup), by call and result",
      labelNames: ["call", "result"],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 60],
      registers,
    });
  }

  /** Where the scrape-time gauges read from; set once the broker's parts exist. */
  sample(sources: ScrapeSources): void {
    this.sources = sources;
  }

  /** The Prometheus text exposition of this broker's metrics. */
  async scrape(): Promise<Response> {
    return new Response(await this.registry.metrics(), { headers: { "Content-Type": this.registry.contentType, "Cache-Control": "no-store" } });
  }

  childStarting(): (result: "ok" | "failed") => void {
    const begun = performance.now();
    return (result) => {
      this.childStarts.inc({ result });
      if (result === "ok") this.childStartSeconds.observe((performance.now() - begun) / 1000);
    };
  }

  childExited(reason: ChildExitReason): void {
    this.childExits.inc({ reason });
  }

  sessionEvicted(cap: EvictedBy): void {
    this.evictions.inc({ cap });
  }

  mcpRequest(era: Era, method: string, outcome: McpOutcome, roundTripS?: number): void {
    const label = mcpMethodLabel(method);
    this.mcpRequests.inc({ era, method: label, outcome });
    if (roundTripS !== undefined) this.mcpSeconds.observe({ era, method: label }, roundTripS);
  }

  mrtr(result: MrtrResult): void {
    this.mrtrTotal.inc({ result });
  }

  oauthRequest(endpoint: OAuthEndpoint, status: number): void {
    this.oauthRequests.inc({ endpoint, status: String(status) });
  }

  tokenIssued(grantType: GrantType): void {
    this.tokensIssued.inc({ grant_type: grantType });
  }

  tokenReuseDetected(grantType: GrantType): void {
    this.reuseDetected.inc({ grant_type: grantType });
  }

  forwardedRequest(result: ForwardResult): void {
    this.forwardedRequests.inc({ result });
  }

  sessionRestored(result: ForwardResult): void {
    this.sessionRestores.inc({ result });
  }

  rateLimited(endpoint: RateLimitedEndpoint): void {
    this.rateLimitedTotal.inc({ endpoint });
  }

  upstreamRefresh(result: UpstreamResult): void {
    this.upstreamRefreshes.inc({ result });
  }

  upstreamRequest(call: UpstreamCall, result: UpstreamResult, seconds: number): void {
    this.upstreamSeconds.observe({ call, result }, seconds);
  }
}

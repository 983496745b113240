// The tracing collaborator's context rules with the real SDK (exporting to a sink that only says yes): spans
// under the request being served, and timers that fire later outside it.
import { afterAll, expect, test } from "bun:test";
import { childStartSpans } from "../../src/observability/live-children.ts";
import { OtlpTracing } from "../../src/observability/otlp-tracing.ts";
import { PrometheusMetrics } from "../../src/observability/prometheus.ts";
import { noTracing, untracedTimers } from "../../src/observability/tracing.ts";
import { realTimers } from "../../src/supervisor/timers.ts";
import { parseExposition, valueOf } from "../helpers/prometheus.ts";

const sink = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => Response.json({}) });
const tracing = new OtlpTracing({ endpoint: `http://127.0.0.1:${sink.port}`, serviceName: "test" });
afterAll(async () => {
  await tracing.shutdown();
  await sink.stop(true);
});

const traceIdOf = (traceparent: string | null) => traceparent?.split("-")[1];

test("a timer set while a request is served fires outside it through untracedTimers; through plain timers it would join the request's trace", async () => {
  const callerTrace = "0af7651916cd43dd8448eb211c80319c";
  let fromPlain: Promise<string | null> = Promise.resolve(null);
  let fromUntraced: Promise<string | null> = Promise.resolve(null);
  let inRequest: string | null = null;
  const later = (timers: typeof realTimers) => new Promise<string | null>((resolve) => timers.setTimeout(() => resolve(tracing.start("later").traceparent()), 1));
  await tracing.serve(new Request("http://broker/mcp", { method: "POST", headers: { traceparent: `00-${callerTrace}-b7ad6b7169203331-01` } }), async () => {
    inRequest = tracing.start("inside").traceparent();
    fromPlain = later(realTimers);
    fromUntraced = later(untracedTimers(realTimers, tracing));
    return new Response(null, { status: 204 });
  });
  expect(traceIdOf(inRequest)).toBe(callerTrace);
  expect(traceIdOf(await fromPlain)).toBe(callerTrace);
  const own = traceIdOf(await fromUntraced);
  expect(own).toMatch(/^[0-9a-f]{32}$/);
  expect(own).not.toBe(callerTrace);
});

test("without tracing the timers are the ones given", () => {
  expect(untracedTimers(realTimers, noTracing)).toBe(realTimers);
});

test("shutting down with spans for a collector that is not there takes at most about two seconds", async () => {
  const nowhere = new OtlpTracing({ endpoint: "http://127.0.0.1:9", serviceName: "test" });
  await nowhere.serve(new Request("http://broker/healthz"), () => new Response("ok"));
  const began = performance.now();
  await nowhere.shutdown();
  expect(performance.now() - began).toBeLessThan(4000);
});

test("with traces and metrics both on, the metrics seen through childStartSpans still count every call", async () => {
  const prometheus = new PrometheusMetrics({ processMetrics: false });
  const metrics = childStartSpans(prometheus, tracing);
  metrics.childStarting()("ok");
  metrics.childExited("idle");
  metrics.sessionEvicted("global");
  const samples = parseExposition(await (await prometheus.scrape()).text());
  expect(valueOf(samples, "fmb_child_starts_total", { result: "ok" })).toBe(1);
  expect(valueOf(samples, "fmb_child_exits_total", { reason: "idle" })).toBe(1);
  expect(valueOf(samples, "fmb_session_evictions_total", { cap: "global" })).toBe(1);
});

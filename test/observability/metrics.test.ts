// The metrics' pure rules and their registry: method and endpoint labels from a closed set, one registry per
// broker, and the children's memory read at scrape time.
import { describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mcpMethodLabel, oauthEndpointOf } from "../../src/observability/metrics.ts";
import { PrometheusMetrics } from "../../src/observability/prometheus.ts";
import { metricsBehindToken } from "../../src/observability/metrics-endpoint.ts";
import { processRssBytes } from "../../src/supervisor/process-rss.ts";
import { parseExposition, valueOf } from "../helpers/prometheus.ts";

describe("mcpMethodLabel", () => {
  test.each([
    ["tools/call", "tools/call"],
    ["initialize", "initialize"],
    ["server/discover", "server/discover"],
    ["subscriptions/listen", "subscriptions/listen"],
    ["resources/templates/list", "resources/templates/list"],
    ["tools/call ", "other"],
    ["Tools/Call", "other"],
    ["x-vendor/anything", "other"],
    ["notifications/initialized", "other"],
    [42, "other"],
    [undefined, "other"],
  ] as [unknown, string][])("%p → %s", (method, label) => {
    expect(mcpMethodLabel(method)).toBe(label);
  });
});

describe("oauthEndpointOf", () => {
  test.each([
    ["/oauth/token", "token"],
    ["/oauth/register", "register"],
    ["/oauth/authorize", "authorize"],
    ["/oauth/callback", "callback"],
    ["/oauth/revoke", "revoke"],
    ["/.well-known/oauth-authorization-server", "metadata"],
    ["/.well-known/oauth-protected-resource/mcp", "metadata"],
    ["/oauth/token/extra", null],
    ["/mcp", null],
    ["/healthz", null],
  ] as [string, string | null][])("%s → %p", (path, endpoint) => {
    expect<string | null>(oauthEndpointOf(path)).toBe(endpoint);
  });
});

describe("PrometheusMetrics", () => {
  test("two brokers in one process keep their own figures", async () => {
    const one = new PrometheusMetrics({ processMetrics: false });
    const two = new PrometheusMetrics({ processMetrics: false });
    one.childExited("idle");
    one.childExited("idle");
    two.childExited("crashed");
    const of = async (metrics: PrometheusMetrics) => parseExposition(await (await metrics.scrape()).text());
    expect(valueOf(await of(one), "fmb_child_exits_total", { reason: "idle" })).toBe(2);
    expect(valueOf(await of(one), "fmb_child_exits_total", { reason: "crashed" })).toBe(0);
    expect(valueOf(await of(two), "fmb_child_exits_total", { reason: "crashed" })).toBe(1);
  });

  test("the children's RSS and the gauges are what the sources say at scrape time; a child gone since is left out", async () => {
    const rss = new Map<number, number | null>([
      [101, 30e6],
      [102, 10e6],
      [103, null],
    ]);
    const metrics = new PrometheusMetrics({ processMetrics: false, readRss: (pid) => rss.get(pid) ?? null });
    metrics.sample({ sessions: () => ({ legacy: 2, modern: 1 }), childPids: () => rss.keys(), continuations: () => 4 });
    const samples = parseExposition(await (await metrics.scrape()).text());
    expect(valueOf(samples, "fmb_children")).toBe(3);
    expect(valueOf(samples, "fmb_child_rss_bytes_count")).toBe(2);
    expect(valueOf(samples, "fmb_child_rss_bytes_sum")).toBe(40e6);
    expect(valueOf(samples, "fmb_child_rss_bytes", { quantile: "1" })).toBe(30e6);
    expect(valueOf(samples, "fmb_sessions", { era: "legacy" })).toBe(2);
    expect(valueOf(samples, "fmb_sessions", { era: "modern" })).toBe(1);
    expect(valueOf(samples, "fmb_mrtr_continuations")).toBe(4);
    // The next scrape measures again rather than adding up.
    rss.delete(101);
    const later = parseExposition(await (await metrics.scrape()).text());
    expect(valueOf(later, "fmb_child_rss_bytes_count")).toBe(1);
    expect(valueOf(later, "fmb_child_rss_bytes_sum")).toBe(10e6);
  });
});

describe("metricsBehindToken", () => {
  const token = "0123456789abcdef0123456789abcdef";
  const endpoint = metricsBehindToken(token, async () => new Response("fmb_children 0\n"));
  test.each([
    ["no Authorization", {}, 401],
    ["another token", { authorization: `Bearer ${token.slice(1)}0` }, 401],
    ["a prefix of the token", { authorization: `Bearer ${token.slice(0, 16)}` }, 401],
    ["Basic credentials", { authorization: `Basic ${btoa(`x:${token}`)}` }, 401],
    ["the token", { authorization: `Bearer ${token}` }, 200],
  ] as [string, Record<string, string>, number][])("%s → %p", async (_, headers, status) => {
    expect((await endpoint(new Request("http://broker/metrics", { headers }))).status).toBe(status);
  });
});

describe("processRssBytes", () => {
  test("this process's own figure is in megabytes; a pid that does not exist is null", () => {
    expect(processRssBytes(process.pid)).toBeGreaterThan(1024 * 1024);
    expect(processRssBytes(2 ** 22 + 12345)).toBeNull();
  });

  test("a process's figure includes what it started, all the way down; a child gone since the listing and a zombie add nothing", () => {
    // A /proc of its own, so the figures hold still: 100 started 101 and 102 (gone), 101 started 103 (a zombie) and 104.
    const root = mkdtempSync(join(tmpdir(), "fmb-proc-"));
    try {
      const processFile = (pid: number, rssKb: number | null, children: number[]) => {
        mkdirSync(join(root, String(pid), "task", String(pid)), { recursive: true });
        writeFileSync(join(root, String(pid), "status"), `Name:\tx\n${rssKb === null ? "" : `VmRSS:\t   ${rssKb} kB\n`}Threads:\t1\n`);
        writeFileSync(join(root, String(pid), "task", String(pid), "children"), children.map((child) => `${child} `).join(""));
      };
      processFile(100, 1000, [101, 102]);
      processFile(101, 200, [103, 104]);
      processFile(103, null, []);
      processFile(104, 30, []);
      expect(processRssBytes(100, root)).toBe((1000 + 200 + 30) * 1024);
      expect(processRssBytes(101, root)).toBe((200 + 30) * 1024);
      expect(processRssBytes(102, root)).toBeNull();
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

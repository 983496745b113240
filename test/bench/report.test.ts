// The report's "Against the bare relay" section: the ratios computed from the medians of the
// rounds, how they render, and that the Targets table does not depend on the relay.
import { expect, test } from "bun:test";
import { parseBenchArgs, type BenchOptions, type TargetName } from "../../bench/lib/args.ts";
import type { ChurnSample, LoadSample, Outcome } from "../../bench/lib/measure.ts";
import { relayFloor, renderMarkdown, verdicts, type BenchData } from "../../bench/lib/report.ts";

function options(argv: string[]): BenchOptions {
  const parsed = parseBenchArgs(["--rounds", "3", "--sessions", "1,16", "--scale", "0", ...argv]);
  if (parsed.kind !== "run") throw new Error(`bad options ${JSON.stringify(argv)}`);
  return parsed.options;
}

function load(callsPerSecond: number, p50Ms: number, cpuPer1k: number | null): Outcome<LoadSample> {
  return {
    ok: true,
    value: {
      callsPerSecond,
      p50Ms,
      p99Ms: p50Ms * 3,
      setupP50Ms: 20,
      setupP99Ms: 30,
      gatewayRssKb: cpuPer1k === null ? null : 40_000,
      treeRssKb: 90_000,
      cpuPer1k,
      sessionsOpened: 1,
      callsOk: 1000,
      callsRequested: 1000,
      errors: [],
      progress: 5,
    },
  };
}

function churn(cyclesPerSecond: number): Outcome<ChurnSample> {
  return { ok: true, value: { cyclesPerSecond, cycleP50Ms: 1000 / cyclesPerSecond, ok: 10, requested: 10, leftAfter1s: 0, zombiesAfter1s: 0, leftExamples: [], errors: [] } };
}

/** Three rounds per target and S, in an order where the median is the middle value, not the first or last. */
function data(targets: string): BenchData {
  const rounds = (a: Outcome<LoadSample>, b: Outcome<LoadSample>, c: Outcome<LoadSample>) => [b, a, c];
  const loads: BenchData["loads"] = {
    1: {
      direct: rounds(load(7000, 0.1, null), load(8000, 0.11, null), load(9000, 0.12, null)),
      relay: rounds(load(3000, 0.2, 0.04), load(4000, 0.25, 0.05), load(4100, 0.3, 0.06)),
      broker: rounds(load(1000, 0.5, 0.1), load(2000, 0.6, 0.15), load(2200, 0.7, 0.2)),
      supergateway: rounds(load(500, 1.0, 0.4), load(800, 1.2, 0.5), load(900, 1.4, 0.6)),
    },
    16: {
      direct: rounds(load(15_000, 1, null), load(16_000, 1, null), load(17_000, 1, null)),
      // Every relay round at S=16 failed: its ratios are unknown, not zero.
      relay: [{ ok: false, reason: "timeout" }],
      broker: rounds(load(5000, 3, 0.1), load(6000, 3, 0.1), load(7000, 3, 0.1)),
      supergateway: rounds(load(2000, 8, 0.5), load(2000, 8, 0.5), load(2000, 8, 0.5)),
    },
  };
  const picked = options(["--targets", targets]).targets;
  const only = <T,>(record: Partial<Record<TargetName, T>>) => Object.fromEntries(Object.entries(record).filter(([t]) => picked.includes(t as TargetName)));
  return {
    options: options(["--targets", targets]),
    machine: { date: "2026-01-01T00:00:00Z", nproc: 2, memory: "4.0 GiB", cpu: "test", kernel: "6", bun: "1", node: "v22", supergateway: "4", commit: "abc" },
    childDescription: "test",
    unavailable: {},
    loads: { 1: only(loads[1]!), 16: only(loads[16]!) },
    churn: only({ direct: [churn(60)], relay: [churn(40), churn(50), churn(45)], broker: [churn(30), churn(36), churn(40)] }),
    scale: {},
    scaleSkipped: "--scale 0",
    wallSeconds: 60,
  };
}

test("the ratios come from each target's medians over the rounds", () => {
  const floor = relayFloor(data("direct,relay,broker,supergateway"));
  if (!floor.shown) throw new Error(floor.reason);
  const [s1, s16] = floor.rows;
  expect(s1!.sessions).toBe(1);
  expect(s1!.brokerOverRelayCalls).toBeCloseTo(2000 / 4000, 12);
  expect(s1!.brokerMinusRelayP50Ms).toBeCloseTo(0.6 - 0.25, 12);
  expect(s1!.brokerOverRelayCpu).toBeCloseTo(0.15 / 0.05, 12);
  expect(s1!.relayOverSupergatewayCpu).toBeCloseTo(0.05 / 0.5, 12);
  expect(s1!.relayOverDirectCalls).toBeCloseTo(4000 / 8000, 12);
  expect(s16).toEqual({ sessions: 16, brokerOverRelayCalls: null, brokerMinusRelayP50Ms: null, brokerOverRelayCpu: null, relayOverSupergatewayCpu: null, relayOverDirectCalls: null });
  expect(floor.churnBrokerOverRelay).toBeCloseTo(36 / 45, 12);
});

test("the section renders those figures after the Targets table", () => {
  const md = renderMarkdown(data("direct,relay,broker,supergateway"));
  const section = md.indexOf("## Against the bare relay (the runtime's floor)");
  expect(section).toBeGreaterThan(md.indexOf("## Targets (issue 4)"));
  expect(section).toBeLessThan(md.indexOf("## Scale point"));
  expect(md).toContain("| 1 | 0.50× | +0.350 | 3.00× | 0.100× | 0.50× |");
  expect(md).toContain("| 16 | — | — | — | — | — |");
  expect(md).toContain("Churn cycles/s broker ÷ relay: 0.80×.");
  expect(md).toContain("| 1 | relay | 4000 | 0.250 |");
});

test("without the relay the section is replaced by one line saying why", () => {
  const md = renderMarkdown(data("direct,broker,supergateway"));
  expect(md).not.toContain("## Against the bare relay");
  expect(md).toContain("_Against the bare relay (the runtime's floor): not shown, the relay was not measured in this run (--targets)._");
  const unavailable = { ...data("direct,relay,broker"), unavailable: { relay: "exited (1) before it was ready" } };
  expect(relayFloor(unavailable)).toEqual({ shown: false, reason: "the relay was unavailable: exited (1) before it was ready" });
});

test("the issue's Targets table is the same with or without the relay", () => {
  expect(verdicts(data("direct,relay,broker,supergateway"))).toEqual(verdicts(data("direct,broker,supergateway")));
});

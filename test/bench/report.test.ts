// The report's "Against the bare relay" and "Sandbox cost" sections: the ratios computed from the medians
// of the rounds, how they render, and that the Targets table depends on neither reference.
import { expect, test } from "bun:test";
import { parseBenchArgs, type BenchOptions, type TargetName } from "../../bench/lib/args.ts";
import type { ChurnSample, LoadSample, Outcome } from "../../bench/lib/measure.ts";
import { relayFloor, renderMarkdown, sandboxCost, verdicts, type BenchData } from "../../bench/lib/report.ts";

function options(argv: string[]): BenchOptions {
  const parsed = parseBenchArgs(["--rounds", "3", "--sessions", "1,16", "--scale", "0", ...argv]);
  if (parsed.kind !== "run") throw new Error(`bad options ${JSON.stringify(argv)}`);
  return parsed.options;
}

function load(callsPerSecond: number, p50Ms: number, cpuPer1k: number | null, more: Partial<LoadSample> = {}): Outcome<LoadSample> {
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
      treeCpuPer1k: cpuPer1k === null ? null : cpuPer1k * 3,
      sessionsOpened: 1,
      callsOk: 1000,
      callsRequested: 1000,
      errors: [],
      progress: 5,
      bwrapProcesses: cpuPer1k === null ? null : 0,
      ...more,
    },
  };
}

const sandboxed = (callsPerSecond: number, cpuPer1k: number, setupP50Ms: number, treeRssKb: number, bwrapProcesses: number) =>
  load(callsPerSecond, 0.6, cpuPer1k, { setupP50Ms, treeRssKb, bwrapProcesses, treeCpuPer1k: cpuPer1k * 2 });

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
      broker: rounds(sandboxed(1000, 0.1, 20, 90_000, 2), sandboxed(2000, 0.15, 24, 91_000, 2), sandboxed(2200, 0.2, 30, 92_000, 2)),
      "broker-unsandboxed": rounds(load(1900, 0.5, 0.12, { setupP50Ms: 15 }), load(2100, 0.6, 0.14, { setupP50Ms: 17 }), load(2500, 0.7, 0.21, { setupP50Ms: 40 })),
      supergateway: rounds(load(500, 1.0, 0.4), load(800, 1.2, 0.5), load(900, 1.4, 0.6)),
    },
    16: {
      direct: rounds(load(15_000, 1, null), load(16_000, 1, null), load(17_000, 1, null)),
      // Every relay round at S=16 failed: its ratios are unknown, not zero.
      relay: [{ ok: false, reason: "timeout" }],
      broker: rounds(load(5000, 3, 0.1), load(6000, 3, 0.1), load(7000, 3, 0.1)),
      // Every unsandboxed round at S=16 failed: the sandbox's cost there is unknown, not zero.
      "broker-unsandboxed": [{ ok: false, reason: "timeout" }],
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
    churn: only({ direct: [churn(60)], relay: [churn(40), churn(50), churn(45)], broker: [churn(30), churn(36), churn(40)], "broker-unsandboxed": [churn(48)] }),
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

test("the sandbox's cost: sandboxed against unsandboxed broker, from each one's medians over the rounds", () => {
  const cost = sandboxCost(data("direct,broker,broker-unsandboxed"));
  if (!cost.shown) throw new Error(cost.reason);
  const [s1, s16] = cost.rows;
  expect(s1!.sessions).toBe(1);
  expect(s1!.sandboxedSetupP50Ms).toBe(24);
  expect(s1!.unsandboxedSetupP50Ms).toBe(17);
  expect(s1!.setupAddedMs).toBeCloseTo(24 - 17, 12);
  expect(s1!.callsRatio).toBeCloseTo(2000 / 2100, 12);
  expect(s1!.cpuRatio).toBeCloseTo(0.15 / 0.14, 12);
  expect(s1!.treeCpuRatio).toBeCloseTo((0.15 * 2) / (0.14 * 3), 12);
  expect(s1!.treeRssAddedKbPerSession).toBeCloseTo(91_000 - 90_000, 12);
  expect([s1!.sandboxedBwrap, s1!.unsandboxedBwrap]).toEqual([2, 0]);
  expect(s16).toEqual({
    sessions: 16,
    sandboxedSetupP50Ms: 20,
    unsandboxedSetupP50Ms: null,
    setupAddedMs: null,
    callsRatio: null,
    cpuRatio: null,
    treeCpuRatio: null,
    treeRssAddedKbPerSession: null,
    sandboxedBwrap: 0,
    unsandboxedBwrap: null,
  });
  expect(cost.churnRatio).toBeCloseTo(36 / 48, 12);
});

test("the sandbox's section renders those figures after the Targets table", () => {
  const md = renderMarkdown(data("direct,relay,broker,broker-unsandboxed,supergateway"));
  const section = md.indexOf("## Sandbox cost");
  expect(section).toBeGreaterThan(md.indexOf("## Targets (issue 4)"));
  expect(section).toBeLessThan(md.indexOf("## Scale point"));
  expect(md).toContain("| 1 | 24.0 | 17.0 | +7.00 | 0.95× | 1.07× | 0.71× | +1000 | 2 / 0 |");
  expect(md).toContain("| 16 | 20.0 | — | — | — | — | — | — | 0 / — |");
  expect(md).toContain("Churn cycles/s sandboxed ÷ unsandboxed: 0.75×.");
  expect(md).toContain("| 1 | broker-unsandboxed | 2100 | 0.600 |");
});

test("without either broker the sandbox's section is one line saying why", () => {
  expect(renderMarkdown(data("direct,broker"))).toContain("_Sandbox cost: not shown, broker-unsandboxed was not measured in this run (--targets)._");
  expect(sandboxCost(data("direct,broker-unsandboxed"))).toEqual({ shown: false, reason: "broker was not measured in this run (--targets)" });
  const unavailable = { ...data("broker,broker-unsandboxed"), unavailable: { broker: "exited (2) before it was ready: bwrap is not on PATH" } };
  expect(sandboxCost(unavailable)).toEqual({ shown: false, reason: "broker was unavailable: exited (2) before it was ready: bwrap is not on PATH" });
});

test("the issue's Targets table is the same with or without the unsandboxed broker", () => {
  expect(verdicts(data("direct,relay,broker,broker-unsandboxed,supergateway"))).toEqual(verdicts(data("direct,relay,broker,supergateway")));
});

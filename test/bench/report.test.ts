// The report's "Against the bare relay", "Sandbox cost" and "Modern era" sections: the ratios computed from
// the medians of the rounds, how they render, and that the Targets table depends on none of them.
import { expect, test } from "bun:test";
import { parseBenchArgs, type BenchOptions, type TargetName } from "../../bench/lib/args.ts";
import type { ChurnSample, LoadSample, ModernScaleSample, Outcome } from "../../bench/lib/measure.ts";
import { modernEra, modernVerdicts, relayFloor, renderMarkdown, replicaScaling, sandboxCost, tracingCost, verdicts, type BenchData } from "../../bench/lib/report.ts";

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
      children: cpuPer1k === null ? null : 1,
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
      "broker-previous": rounds(load(1900, 0.55, 0.14), load(2050, 0.6, 0.16), load(2300, 0.65, 0.18)),
      "broker-otel": rounds(load(1500, 0.7, 0.2), load(1600, 0.8, 0.24), load(1700, 0.9, 0.3)),
      "broker-replicas-1": rounds(load(1000, 0.8, 0.1), load(1200, 0.9, 0.1), load(1300, 1.0, 0.1)),
      "broker-replicas-3": rounds(load(700, 1.2, 0.1), load(900, 1.4, 0.1), load(950, 1.6, 0.1)),
      supergateway: rounds(load(500, 1.0, 0.4), load(800, 1.2, 0.5), load(900, 1.4, 0.6)),
    },
    16: {
      direct: rounds(load(15_000, 1, null), load(16_000, 1, null), load(17_000, 1, null)),
      // Every relay round at S=16 failed: its ratios are unknown, not zero.
      relay: [{ ok: false, reason: "timeout" }],
      broker: rounds(load(5000, 3, 0.1), load(6000, 3, 0.1), load(7000, 3, 0.1)),
      "broker-replicas-1": rounds(load(1500, 4, 0.1), load(1600, 4, 0.1), load(1700, 4, 0.1)),
      // Every three-replica round at S=16 failed: that ratio is unknown, not zero.
      "broker-replicas-3": [{ ok: false, reason: "timeout" }],
      // Every unsandboxed round at S=16 failed: the sandbox's cost there is unknown, not zero.
      "broker-unsandboxed": [{ ok: false, reason: "timeout" }],
      supergateway: rounds(load(2000, 8, 0.5), load(2000, 8, 0.5), load(2000, 8, 0.5)),
    },
  };
  const picked = options(["--targets", targets]).targets;
  const only = <T,>(record: Partial<Record<TargetName, T>>) => Object.fromEntries(Object.entries(record).filter(([t]) => picked.includes(t as TargetName)));
  return {
    options: options(["--targets", targets]),
    machine: { date: "2026-01-01T00:00:00Z", nproc: 2, memory: "4.0 GiB", cpu: "test", kernel: "6", bun: "1", node: "v22", supergateway: "4", commit: "abc", loadAverage: "1.00 1.00 1.00" },
    childDescription: "test",
    unavailable: {},
    loads: { 1: only(loads[1]!), 16: only(loads[16]!) },
    churn: only({ direct: [churn(60)], relay: [churn(40), churn(50), churn(45)], broker: [churn(30), churn(36), churn(40)], "broker-unsandboxed": [churn(48)], "broker-replicas-1": [churn(20), churn(25), churn(30)], "broker-replicas-3": [churn(27), churn(28), churn(29)] }),
    scale: {},
    scaleSkipped: "--scale 0",
    modernScale: null,
    modernScaleSkipped: "--modern-scale 0",
    brokerCaps: 2000,
    loadAverageAtEnd: "1.00 1.00 1.00",
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

/** Three rounds of one target at one S whose medians are `calls` and `treeRssKb`; the outer rounds would pass where the median does not. */
const eraRounds = (calls: number, treeRssKb: number, children: number) => [
  load(calls, 1, 0.1, { treeRssKb, children }),
  load(calls * 0.5, 1, 0.1, { treeRssKb: treeRssKb * 0.5, children }),
  load(calls * 2, 1, 0.1, { treeRssKb: treeRssKb * 2, children }),
];

const scaleRun = (callsOk: number, children: number): Outcome<ModernScaleSample> => ({
  ok: true,
  value: { callers: 1000, principals: 10, discovered: 1000, callsOk, children, bwrapProcesses: children * 2, treePeakKb: 500_000, seconds: 2, errors: [] },
});

/** Legacy (broker) and modern (broker-modern) at S=16 and 64: [legacy, modern] calls/s medians, tree RSS medians at S=64, the scale point. */
function eraData(calls16: [number, number], calls64: [number, number], tree64: [number, number], modernScale: Outcome<ModernScaleSample> | null, targets = "broker,broker-modern"): BenchData {
  const base = data("broker");
  const picked = options(["--sessions", "16,64", "--modern-scale", "1000", "--targets", targets]);
  return {
    ...base,
    options: picked,
    loads: {
      16: { broker: eraRounds(calls16[0], 600_000, 16), "broker-modern": eraRounds(calls16[1], 110_000, 1) },
      64: { broker: eraRounds(calls64[0], tree64[0], 64), "broker-modern": eraRounds(calls64[1], tree64[1], 1) },
    },
    modernScale,
    modernScaleSkipped: modernScale === null ? "--modern-scale 0" : null,
  };
}

test.each<[string, BenchData, [string, string, string][]]>([
  [
    "every target met, each exactly at its bound",
    eraData([5000, 5500], [4000, 4000], [2_000_000, 200_000], scaleRun(1000, 10)),
    [
      ["calls/s modern ÷ legacy, S=16", "1.10×", "PASS"],
      ["calls/s modern ÷ legacy, S=64", "1.00×", "PASS"],
      ["tree peak RSS modern ÷ legacy, S=64", "0.100×", "PASS"],
      ["1000 concurrent modern callers over 10 principals", "1000 / 1000 answered, 10 children", "PASS"],
    ],
  ],
  [
    "each target just missed",
    eraData([5000, 4950], [4000, 3990], [2_000_000, 202_000], scaleRun(999, 10)),
    [
      ["calls/s modern ÷ legacy, S=16", "0.99×", "FAIL"],
      ["calls/s modern ÷ legacy, S=64", "1.00×", "FAIL"],
      ["tree peak RSS modern ÷ legacy, S=64", "0.101×", "FAIL"],
      ["1000 concurrent modern callers over 10 principals", "999 / 1000 answered, 10 children", "FAIL"],
    ],
  ],
  [
    "every caller answered, by one child too many",
    eraData([5000, 5500], [4000, 4400], [2_000_000, 100_000], scaleRun(1000, 11)),
    [
      ["calls/s modern ÷ legacy, S=16", "1.10×", "PASS"],
      ["calls/s modern ÷ legacy, S=64", "1.10×", "PASS"],
      ["tree peak RSS modern ÷ legacy, S=64", "0.050×", "PASS"],
      ["1000 concurrent modern callers over 10 principals", "1000 / 1000 answered, 11 children", "FAIL"],
    ],
  ],
  [
    "the scale point failed to run: not a PASS",
    eraData([5000, 5500], [4000, 4400], [2_000_000, 100_000], { ok: false, reason: "the OAuth flow failed" }),
    [
      ["calls/s modern ÷ legacy, S=16", "1.10×", "PASS"],
      ["calls/s modern ÷ legacy, S=64", "1.10×", "PASS"],
      ["tree peak RSS modern ÷ legacy, S=64", "0.050×", "PASS"],
      ["1000 concurrent modern callers over 10 principals", "—", "n/a"],
    ],
  ],
  [
    "broker-modern not measured: nothing is judged",
    eraData([5000, 5500], [4000, 4400], [2_000_000, 100_000], null, "broker"),
    [
      ["calls/s modern ÷ legacy, S=16", "—", "n/a"],
      ["calls/s modern ÷ legacy, S=64", "—", "n/a"],
      ["tree peak RSS modern ÷ legacy, S=64", "—", "n/a"],
      ["1000 concurrent modern callers over 10 principals", "—", "n/a"],
    ],
  ],
])("modern era targets: %s", (_, bench, expected) => {
  expect(modernVerdicts(bench).map((v) => [v.what, v.measured, v.verdict])).toEqual(expected);
});

test("a modern target that cannot be judged says why", () => {
  const notRun = modernVerdicts(eraData([1, 1], [1, 1], [1, 1], { ok: false, reason: "the OAuth flow failed" }, "broker"));
  expect(notRun.map((v) => v.note)).toEqual([
    "broker-modern was not measured in this run (--targets)",
    "broker-modern was not measured in this run (--targets)",
    "broker-modern was not measured in this run (--targets)",
    "the OAuth flow failed",
  ]);
  const without64 = { ...eraData([5000, 5500], [1, 1], [1, 1], null), options: options(["--sessions", "16", "--targets", "broker,broker-modern"]) };
  expect(modernVerdicts(without64).map((v) => v.note)).toEqual([undefined, "S=64 not measured (--sessions)", "S=64 not measured (--sessions)", "--modern-scale 0"]);
});

test("the modern era section: both eras' medians side by side, after the sandbox's cost, before the scale point", () => {
  const bench = eraData([5000, 5500], [4000, 4400], [2_000_000, 100_000], scaleRun(1000, 10));
  const era = modernEra(bench);
  if (!era.shown) throw new Error(era.reason);
  expect(era.rows.map((r) => [r.sessions, r.legacy?.children, r.modern?.children])).toEqual([[16, 16, 1], [64, 64, 1]]);

  const md = renderMarkdown(bench);
  const section = md.indexOf("## Modern era (issue 14)");
  expect(section).toBeGreaterThan(md.indexOf("_Sandbox cost"));
  expect(section).toBeLessThan(md.indexOf("## Scale point"));
  expect(md).toContain("BROKER_MAX_IN_FLIGHT_PER_USER = 2000");
  expect(md).toContain("| 64 | 4000 / 4400 | 1.10× | 1.000 / 1.000 | 3.000 / 3.000 | 0.100 / 0.100 | 1953.1 / 97.7 | 0.050× | 64 / 1 |");
  expect(md).toContain("| 1000 concurrent modern callers over 10 principals | 1000 / 1000 answered, 10 children | all answered, ≤ 10 children | PASS |");
  expect(md).toContain("1000 calls answered in 2.00 s; at most 10 child processes (the child's program, counted by name: one per principal) and 20 bwrap processes (bwrap runs two per sandbox)");
  expect(md).toContain("| broker-modern | not run: modern callers have no session to end | | | | 0 |");
  expect(renderMarkdown(eraData([1, 1], [1, 1], [1, 1], null, "broker"))).toContain("_Modern era: not shown, broker-modern was not measured in this run (--targets)._");
});

test("the issue's Targets table is the same with or without the modern broker", () => {
  expect(verdicts(eraData([5000, 5500], [4000, 4400], [2_000_000, 100_000], null))).toEqual(verdicts(eraData([5000, 5500], [4000, 4400], [2_000_000, 100_000], null, "broker")));
});

test("the tracing cost: the previous commit's broker, tracing off and on, side by side from each one's medians", () => {
  const cost = tracingCost(data("broker-previous,broker,broker-otel"));
  if (!cost.shown) throw new Error(cost.reason);
  expect(cost.rows[0]!.previous?.callsPerSecond).toBe(2050);
  expect(cost.rows[0]!.off?.callsPerSecond).toBe(2000);
  expect(cost.rows[0]!.on?.callsPerSecond).toBe(1600);
  // No round of the other two at S=16: unknown, not zero.
  expect(cost.rows[1]!.previous).toBeNull();
  const md = renderMarkdown({ ...data("broker-previous,broker,broker-otel"), tracing: { baselineRef: "main", baselineCommit: "abc1234", sinkRequests: 12, sinkBytes: 3 * 1024 * 1024 } });
  expect(md).toContain("## Tracing cost");
  expect(md).toContain("`main` (abc1234)");
  expect(md).toContain("it received 12 export requests, 3.0 MiB of OTLP JSON");
  expect(md).toContain("| 1 | 2050 / 2000 / 1600 | 0.98× | 0.80× | 0.600 / 0.600 / 0.800 |");
  expect(tracingCost(data("direct,broker"))).toEqual({ shown: false, reason: "neither broker-previous nor broker-otel was measured in this run (--targets)" });
});

test("replicas through Caddy: one and three replicas side by side from each one's medians, calls/s and sessions/s", () => {
  const scaling = replicaScaling(data("broker-replicas-1,broker-replicas-3"));
  if (!scaling.shown) throw new Error(scaling.reason);
  expect(scaling.rows.map((r) => [r.sessions, r.one?.callsPerSecond, r.three?.callsPerSecond ?? null, r.callsRatio])).toEqual([
    [1, 1200, 900, 0.75],
    [16, 1600, null, null],
  ]);
  expect([scaling.churnOne?.cyclesPerSecond, scaling.churnThree?.cyclesPerSecond, scaling.churnRatio]).toEqual([25, 28, 1.12]);
  const md = renderMarkdown(data("broker-replicas-1,broker-replicas-3"));
  expect(md).toContain("## Replicas through Caddy (issue 16)");
  expect(md).toContain("| 1 | 1200 / 900 | 0.75× | 0.900 / 1.400 | 2.700 / 4.200 | 20.0 / 20.0 |");
  expect(md).toContain("| 16 | 1600 / — | — |");
  expect(md).toContain("1 / 3 replicas: 25.0 / 28.0, 3 ÷ 1: 1.12×.");
});

test.each([
  ["broker,broker-replicas-1", "broker-replicas-3 not measured in this run (--targets)"],
  ["direct,broker", "broker-replicas-1 and broker-replicas-3 not measured in this run (--targets)"],
])("replicas through Caddy with --targets %s: not shown, and says why", (targets, reason) => {
  expect(replicaScaling(data(targets))).toEqual({ shown: false, reason });
  expect(renderMarkdown(data(targets))).toContain(`_Replicas through Caddy: not shown, ${reason}._`);
});

// Medians over rounds, the issues' target ratios with PASS/FAIL, and the markdown report: the machine,
// the rows, the churn, the targets, the sandbox's cost, the modern era, the scale point, and every round's raw figures.
import { MODERN_SCALE_PRINCIPALS, type BenchOptions, type TargetName } from "./args.ts";
import type { ChurnSample, LoadSample, ModernScaleSample, Outcome, ScaleSample } from "./measure.ts";

export interface Machine {
  date: string;
  nproc: number;
  memory: string;
  cpu: string;
  kernel: string;
  bun: string;
  node: string;
  supergateway: string;
  commit: string;
  /** /proc/loadavg's 1, 5 and 15 minute figures as the run began: other work on the machine shows here. */
  loadAverage: string;
}

export interface BenchData {
  options: BenchOptions;
  machine: Machine;
  childDescription: string;
  /** Why a target could not be measured at all (checked once, before the rounds). */
  unavailable: Partial<Record<TargetName, string>>;
  /** loads[S][target] = one outcome per round. */
  loads: Record<number, Partial<Record<TargetName, Outcome<LoadSample>[]>>>;
  churn: Partial<Record<TargetName, Outcome<ChurnSample>[]>>;
  scale: Partial<Record<TargetName, Outcome<ScaleSample>>>;
  scaleSkipped: string | null;
  /** The modern scale point, or null with the reason it was skipped. */
  modernScale: Outcome<ModernScaleSample> | null;
  modernScaleSkipped: string | null;
  /** What every broker ran with as BROKER_MAX_SESSIONS, BROKER_MAX_SESSIONS_PER_USER and BROKER_MAX_IN_FLIGHT_PER_USER. */
  brokerCaps: number;
  /** The tracing-cost targets: which commit broker-previous ran, and what broker-otel's sink received. */
  tracing?: { baselineRef: string; baselineCommit: string | null; sinkRequests: number | null; sinkBytes: number | null };
  /** /proc/loadavg as the run ended. */
  loadAverageAtEnd: string;
  wallSeconds: number;
}

export function median(values: (number | null | undefined)[]): number | null {
  const xs = values.filter((v): v is number => typeof v === "number" && Number.isFinite(v)).sort((a, b) => a - b);
  if (xs.length === 0) return null;
  const mid = xs.length >> 1;
  return xs.length % 2 === 1 ? xs[mid]! : (xs[mid - 1]! + xs[mid]!) / 2;
}

function oks<T>(outcomes: Outcome<T>[] | undefined): T[] {
  return (outcomes ?? []).flatMap((o) => (o.ok ? [o.value] : []));
}

export interface Medians {
  rounds: number;
  callsPerSecond: number | null;
  p50Ms: number | null;
  p99Ms: number | null;
  setupP50Ms: number | null;
  gatewayRssKb: number | null;
  treeRssKb: number | null;
  cpuPer1k: number | null;
  treeCpuPer1k: number | null;
  bwrapProcesses: number | null;
  children: number | null;
}

export function loadMedians(outcomes: Outcome<LoadSample>[] | undefined): Medians | null {
  const samples = oks(outcomes);
  if (samples.length === 0) return null;
  return {
    rounds: samples.length,
    callsPerSecond: median(samples.map((s) => s.callsPerSecond)),
    p50Ms: median(samples.map((s) => s.p50Ms)),
    p99Ms: median(samples.map((s) => s.p99Ms)),
    setupP50Ms: median(samples.map((s) => s.setupP50Ms)),
    gatewayRssKb: median(samples.map((s) => s.gatewayRssKb)),
    treeRssKb: median(samples.map((s) => s.treeRssKb)),
    cpuPer1k: median(samples.map((s) => s.cpuPer1k)),
    treeCpuPer1k: median(samples.map((s) => s.treeCpuPer1k)),
    bwrapProcesses: median(samples.map((s) => s.bwrapProcesses)),
    children: median(samples.map((s) => s.children)),
  };
}

export interface ChurnMedians {
  rounds: number;
  cyclesPerSecond: number | null;
  cycleP50Ms: number | null;
  /** The worst round: a leak in any round is a leak. */
  maxLeft: number | null;
  maxZombies: number | null;
}

export function churnMedians(outcomes: Outcome<ChurnSample>[] | undefined): ChurnMedians | null {
  const samples = oks(outcomes);
  if (samples.length === 0) return null;
  const lefts = samples.map((s) => s.leftAfter1s).filter((v): v is number => v !== null);
  const zombies = samples.map((s) => s.zombiesAfter1s).filter((v): v is number => v !== null);
  return {
    rounds: samples.length,
    cyclesPerSecond: median(samples.map((s) => s.cyclesPerSecond)),
    cycleP50Ms: median(samples.map((s) => s.cycleP50Ms)),
    maxLeft: lefts.length ? Math.max(...lefts) : null,
    maxZombies: zombies.length ? Math.max(...zombies) : null,
  };
}

const f = (v: number | null | undefined, digits = 1) => (v === null || v === undefined || !Number.isFinite(v) ? "—" : v.toFixed(digits));
const ms = (v: number | null | undefined) => f(v, v !== null && v !== undefined && v < 10 ? 3 : 1);
const mib = (kb: number | null | undefined) => (kb === null || kb === undefined ? "—" : (kb / 1024).toFixed(1));
const ratio = (a: number | null, b: number | null) => (a === null || b === null || b === 0 ? null : a / b);

export interface Verdict {
  what: string;
  measured: string;
  required: string;
  verdict: "PASS" | "FAIL" | "n/a";
  note?: string;
}

/** The issue's targets, each from medians measured in this run. */
export function verdicts(data: BenchData): Verdict[] {
  const out: Verdict[] = [];
  const na = (what: string, required: string, why: string): Verdict => ({ what, measured: "—", required, verdict: "n/a", note: why });
  const check = (what: string, value: number | null, required: string, pass: (v: number) => boolean, show: (v: number) => string, missing: string): Verdict =>
    value === null ? na(what, required, missing) : { what, measured: show(value), required, verdict: pass(value) ? "PASS" : "FAIL" };
  const m = (s: number, t: TargetName) => loadMedians(data.loads[s]?.[t]);
  const missingFor = (...ts: TargetName[]) => {
    for (const t of ts) {
      if (data.unavailable[t] !== undefined) return `${t} unavailable (reason above)`;
      if (!data.options.targets.includes(t)) return `${t} not measured (--targets)`;
    }
    return "no successful round";
  };

  for (const s of data.options.sessions) {
    const need = s === 1 ? 0.5 : 0.6;
    const r = ratio(m(s, "broker")?.callsPerSecond ?? null, m(s, "direct")?.callsPerSecond ?? null);
    out.push(check(`calls/s broker ÷ direct, S=${s}`, r, `≥ ${need}×`, (v) => v >= need, (v) => `${v.toFixed(2)}×`, missingFor("broker", "direct")));
  }
  if (data.options.sessions.includes(1)) {
    const d = (m(1, "broker")?.p50Ms ?? null) !== null && (m(1, "direct")?.p50Ms ?? null) !== null ? m(1, "broker")!.p50Ms! - m(1, "direct")!.p50Ms! : null;
    out.push(check("p50 added over direct, S=1", d, "≤ 0.15 ms", (v) => v <= 0.15, (v) => `${v.toFixed(3)} ms`, missingFor("broker", "direct")));
  }
  for (const s of data.options.sessions) {
    const r = ratio(m(s, "broker")?.cpuPer1k ?? null, m(s, "supergateway")?.cpuPer1k ?? null);
    out.push(check(`gateway CPU per call broker ÷ supergateway, S=${s}`, r, "≤ 0.10×", (v) => v <= 0.1, (v) => `${v.toFixed(3)}×`, missingFor("broker", "supergateway")));
  }
  const big = data.options.sessions.includes(64) ? 64 : Math.max(...data.options.sessions);
  {
    const r = ratio(m(big, "broker")?.gatewayRssKb ?? null, m(big, "supergateway")?.gatewayRssKb ?? null);
    out.push(
      check(`gateway RSS (children excluded) broker ÷ supergateway, S=${big}`, r, "≤ 0.5×", (v) => v <= 0.5, (v) => `${v.toFixed(2)}×`, missingFor("broker", "supergateway")),
    );
    if (big !== 64) {
      const last = out[out.length - 1]!;
      last.note = [last.note, "the target is stated at S=64; this run's largest S was used"].filter(Boolean).join("; ");
    }
  }
  for (const s of data.options.sessions) {
    const b = m(s, "broker")?.setupP50Ms ?? null;
    const d = m(s, "direct")?.setupP50Ms ?? null;
    out.push(check(`set-up p50 broker − direct, S=${s}`, b !== null && d !== null ? b - d : null, "≤ +5 ms", (v) => v <= 5, (v) => `${v >= 0 ? "+" : ""}${v.toFixed(2)} ms`, missingFor("broker", "direct")));
  }
  {
    const b = churnMedians(data.churn.broker);
    const d = churnMedians(data.churn.direct);
    const r = ratio(b?.cyclesPerSecond ?? null, d?.cyclesPerSecond ?? null);
    out.push(check("churn cycles/s broker ÷ direct", r, "≥ 0.90× (same within 10 %)", (v) => v >= 0.9, (v) => `${v.toFixed(2)}×`, missingFor("broker", "direct")));
    out.push(
      check(
        "broker descendants 1 s after the last DELETE (zombies)",
        b?.maxLeft ?? null,
        "0",
        (v) => v === 0,
        (v) => `${v} (${b?.maxZombies ?? 0} zombies)`,
        missingFor("broker"),
      ),
    );
  }
  {
    const sc = data.scale.broker;
    const what = `scale: ${data.options.scale || 1000} concurrent broker sessions, C child, all answering`;
    if (data.scaleSkipped !== null) out.push(na(what, "all answer", data.scaleSkipped));
    else if (sc === undefined) out.push(na(what, "all answer", missingFor("broker")));
    else if (!sc.ok) out.push(na(what, "all answer", sc.reason));
    else {
      const v = sc.value;
      out.push({ what, measured: `${v.callsOk} / ${v.sessions} answered`, required: "all answer", verdict: v.callsOk === v.sessions ? "PASS" : "FAIL" });
    }
  }
  return out;
}

export interface RelayFloorRow {
  sessions: number;
  /** broker ÷ relay calls/s: how much of the runtime's throughput the broker keeps. */
  brokerOverRelayCalls: number | null;
  /** broker p50 − relay p50, ms: the latency the broker adds on top of a bare relay. */
  brokerMinusRelayP50Ms: number | null;
  /** broker ÷ relay gateway CPU per call. */
  brokerOverRelayCpu: number | null;
  /** relay ÷ supergateway gateway CPU per call: where this runtime's floor sits against the peer. */
  relayOverSupergatewayCpu: number | null;
  /** relay ÷ direct calls/s: what any HTTP gateway on this runtime costs against stdio. */
  relayOverDirectCalls: number | null;
}

export type RelayFloor = { shown: false; reason: string } | { shown: true; rows: RelayFloorRow[]; churnBrokerOverRelay: number | null };

/** Informational: the broker against the bare relay (the runtime's HTTP + pipe floor). The issue's targets are not here. */
export function relayFloor(data: BenchData): RelayFloor {
  if (!data.options.targets.includes("relay")) return { shown: false, reason: "the relay was not measured in this run (--targets)" };
  if (data.unavailable.relay !== undefined) return { shown: false, reason: `the relay was unavailable: ${data.unavailable.relay}` };
  const rows = data.options.sessions.map((s): RelayFloorRow => {
    const relay = loadMedians(data.loads[s]?.relay);
    const broker = loadMedians(data.loads[s]?.broker);
    const sg = loadMedians(data.loads[s]?.supergateway);
    const direct = loadMedians(data.loads[s]?.direct);
    const brokerP50 = broker?.p50Ms ?? null;
    const relayP50 = relay?.p50Ms ?? null;
    return {
      sessions: s,
      brokerOverRelayCalls: ratio(broker?.callsPerSecond ?? null, relay?.callsPerSecond ?? null),
      brokerMinusRelayP50Ms: brokerP50 !== null && relayP50 !== null ? brokerP50 - relayP50 : null,
      brokerOverRelayCpu: ratio(broker?.cpuPer1k ?? null, relay?.cpuPer1k ?? null),
      relayOverSupergatewayCpu: ratio(relay?.cpuPer1k ?? null, sg?.cpuPer1k ?? null),
      relayOverDirectCalls: ratio(relay?.callsPerSecond ?? null, direct?.callsPerSecond ?? null),
    };
  });
  const churnBrokerOverRelay = ratio(churnMedians(data.churn.broker)?.cyclesPerSecond ?? null, churnMedians(data.churn.relay)?.cyclesPerSecond ?? null);
  return { shown: true, rows, churnBrokerOverRelay };
}

export interface SandboxCostRow {
  sessions: number;
  /** Set-up p50 of the broker with its children in bwrap, and with BROKER_CHILD_SANDBOX=none, ms. */
  sandboxedSetupP50Ms: number | null;
  unsandboxedSetupP50Ms: number | null;
  /** sandboxed − unsandboxed set-up p50, ms: what the sandbox adds to a session's start. */
  setupAddedMs: number | null;
  /** sandboxed ÷ unsandboxed calls/s and gateway CPU per call: what the sandbox costs per call (1× is nothing). */
  callsRatio: number | null;
  cpuRatio: number | null;
  /** The same for the CPU of the broker and its whole tree (children, bwrap and its init) per call. */
  treeCpuRatio: number | null;
  /** sandboxed − unsandboxed tree peak RSS per session, KiB: bwrap and the sandbox's init beside each child. */
  treeRssAddedKbPerSession: number | null;
  /** bwrap processes in each broker's tree with every session open: proof of which one sandboxed. */
  sandboxedBwrap: number | null;
  unsandboxedBwrap: number | null;
}

export type SandboxCost = { shown: false; reason: string } | { shown: true; rows: SandboxCostRow[]; churnRatio: number | null };

/** Informational: the broker with its children sandboxed (the default) against the same broker with BROKER_CHILD_SANDBOX=none, in this run. */
export function sandboxCost(data: BenchData): SandboxCost {
  for (const t of ["broker", "broker-unsandboxed"] as const) {
    if (!data.options.targets.includes(t)) return { shown: false, reason: `${t} was not measured in this run (--targets)` };
    if (data.unavailable[t] !== undefined) return { shown: false, reason: `${t} was unavailable: ${data.unavailable[t]}` };
  }
  const rows = data.options.sessions.map((s): SandboxCostRow => {
    const on = loadMedians(data.loads[s]?.broker);
    const off = loadMedians(data.loads[s]?.["broker-unsandboxed"]);
    const onSetup = on?.setupP50Ms ?? null;
    const offSetup = off?.setupP50Ms ?? null;
    const onTree = on?.treeRssKb ?? null;
    const offTree = off?.treeRssKb ?? null;
    return {
      sessions: s,
      sandboxedSetupP50Ms: onSetup,
      unsandboxedSetupP50Ms: offSetup,
      setupAddedMs: onSetup !== null && offSetup !== null ? onSetup - offSetup : null,
      callsRatio: ratio(on?.callsPerSecond ?? null, off?.callsPerSecond ?? null),
      cpuRatio: ratio(on?.cpuPer1k ?? null, off?.cpuPer1k ?? null),
      treeCpuRatio: ratio(on?.treeCpuPer1k ?? null, off?.treeCpuPer1k ?? null),
      treeRssAddedKbPerSession: onTree !== null && offTree !== null ? (onTree - offTree) / s : null,
      sandboxedBwrap: on?.bwrapProcesses ?? null,
      unsandboxedBwrap: off?.bwrapProcesses ?? null,
    };
  });
  const churnRatio = ratio(churnMedians(data.churn.broker)?.cyclesPerSecond ?? null, churnMedians(data.churn["broker-unsandboxed"])?.cyclesPerSecond ?? null);
  return { shown: true, rows, churnRatio };
}

export interface ModernEraRow {
  sessions: number;
  legacy: Medians | null;
  modern: Medians | null;
  /** modern ÷ legacy calls/s and tree peak RSS, from each one's medians in this run. */
  callsRatio: number | null;
  treeRssRatio: number | null;
}

export type ModernEra = { shown: false; reason: string } | { shown: true; rows: ModernEraRow[] };

/** S modern callers on one token (one child) against S legacy sessions (S children), both on the sandboxed broker in this run. */
export function modernEra(data: BenchData): ModernEra {
  for (const t of ["broker", "broker-modern"] as const) {
    if (!data.options.targets.includes(t)) return { shown: false, reason: `${t} was not measured in this run (--targets)` };
    if (data.unavailable[t] !== undefined) return { shown: false, reason: `${t} was unavailable: ${data.unavailable[t]}` };
  }
  return {
    shown: true,
    rows: data.options.sessions.map((s) => {
      const legacy = loadMedians(data.loads[s]?.broker);
      const modern = loadMedians(data.loads[s]?.["broker-modern"]);
      return {
        sessions: s,
        legacy,
        modern,
        callsRatio: ratio(modern?.callsPerSecond ?? null, legacy?.callsPerSecond ?? null),
        treeRssRatio: ratio(modern?.treeRssKb ?? null, legacy?.treeRssKb ?? null),
      };
    }),
  };
}

/** Issue 14's targets, each from this run's medians: the same broker, child and machine for both eras. */
export function modernVerdicts(data: BenchData): Verdict[] {
  const era = modernEra(data);
  const out: Verdict[] = [];
  const row = (s: number) => (era.shown ? era.rows.find((r) => r.sessions === s) : undefined);
  const why = (s: number) => (!era.shown ? era.reason : row(s) === undefined ? `S=${s} not measured (--sessions)` : "no successful round");
  const check = (what: string, value: number | null | undefined, required: string, pass: (v: number) => boolean, show: (v: number) => string, missing: string): Verdict =>
    value === null || value === undefined ? { what, measured: "—", required, verdict: "n/a", note: missing } : { what, measured: show(value), required, verdict: pass(value) ? "PASS" : "FAIL" };
  for (const s of [16, 64]) {
    out.push(check(`calls/s modern ÷ legacy, S=${s}`, row(s)?.callsRatio, "≥ 1.00×", (v) => v >= 1, (v) => `${v.toFixed(2)}×`, why(s)));
  }
  out.push(check("tree peak RSS modern ÷ legacy, S=64", row(64)?.treeRssRatio, "≤ 0.10×", (v) => v <= 0.1, (v) => `${v.toFixed(3)}×`, why(64)));
  const callers = data.options.modernScale;
  const what = `${callers || 1000} concurrent modern callers over ${MODERN_SCALE_PRINCIPALS} principals`;
  const required = `all answered, ≤ ${MODERN_SCALE_PRINCIPALS} children`;
  const sc = data.modernScale;
  if (sc === null) out.push({ what, measured: "—", required, verdict: "n/a", note: data.modernScaleSkipped ?? "not run" });
  else if (!sc.ok) out.push({ what, measured: "—", required, verdict: "n/a", note: sc.reason });
  else {
    const v = sc.value;
    const pass = v.callsOk === v.callers && v.children <= v.principals;
    out.push({ what, measured: `${v.callsOk} / ${v.callers} answered, ${v.children} children`, required, verdict: pass ? "PASS" : "FAIL" });
  }
  return out;
}

const ISSUE_SUPERGATEWAY: Record<number, number> = { 1: 0.1, 16: 0.18, 64: 0.23 };

export interface TracingCostRow {
  sessions: number;
  previous: Medians | null;
  off: Medians | null;
  on: Medians | null;
}

export type TracingCost = { shown: false; reason: string } | { shown: true; rows: TracingCostRow[] };

/** Informational: the broker of --baseline-ref, this broker with tracing off (the default) and with OTEL_EXPORTER_OTLP_ENDPOINT set, in this run. */
export function tracingCost(data: BenchData): TracingCost {
  const compared = (["broker-previous", "broker-otel"] as const).filter((t) => data.options.targets.includes(t));
  if (compared.length === 0) return { shown: false, reason: "neither broker-previous nor broker-otel was measured in this run (--targets)" };
  if (!data.options.targets.includes("broker")) return { shown: false, reason: "broker was not measured in this run (--targets)" };
  return {
    shown: true,
    rows: data.options.sessions.map((s) => ({
      sessions: s,
      previous: loadMedians(data.loads[s]?.["broker-previous"]),
      off: loadMedians(data.loads[s]?.broker),
      on: loadMedians(data.loads[s]?.["broker-otel"]),
    })),
  };
}

export interface ReplicaScalingRow {
  sessions: number;
  one: Medians | null;
  three: Medians | null;
  /** broker-replicas-3 ÷ broker-replicas-1 calls/s. */
  callsRatio: number | null;
}

export type ReplicaScaling =
  | { shown: false; reason: string }
  | { shown: true; rows: ReplicaScalingRow[]; churnOne: ChurnMedians | null; churnThree: ChurnMedians | null; churnRatio: number | null };

/** Informational (issue 16): calls/s and sessions/s through Caddy with one replica and with three, from this run's medians. */
export function replicaScaling(data: BenchData): ReplicaScaling {
  const missing = (["broker-replicas-1", "broker-replicas-3"] as const).filter((t) => !data.options.targets.includes(t));
  if (missing.length > 0) return { shown: false, reason: `${missing.join(" and ")} not measured in this run (--targets)` };
  const churnOne = churnMedians(data.churn["broker-replicas-1"]);
  const churnThree = churnMedians(data.churn["broker-replicas-3"]);
  return {
    shown: true,
    rows: data.options.sessions.map((s) => {
      const one = loadMedians(data.loads[s]?.["broker-replicas-1"]);
      const three = loadMedians(data.loads[s]?.["broker-replicas-3"]);
      return { sessions: s, one, three, callsRatio: ratio(three?.callsPerSecond ?? null, one?.callsPerSecond ?? null) };
    }),
    churnOne,
    churnThree,
    churnRatio: ratio(churnThree?.cyclesPerSecond ?? null, churnOne?.cyclesPerSecond ?? null),
  };
}

export function renderMarkdown(data: BenchData): string {
  const { options, machine } = data;
  const lines: string[] = [];
  const push = (...l: string[]) => lines.push(...l);
  push(
    "# Benchmark: broker vs direct stdio vs supergateway",
    "",
    `Measured ${machine.date} in one run of \`bun run bench${options.quick ? " -- --quick" : ""}\` (${(data.wallSeconds / 60).toFixed(1)} min). All figures are medians over ${options.rounds} round(s); targets alternate (${options.targets.join(", ")}) within each round.`,
    "",
    "## Machine",
    "",
    `- CPU: ${machine.cpu}, ${machine.nproc} cores (nproc)`,
    `- memory: ${machine.memory}`,
    `- kernel: ${machine.kernel}`,
    `- bun ${machine.bun} (harness, broker, ts child); node ${machine.node} (supergateway ${machine.supergateway})`,
    `- commit: ${machine.commit}`,
    `- load average (1, 5, 15 min): ${machine.loadAverage} at the start, ${data.loadAverageAtEnd} at the end`,
    "",
    "## Settings",
    "",
    `- child: ${data.childDescription}`,
    `- sessions: ${options.sessions.join(", ")}; ${options.calls} calls per measurement split over the sessions (${options.sessions.map((s) => `S=${s}: ${Math.ceil(options.calls / s)} per session`).join(", ")}); warm-up ${options.warmup} calls on a fresh gateway`,
    `- churn: ${options.churn} cycles per target and round; scale point: ${data.scaleSkipped ?? `${options.scale} sessions, C child, one call each`}`,
    `- broker: \`bun src/index.ts\`, BROKER_LOG_LEVEL=${options.brokerLogLevel}, bearer guard on, token from the OAuth flow against the Forgejo stand-in, each child in its bubblewrap sandbox (BROKER_CHILD_SANDBOX=bwrap, the default)${options.targets.includes("broker-unsandboxed") ? "; broker-unsandboxed: the same with BROKER_CHILD_SANDBOX=none" : ""}; supergateway: \`node …/supergateway/dist/index.js --stdio "<child>" --outputTransport streamableHttp --stateful --logLevel none\``,
    ...(options.targets.includes("relay") ? ["- relay: `bun bench/relay/relay.ts --port P -- <child>`: Bun.serve and one child per session, no auth or limits (a reference for the runtime's floor, not a product)"] : []),
    "",
  );

  for (const [target, reason] of Object.entries(data.unavailable)) push(`> **${target}: unavailable: ${reason}**`, "");

  push(
    "## Calls",
    "",
    "| S | target | calls/s | p50 ms | p99 ms | set-up p50 ms | gateway peak RSS MiB | tree peak RSS MiB | gateway CPU s / 1k calls | ÷ direct calls/s | progress 5/5 | rounds |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
  );
  for (const s of options.sessions) {
    const direct = loadMedians(data.loads[s]?.direct);
    for (const target of options.targets) {
      const outcomes = data.loads[s]?.[target];
      const med = loadMedians(outcomes);
      if (data.unavailable[target] !== undefined) {
        push(`| ${s} | ${target} | unavailable: ${data.unavailable[target]!.replace(/\|/g, "\\|")} | | | | | | | | | 0 |`);
        continue;
      }
      if (med === null) {
        const reason = (outcomes ?? []).find((o) => !o.ok) as { reason: string } | undefined;
        push(`| ${s} | ${target} | failed: ${(reason?.reason ?? "not run").replace(/\|/g, "\\|")} | | | | | | | | | 0 |`);
        continue;
      }
      const progress = oks(outcomes).map((o) => o.progress);
      const progressText = progress.every((p) => p === 5) ? "yes" : progress.map((p) => p ?? "?").join("/");
      const r = ratio(med.callsPerSecond, direct?.callsPerSecond ?? null);
      push(
        `| ${s} | ${target} | ${f(med.callsPerSecond, 0)} | ${ms(med.p50Ms)} | ${ms(med.p99Ms)} | ${ms(med.setupP50Ms)} | ${mib(med.gatewayRssKb)} | ${mib(med.treeRssKb)} | ${f(med.cpuPer1k, 3)} | ${r === null ? "—" : `${r.toFixed(2)}×`} | ${progressText} | ${med.rounds} |`,
      );
    }
  }
  push(
    "",
    "The issue states supergateway at 0.10×, 0.18× and 0.23× of direct's calls/s at S = 1, 16, 64 on its 2-core machine; this run: " +
      options.sessions
        .map((s) => {
          const r = ratio(loadMedians(data.loads[s]?.supergateway)?.callsPerSecond ?? null, loadMedians(data.loads[s]?.direct)?.callsPerSecond ?? null);
          return `S=${s}: ${r === null ? "—" : `${r.toFixed(2)}×`}${ISSUE_SUPERGATEWAY[s] !== undefined ? ` (issue ${ISSUE_SUPERGATEWAY[s]!.toFixed(2)}×)` : ""}`;
        })
        .join(", ") +
      ".",
    "",
    "## Churn (sequential initialize → one call → end of session)",
    "",
    "| target | cycles/s | cycle p50 ms | ÷ direct | left 1 s after the last end (zombies), worst round | rounds |",
    "|---|---:|---:|---:|---|---:|",
  );
  const directChurn = churnMedians(data.churn.direct);
  for (const target of options.targets) {
    if (data.unavailable[target] !== undefined) {
      push(`| ${target} | unavailable | | | | 0 |`);
      continue;
    }
    const c = churnMedians(data.churn[target]);
    if (target === "broker-modern") {
      push(`| ${target} | not run: modern callers have no session to end | | | | 0 |`);
      continue;
    }
    if (c === null && options.churn === 0) {
      push(`| ${target} | not run (--churn 0) | | | | 0 |`);
      continue;
    }
    if (c === null) {
      const reason = (data.churn[target] ?? []).find((o) => !o.ok) as { reason: string } | undefined;
      push(`| ${target} | failed: ${(reason?.reason ?? "not run").replace(/\|/g, "\\|")} | | | | 0 |`);
      continue;
    }
    const r = ratio(c.cyclesPerSecond, directChurn?.cyclesPerSecond ?? null);
    push(`| ${target} | ${f(c.cyclesPerSecond, 1)} | ${ms(c.cycleP50Ms)} | ${r === null ? "—" : `${r.toFixed(2)}×`} | ${c.maxLeft ?? "—"} (${c.maxZombies ?? "—"}) | ${c.rounds} |`);
  }
  push("", "Direct ends a session by closing the child's stdin and reaping it, inside the timed cycle; the gateways end it with DELETE.", "");

  push("## Targets (issue 4)", "", "| target | measured | required | verdict |", "|---|---:|---|:---:|");
  for (const v of verdicts(data)) push(`| ${v.what} | ${v.measured} | ${v.required} | ${v.verdict}${v.note ? ` — ${v.note.replace(/\|/g, "\\|")}` : ""} |`);
  push("");

  const floor = relayFloor(data);
  if (!floor.shown) push(`_Against the bare relay (the runtime's floor): not shown, ${floor.reason}._`, "");
  else {
    const x = (v: number | null, d = 2) => (v === null ? "—" : `${v.toFixed(d)}×`);
    push(
      "## Against the bare relay (the runtime's floor)",
      "",
      "Informational, not a target: the relay (`bench/relay/relay.ts`) is the least a Streamable HTTP gateway on this runtime does (Bun.serve, one pipe write and one read per message, no auth, no limits). What the broker costs beyond it is the broker's own; what the relay costs is the runtime's.",
      "",
      "| S | broker ÷ relay calls/s | broker − relay p50 ms | broker ÷ relay CPU per call | relay ÷ supergateway CPU per call | relay ÷ direct calls/s |",
      "|---:|---:|---:|---:|---:|---:|",
    );
    for (const r of floor.rows) {
      const d = r.brokerMinusRelayP50Ms;
      push(`| ${r.sessions} | ${x(r.brokerOverRelayCalls)} | ${d === null ? "—" : `${d >= 0 ? "+" : ""}${d.toFixed(3)}`} | ${x(r.brokerOverRelayCpu)} | ${x(r.relayOverSupergatewayCpu, 3)} | ${x(r.relayOverDirectCalls)} |`);
    }
    push("", `Churn cycles/s broker ÷ relay: ${x(floor.churnBrokerOverRelay)}.`, "");
  }

  const sandbox = sandboxCost(data);
  if (!sandbox.shown) push(`_Sandbox cost: not shown, ${sandbox.reason}._`, "");
  else {
    const x = (v: number | null) => (v === null ? "—" : `${v.toFixed(2)}×`);
    const plus = (v: number | null, d: number) => (v === null ? "—" : `${v >= 0 ? "+" : ""}${v.toFixed(d)}`);
    push(
      "## Sandbox cost",
      "",
      "Informational, not a target: the broker as it runs by default, each child in its bubblewrap sandbox (`broker`), against the same broker with `BROKER_CHILD_SANDBOX=none` (`broker-unsandboxed`), alternating within each round. bwrap sets the sandbox up as the child starts and then only waits: the child's pipes are the broker's own, so per call the ratios should be 1×. The tree's CPU counts the children and bwrap's processes too, to the clock tick per process. calls/s also carries the harness's own cost of sampling memory over a tree three times as large (bwrap and its init beside each child), in the process that generates the load.",
      "",
      "| S | set-up p50 ms sandboxed | unsandboxed | sandbox adds ms | calls/s sandboxed ÷ unsandboxed | gateway CPU per call sandboxed ÷ unsandboxed | tree CPU per call sandboxed ÷ unsandboxed | tree peak RSS added KiB per session | bwrap processes with all sessions open (sandboxed / unsandboxed) |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    );
    for (const r of sandbox.rows) {
      push(
        `| ${r.sessions} | ${ms(r.sandboxedSetupP50Ms)} | ${ms(r.unsandboxedSetupP50Ms)} | ${plus(r.setupAddedMs, 2)} | ${x(r.callsRatio)} | ${x(r.cpuRatio)} | ${x(r.treeCpuRatio)} | ${plus(r.treeRssAddedKbPerSession, 0)} | ${r.sandboxedBwrap ?? "—"} / ${r.unsandboxedBwrap ?? "—"} |`,
      );
    }
    push("", `Churn cycles/s sandboxed ÷ unsandboxed: ${x(sandbox.churnRatio)}.`, "");
  }

  const tracing = tracingCost(data);
  if (!tracing.shown) push(`_Tracing cost: not shown, ${tracing.reason}._`, "");
  else {
    const x = (a: number | null | undefined, b: number | null | undefined) => (a == null || b == null || b === 0 ? "—" : `${(a / b).toFixed(2)}×`);
    const trio = (show: (m: Medians | null) => string, r: TracingCostRow) => `${show(r.previous)} / ${show(r.off)} / ${show(r.on)}`;
    const t = data.tracing;
    push(
      "## Tracing cost",
      "",
      `Informational, not a target: \`broker-previous\` is the broker of ${t?.baselineCommit ? `\`${t.baselineRef}\` (${t.baselineCommit})` : `\`${t?.baselineRef ?? "?"}\``} (its src/, exported to a temporary directory), \`broker\` this checkout with tracing off (no OTEL_EXPORTER_OTLP_ENDPOINT, the default: no SDK is started), \`broker-otel\` the same with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a sink in the harness${t?.sinkRequests != null ? ` (it received ${t.sinkRequests} export requests, ${((t.sinkBytes ?? 0) / 1024 / 1024).toFixed(1)} MiB of OTLP JSON)` : ""}; alternating within each round, medians over rounds. Off should cost nothing against the previous commit: ratios within the run-to-run noise of this machine.`,
      "",
      "| S | calls/s previous / off / on | off ÷ previous | on ÷ off | p50 ms previous / off / on | p99 ms previous / off / on | gateway CPU s / 1k calls previous / off / on | off ÷ previous | on ÷ off |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    );
    const num = (d: number) => (v: number | null | undefined) => (v == null ? "—" : v.toFixed(d));
    for (const r of tracing.rows) {
      push(
        `| ${r.sessions} | ${trio((m) => num(0)(m?.callsPerSecond), r)} | ${x(r.off?.callsPerSecond, r.previous?.callsPerSecond)} | ${x(r.on?.callsPerSecond, r.off?.callsPerSecond)} | ${trio((m) => num(3)(m?.p50Ms), r)} | ${trio((m) => num(3)(m?.p99Ms), r)} | ${trio((m) => num(3)(m?.cpuPer1k), r)} | ${x(r.off?.cpuPer1k, r.previous?.cpuPer1k)} | ${x(r.on?.cpuPer1k, r.off?.cpuPer1k)} |`,
      );
    }
    push("");
  }

  const replicas = replicaScaling(data);
  if (!replicas.shown) push(`_Replicas through Caddy: not shown, ${replicas.reason}._`, "");
  else {
    const pair = (a: number | null | undefined, b: number | null | undefined, show: (v: number | null | undefined) => string) => `${show(a)} / ${show(b)}`;
    const x = (v: number | null) => (v === null ? "—" : `${v.toFixed(2)}×`);
    push(
      "## Replicas through Caddy (issue 16)",
      "",
      `Informational, not a target: \`broker-replicas-1\` is one broker and \`broker-replicas-3\` three broker processes, each on one fresh PostgreSQL database (BROKER_DATABASE_URL) and one Redis prefix (BROKER_REDIS_URL), behind Caddy running deploy/Caddyfile (round robin, \`flush_interval -1\`); the load generator speaks to Caddy only, so three replicas share the sessions between them and a session's requests that reach a replica other than its owner are forwarded to the owner. Everything — the replicas, their children, Caddy, PostgreSQL, Redis and the load generator — shares this machine's ${data.machine.nproc} cores: three replicas add processes and a forwarding hop, not CPU, so they are not expected to be faster here; the ratio shows what the hop and the shared state cost when nothing is gained from more hardware. In the Calls table, these targets' RSS and CPU columns are the first replica's alone (its tree: its own children), not the cluster's.`,
      "",
      "| S | calls/s 1 / 3 replicas | 3 ÷ 1 | p50 ms 1 / 3 | p99 ms 1 / 3 | set-up p50 ms 1 / 3 |",
      "|---:|---:|---:|---:|---:|---:|",
    );
    for (const r of replicas.rows) {
      push(
        `| ${r.sessions} | ${pair(r.one?.callsPerSecond, r.three?.callsPerSecond, (v) => f(v, 0))} | ${x(r.callsRatio)} | ${pair(r.one?.p50Ms, r.three?.p50Ms, ms)} | ${pair(r.one?.p99Ms, r.three?.p99Ms, ms)} | ${pair(r.one?.setupP50Ms, r.three?.setupP50Ms, ms)} |`,
      );
    }
    push(
      "",
      `Sessions/s (churn: initialize → one call → DELETE, one after another) 1 / 3 replicas: ${pair(replicas.churnOne?.cyclesPerSecond, replicas.churnThree?.cyclesPerSecond, (v) => f(v, 1))}, 3 ÷ 1: ${x(replicas.churnRatio)}.`,
      "",
    );
  }

  const era = modernEra(data);
  if (!era.shown) push(`_Modern era: not shown, ${era.reason}._`, "");
  else {
    const pair = (a: number | null | undefined, b: number | null | undefined, show: (v: number | null | undefined) => string) => `${show(a)} / ${show(b)}`;
    const x = (v: number | null, d = 2) => (v === null ? "—" : `${v.toFixed(d)}×`);
    push(
      "## Modern era (issue 14)",
      "",
      `S MCP 2026-07-28 callers on one token, so one principal and one child (\`broker-modern\`), against S legacy sessions, so S children (\`broker\`): the same sandboxed broker, child and calls, alternating within each round. Both brokers ran with BROKER_MAX_SESSIONS = BROKER_MAX_SESSIONS_PER_USER = BROKER_MAX_IN_FLIGHT_PER_USER = ${data.brokerCaps} (defaults 1000, 20, 64): all of the bench's load is one Forgejo user's, and the caps are not what is measured.`,
      "",
      "| S | calls/s legacy / modern | modern ÷ legacy | p50 ms legacy / modern | p99 ms legacy / modern | gateway CPU s / 1k calls legacy / modern | tree peak RSS MiB legacy / modern | modern ÷ legacy | children legacy / modern |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    );
    for (const r of era.rows) {
      const [l, m] = [r.legacy, r.modern];
      push(
        `| ${r.sessions} | ${pair(l?.callsPerSecond, m?.callsPerSecond, (v) => f(v, 0))} | ${x(r.callsRatio)} | ${pair(l?.p50Ms, m?.p50Ms, ms)} | ${pair(l?.p99Ms, m?.p99Ms, ms)} | ${pair(l?.cpuPer1k, m?.cpuPer1k, (v) => f(v, 3))} | ${pair(l?.treeRssKb, m?.treeRssKb, mib)} | ${x(r.treeRssRatio, 3)} | ${pair(l?.children, m?.children, (v) => f(v, 0))} |`,
      );
    }
    push("", "| target | measured | required | verdict |", "|---|---:|---|:---:|");
    for (const v of modernVerdicts(data)) push(`| ${v.what} | ${v.measured} | ${v.required} | ${v.verdict}${v.note ? ` — ${v.note.replace(/\|/g, "\\|")}` : ""} |`);
    push("");
    const sc = data.modernScale;
    if (sc === null) push(`Modern scale point: skipped, ${data.modernScaleSkipped ?? "not run"}.`, "");
    else if (!sc.ok) push(`Modern scale point: failed: ${sc.reason}.`, "");
    else {
      const v = sc.value;
      push(
        `Modern scale point: ${v.callers} callers at once over ${v.principals} tokens (${v.principals} grants of one user, each its own principal), one server/discover and one call each: ${v.discovered} discovered, ${v.callsOk} calls answered in ${f(v.seconds, 2)} s; at most ${v.children} child processes (the child's program, counted by name: one per principal) and ${v.bwrapProcesses} bwrap processes (bwrap runs two per sandbox) in the broker's tree at once; tree peak RSS ${mib(v.treePeakKb)} MiB.` +
          (v.errors.length > 0 ? ` Errors: ${v.errors.slice(0, 3).join("; ").slice(0, 300)}.` : ""),
        "",
      );
    }
  }

  push("## Scale point", "");
  if (data.scaleSkipped !== null) push(`Skipped: ${data.scaleSkipped}.`, "");
  else {
    push(
      `${options.scale} concurrent sessions with the C child, opened at once, then one echo call each.`,
      "",
      "| target | sessions open | calls answered | set-up p50 / p99 ms | all open after s | gateway RSS before → peak MiB | gateway KiB per session | tree peak RSS MiB | tree RSS KiB per session | tree PSS KiB per session |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    );
    for (const target of options.scaleTargets) {
      const o = data.scale[target];
      if (data.unavailable[target] !== undefined) push(`| ${target} | unavailable: ${data.unavailable[target]!.replace(/\|/g, "\\|")} | | | | | | | | |`);
      else if (o === undefined) push(`| ${target} | not run | | | | | | | | |`);
      else if (!o.ok) push(`| ${target} | failed: ${o.reason.replace(/\|/g, "\\|")} | | | | | | | | |`);
      else {
        const v = o.value;
        const perSession = v.gatewayBaseKb !== null && v.gatewayPeakKb !== null && v.opened > 0 ? (v.gatewayPeakKb - v.gatewayBaseKb) / v.opened : null;
        push(
          `| ${target} | ${v.opened} / ${v.sessions} | ${v.callsOk} | ${ms(v.setupP50Ms)} / ${ms(v.setupP99Ms)} | ${f(v.openSeconds, 2)} | ${v.gatewayBaseKb === null ? "—" : `${mib(v.gatewayBaseKb)} → ${mib(v.gatewayPeakKb)}`} | ${f(perSession, 1)} | ${mib(v.treePeakKb)} | ${f(v.opened > 0 ? v.treePeakKb / v.opened : null, 1)} | ${f(v.opened > 0 && v.treePssKb !== null ? v.treePssKb / v.opened : null, 1)} |`,
        );
        if (v.errors.length > 0) push(`|  | errors: ${v.errors.slice(0, 3).join("; ").replace(/\|/g, "\\|").slice(0, 300)} | | | | | | | | |`);
      }
    }
    push(
      "",
      "Gateway KiB per session = (peak − before) ÷ sessions open. Tree figures include the children (and supergateway's `sh -c` wrappers); tree RSS counts the pages every copy of a program shares once per process, tree PSS (smaps_rollup, taken once when all sessions are open) divides them among the processes.",
      "",
    );
  }

  push("## Every round", "", "<details><summary>raw figures per round</summary>", "", "| S | target | round | calls/s | p50 ms | p99 ms | set-up p50 ms | gw RSS MiB | tree RSS MiB | CPU s/1k | ok | errors |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
  for (const s of options.sessions) {
    for (const target of options.targets) {
      (data.loads[s]?.[target] ?? []).forEach((o, i) => {
        if (!o.ok) push(`| ${s} | ${target} | ${i + 1} | failed: ${o.reason.replace(/\|/g, "\\|").slice(0, 200)} | | | | | | | | |`);
        else {
          const v = o.value;
          push(
            `| ${s} | ${target} | ${i + 1} | ${f(v.callsPerSecond, 0)} | ${ms(v.p50Ms)} | ${ms(v.p99Ms)} | ${ms(v.setupP50Ms)} | ${mib(v.gatewayRssKb)} | ${mib(v.treeRssKb)} | ${f(v.cpuPer1k, 3)} | ${v.callsOk}/${v.callsRequested} | ${v.errors.join("; ").replace(/\|/g, "\\|").slice(0, 200)} |`,
          );
        }
      });
    }
  }
  push("", "| target | round | cycles/s | cycle p50 ms | left (zombies) | errors |", "|---|---:|---:|---:|---|---|");
  for (const target of options.targets) {
    (data.churn[target] ?? []).forEach((o, i) => {
      if (!o.ok) push(`| ${target} | ${i + 1} | failed: ${o.reason.replace(/\|/g, "\\|").slice(0, 200)} | | | |`);
      else {
        const v = o.value;
        push(`| ${target} | ${i + 1} | ${f(v.cyclesPerSecond, 1)} | ${ms(v.cycleP50Ms)} | ${v.leftAfter1s ?? "—"} (${v.zombiesAfter1s ?? "—"}) ${v.leftExamples.join(", ")} | ${v.errors.join("; ").replace(/\|/g, "\\|").slice(0, 200)} |`);
      }
    });
  }
  push("", "</details>", "");
  return lines.join("\n");
}

// One measurement of one target: a fresh gateway (or, for direct, fresh children), a warm-up, then
// the load (S sessions, calls split over them) with RSS sampled and the gateway's CPU read at the
// exact start and end of the calls phase; or the churn cycle; or a scale point (legacy or modern).
// Returns figures or an error, never made-up numbers.
import { basename } from "node:path";
import { runChurn, runLoad, type LoadResult } from "../../src/loadtest/run.ts";
import type { Era } from "../../src/loadtest/session.ts";
import type { FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { REPLICA_TARGETS, type TargetName } from "./args.ts";
import { runDirectChurn, runDirectLoad, StdioSession } from "./direct.ts";
import { startBroker, startRelay, startSupergateway, Unavailable, type ChildSpec, type Gateway } from "./gateways.ts";
import { startReplicas } from "./replica-targets.ts";
import { CLK_TCK, countByComm, cpuSeconds, describeDescendants, descendantsOf, procStat, rssKb, RssSampler, treePssKb, type ProcStat } from "./proc.ts";

export interface LoadSample {
  callsPerSecond: number | null;
  p50Ms: number | null;
  p99Ms: number | null;
  setupP50Ms: number | null;
  setupP99Ms: number | null;
  /** Peak RSS of the gateway process alone, KiB (null for direct: there is none). */
  gatewayRssKb: number | null;
  /** Peak RSS of the gateway and all its descendants (direct: of its children), KiB. */
  treeRssKb: number;
  /** Gateway CPU seconds (user + system) per 1,000 calls over the calls phase; null for direct. */
  cpuPer1k: number | null;
  /**
   * The same for the gateway and every process in its tree when the calls began (children, bwrap), at
   * the clock tick's resolution per process; null for direct.
   */
  treeCpuPer1k: number | null;
  sessionsOpened: number;
  callsOk: number;
  callsRequested: number;
  errors: string[];
  /** Progress notifications delivered for one progress call at start-up (5 expected). */
  progress: number | null;
  /**
   * bwrap processes in the gateway's tree once every session is open (the first call): two per session
   * when the broker sandboxes its children (bwrap and the sandbox's init), none otherwise; null for direct.
   */
  bwrapProcesses: number | null;
  /** Child processes (the child's program) in the gateway's tree at the first call: S for legacy sessions, 1 for modern callers on one token; null for direct. */
  children: number | null;
}

export interface ModernScaleSample {
  callers: number;
  principals: number;
  /** Callers whose server/discover was answered, and tools/calls answered. */
  discovered: number;
  callsOk: number;
  /** The most child processes (the child's program) and bwrap processes seen in the broker's tree during the run. */
  children: number;
  bwrapProcesses: number;
  treePeakKb: number;
  /** From the first server/discover to the last answer. */
  seconds: number;
  errors: string[];
}

export interface ChurnSample {
  cyclesPerSecond: number | null;
  cycleP50Ms: number | null;
  ok: number;
  requested: number;
  /** Descendants of the gateway 1 s after the last DELETE (direct: of the children it spawned), and how many are zombies. */
  leftAfter1s: number | null;
  zombiesAfter1s: number | null;
  leftExamples: string[];
  errors: string[];
}

export interface ScaleSample {
  sessions: number;
  opened: number;
  callsOk: number;
  setupP50Ms: number | null;
  setupP99Ms: number | null;
  openSeconds: number;
  /** Gateway RSS before the load (after warm-up) and at its peak, KiB; null for direct. */
  gatewayBaseKb: number | null;
  gatewayPeakKb: number | null;
  treePeakKb: number;
  /** PSS of the whole tree once every session is open (shared pages counted once overall), KiB. */
  treePssKb: number | null;
  errors: string[];
}

export type Outcome<T> = { ok: true; value: T } | { ok: false; reason: string };

/** A measurement that threw: the row reports why instead of a figure. */
function failed(error: unknown): { ok: false; reason: string } {
  return { ok: false, reason: error instanceof Error ? error.message : String(error) };
}

export interface MeasureContext {
  forgejo: FakeForgejo;
  brokerLogLevel: string;
  brokerFlags: string[];
  brokerWrapper: string[];
  maxSessions: number;
  /** broker-previous's src/index.ts (exported from --baseline-ref), when that target runs. */
  previousEntry?: string;
  /** The OTLP/HTTP sink broker-otel sends its traces to, when that target runs. */
  otlpSinkUrl?: string;
  /** Every direct session spawned, so Ctrl-C can kill them. */
  directSessions: Set<StdioSession>;
  /** Env for the direct children: what the broker would give its children (PATH and the two variables). */
  directEnv: Record<string, string>;
}

const now = () => performance.now();

export async function startGateway(target: Exclude<TargetName, "direct">, child: ChildSpec, ctx: MeasureContext): Promise<Gateway> {
  // The run's broker settings, the same for every broker target so that their figures compare.
  const broker = { child, forgejo: ctx.forgejo, maxSessions: ctx.maxSessions, logLevel: ctx.brokerLogLevel, flags: ctx.brokerFlags, wrapper: ctx.brokerWrapper };
  switch (target) {
    case "broker":
    case "broker-previous":
    case "broker-otel":
    case "broker-modern":
    case "broker-unsandboxed":
      if (target === "broker-previous" && ctx.previousEntry === undefined) throw new Unavailable("no baseline checkout");
      if (target === "broker-otel" && ctx.otlpSinkUrl === undefined) throw new Unavailable("no OTLP sink");
      return startBroker({
        ...broker,
        sandbox: target === "broker-unsandboxed" ? "none" : "bwrap",
        entry: target === "broker-previous" ? ctx.previousEntry : undefined,
        env: target === "broker-otel" ? { OTEL_EXPORTER_OTLP_ENDPOINT: ctx.otlpSinkUrl! } : undefined,
      });
    case "broker-replicas-1":
    case "broker-replicas-3":
      return startReplicas(REPLICA_TARGETS[target], { ...broker, sandbox: "bwrap" });
    case "relay":
      return startRelay(child);
    case "supergateway":
      return startSupergateway(child);
  }
}

/** broker-modern is the one target driven by MCP 2026-07-28 callers; every other speaks legacy sessions. */
export function eraOf(target: TargetName): Era {
  return target === "broker-modern" ? "modern" : "legacy";
}

/** The child's program as /proc/<pid>/comm names it (15 bytes at most), to count its processes in a tree. */
function childComm(child: ChildSpec): string {
  return basename(child.argv[0]!).slice(0, 15);
}

/** The direct harness counts failures by what went wrong; the report lists them like loadErrors does. */
function directErrors(errors: Record<string, number>): string[] {
  return Object.entries(errors).map(([what, n]) => `${n}× ${what}`);
}

function loadErrors(result: LoadResult): string[] {
  const errors = result.errors.map((e) => `${e.count}× ${e.kind} ${e.detail}: ${e.example}`);
  if (result.stop.reason !== "completed") errors.unshift(`stopped: ${result.stop.reason}`);
  return errors;
}

interface CpuMarks {
  /** The gateway's CPU seconds at the first call and at the first DELETE (or the end of the calls, when nothing is deleted). */
  start: number | null;
  end: number | null;
  /** CPU seconds the gateway's whole tree (as it was at the first call) used between the two marks. */
  treeSeconds: number | null;
  /** bwrap processes and child processes in the gateway's tree at the first call. */
  bwrap: number | null;
  children: number | null;
}

/**
 * A fetch for runLoad that notes the gateway's CPU time at the first tools/call (the calls phase
 * begins: all sessions are open) and at the first DELETE (runLoad closes sessions only after every
 * call is done), so session set-up and teardown do not count as per-call CPU; the same for its whole
 * tree, and at the first call the bwrap and child processes in the tree are counted. Modern callers
 * delete nothing: finish() sets the end marks once runLoad has returned.
 */
function cpuMarkingFetch(pid: number, comm: string): { fetch: typeof fetch; marks: CpuMarks; finish(): void } {
  const marks: CpuMarks = { start: null, end: null, treeSeconds: null, bwrap: null, children: null };
  let tree: ProcStat[] = [];
  let phase = 0;
  const end = () => {
    phase = 2;
    marks.end = cpuSeconds(pid);
    marks.treeSeconds = treeCpuSince(tree);
  };
  const wrapped = ((input: RequestInfo | URL, init?: RequestInit) => {
    if (phase === 0) {
      if (typeof init?.body === "string" && init.body.includes('"method":"tools/call"')) {
        phase = 1;
        marks.start = cpuSeconds(pid);
        const descendants = descendantsOf(pid);
        tree = [pid, ...descendants].map((p) => procStat(p)).filter((stat) => stat !== null);
        marks.bwrap = countByComm(descendants, "bwrap");
        marks.children = countByComm(descendants, comm);
      }
    } else if (phase === 1 && init?.method === "DELETE") end();
    return fetch(input, init);
  }) as typeof fetch;
  return { fetch: wrapped, marks, finish: () => void (phase === 1 && end()) };
}

/** CPU seconds the processes used since `before` was read; one that has gone or whose pid was reused counts 0. */
function treeCpuSince(before: ProcStat[]): number {
  let ticks = 0;
  for (const then of before) {
    const now = procStat(then.pid);
    if (now !== null && now.startTime === then.startTime) ticks += now.cpuTicks - then.cpuTicks;
  }
  return ticks / CLK_TCK;
}

export async function measureLoad(target: TargetName, child: ChildSpec, sessions: number, totalCalls: number, warmup: number, ctx: MeasureContext): Promise<Outcome<LoadSample>> {
  const calls = Math.max(1, Math.ceil(totalCalls / sessions));
  if (target === "direct") return measureDirectLoad(child, sessions, calls, warmup, ctx);
  let gateway: Gateway;
  try {
    gateway = await startGateway(target, child, ctx);
  } catch (error) {
    return failed(error);
  }
  try {
    const common = { url: gateway.url, token: gateway.token, era: eraOf(target), timeoutMs: 30_000 };
    if (warmup > 0) await runLoad({ ...common, sessions: 1, calls: warmup }, { fetch, now });
    const sampler = new RssSampler(() => [gateway.pid], true);
    const { fetch: marked, marks, finish } = cpuMarkingFetch(gateway.pid, childComm(child));
    const result = await runLoad({ ...common, sessions, calls }, { fetch: marked, now });
    finish();
    marks.end ??= cpuSeconds(gateway.pid);
    const memory = sampler.stop();
    const cpu = marks.start !== null && result.calls.ok > 0 ? ((marks.end - marks.start) / result.calls.ok) * 1000 : null;
    const treeCpu = marks.treeSeconds !== null && result.calls.ok > 0 ? (marks.treeSeconds / result.calls.ok) * 1000 : null;
    return {
      ok: true,
      value: {
        callsPerSecond: result.calls.perSecond,
        p50Ms: result.calls.latencyMs.p50,
        p99Ms: result.calls.latencyMs.p99,
        setupP50Ms: result.sessions.setupMs.p50,
        setupP99Ms: result.sessions.setupMs.p99,
        gatewayRssKb: memory.rootKb,
        treeRssKb: memory.treeKb,
        cpuPer1k: cpu,
        treeCpuPer1k: treeCpu,
        sessionsOpened: result.sessions.opened,
        callsOk: result.calls.ok,
        callsRequested: result.calls.requested,
        errors: loadErrors(result),
        progress: gateway.progressNotifications,
        bwrapProcesses: marks.bwrap,
        children: marks.children,
      },
    };
  } catch (error) {
    return failed(error);
  } finally {
    const stopped = await gateway.stop();
    if (stopped.stragglers > 0) console.error(`  ${target}: killed ${stopped.stragglers} process(es) it left behind`);
  }
}

async function measureDirectLoad(child: ChildSpec, sessions: number, calls: number, warmup: number, ctx: MeasureContext): Promise<Outcome<LoadSample>> {
  const track = (session: StdioSession) => {
    ctx.directSessions.add(session);
    void session.proc.exited.then(() => ctx.directSessions.delete(session));
  };
  const options = { command: child.argv, env: ctx.directEnv, track, timeoutMs: 30_000 };
  try {
    // The same correctness check the gateways get at start-up: one progress call.
    const probe = new StdioSession(child.argv, ctx.directEnv);
    track(probe);
    const probeFailure = await probe.initialize();
    const progress = probeFailure === null ? await probe.progress() : null;
    await probe.close();
    if (probeFailure !== null) return { ok: false, reason: `the child did not initialize: ${probeFailure}` };

    if (warmup > 0) await runDirectLoad({ ...options, sessions: 1, calls: warmup });
    const mine: StdioSession[] = [];
    const sampler = new RssSampler(() => mine.map((s) => s.proc.pid), false);
    const result = await runDirectLoad({
      ...options,
      sessions,
      calls,
      track: (session) => {
        track(session);
        mine.push(session);
      },
      onCallsEnd: () => sampler.sample(),
    });
    const memory = sampler.stop();
    return {
      ok: true,
      value: {
        callsPerSecond: result.calls.perSecond,
        p50Ms: result.calls.latencyMs.p50,
        p99Ms: result.calls.latencyMs.p99,
        setupP50Ms: result.sessions.setupMs.p50,
        setupP99Ms: result.sessions.setupMs.p99,
        gatewayRssKb: null,
        treeRssKb: memory.treeKb,
        cpuPer1k: null,
        treeCpuPer1k: null,
        sessionsOpened: result.sessions.opened,
        callsOk: result.calls.ok,
        callsRequested: result.calls.requested,
        errors: directErrors(result.errors),
        progress,
        bwrapProcesses: null,
        children: null,
      },
    };
  } catch (error) {
    return failed(error);
  }
}

export async function measureChurn(target: TargetName, child: ChildSpec, cycles: number, ctx: MeasureContext): Promise<Outcome<ChurnSample>> {
  if (target === "direct") {
    const spawned: StdioSession[] = [];
    const result = await runDirectChurn({
      command: child.argv,
      env: ctx.directEnv,
      cycles,
      track: (session) => {
        ctx.directSessions.add(session);
        spawned.push(session);
      },
    });
    await Bun.sleep(1000);
    // Every cycle reaps its child before the next starts; count any that still exist (zombie or not).
    const left = spawned.map((s) => procStat(s.proc.pid)).filter((s) => s !== null);
    for (const session of spawned) ctx.directSessions.delete(session);
    return {
      ok: true,
      value: {
        cyclesPerSecond: result.cycles.perSecond,
        cycleP50Ms: result.cycles.latencyMs.p50,
        ok: result.cycles.ok,
        requested: cycles,
        leftAfter1s: left.length,
        zombiesAfter1s: left.filter((s) => s.state === "Z").length,
        leftExamples: left.slice(0, 5).map((s) => `${s.pid} ${s.state}`),
        errors: directErrors(result.errors),
      },
    };
  }
  let gateway: Gateway;
  try {
    gateway = await startGateway(target, child, ctx);
  } catch (error) {
    return failed(error);
  }
  try {
    // The start-up probe already ran one whole session; a short warm-up keeps churn comparable with the load rows.
    await runLoad({ url: gateway.url, token: gateway.token, sessions: 1, calls: 50 }, { fetch, now });
    const result = await runChurn({ url: gateway.url, token: gateway.token, cycles, timeoutMs: 30_000 }, { fetch, now });
    await Bun.sleep(1000);
    const left = describeDescendants(gateway.pid);
    const errors = result.errors.map((e) => `${e.count}× ${e.kind} ${e.detail}: ${e.example}`);
    if (result.cycles.deletes < result.cycles.ok) errors.push(`${result.cycles.ok - result.cycles.deletes} cycle(s) without a successful DELETE`);
    return {
      ok: true,
      value: {
        cyclesPerSecond: result.cycles.perSecond,
        cycleP50Ms: result.cycles.latencyMs.p50,
        ok: result.cycles.ok,
        requested: cycles,
        leftAfter1s: left.total,
        zombiesAfter1s: left.zombies,
        leftExamples: left.examples,
        errors,
      },
    };
  } catch (error) {
    return failed(error);
  } finally {
    await gateway.stop();
  }
}

/** The scale point's figures both kinds of target share; memory is measured differently for each. */
function scaleFigures(
  sessions: number,
  result: { sessions: Pick<LoadResult["sessions"], "opened" | "setupMs" | "durationMs">; calls: Pick<LoadResult["calls"], "ok"> },
) {
  return {
    sessions,
    opened: result.sessions.opened,
    callsOk: result.calls.ok,
    setupP50Ms: result.sessions.setupMs.p50,
    setupP99Ms: result.sessions.setupMs.p99,
    openSeconds: result.sessions.durationMs / 1000,
  };
}

export async function measureScale(target: TargetName, cChild: ChildSpec, sessions: number, ctx: MeasureContext): Promise<Outcome<ScaleSample>> {
  const timeoutMs = 120_000;
  if (target === "direct") {
    const mine: StdioSession[] = [];
    const sampler = new RssSampler(() => mine.map((s) => s.proc.pid), false, 100, 1000);
    let pss: number | null = null;
    try {
      const result = await runDirectLoad({
        command: cChild.argv,
        env: ctx.directEnv,
        sessions,
        calls: 1,
        timeoutMs,
        track: (session) => {
          ctx.directSessions.add(session);
          void session.proc.exited.then(() => ctx.directSessions.delete(session));
          mine.push(session);
        },
        onCallsStart: () => {
          sampler.rescan();
          sampler.sample();
          pss = treePssKb(mine.map((s) => s.proc.pid));
        },
      });
      const memory = sampler.stop();
      return {
        ok: true,
        value: {
          ...scaleFigures(sessions, result),
          gatewayBaseKb: null,
          gatewayPeakKb: null,
          treePeakKb: memory.treeKb,
          treePssKb: pss,
          errors: directErrors(result.errors),
        },
      };
    } catch (error) {
      sampler.stop();
      return failed(error);
    }
  }
  let gateway: Gateway;
  try {
    gateway = await startGateway(target, cChild, ctx);
  } catch (error) {
    return failed(error);
  }
  try {
    await runLoad({ url: gateway.url, token: gateway.token, era: eraOf(target), sessions: 1, calls: 200 }, { fetch, now });
    const base = rssKb(gateway.pid);
    const sampler = new RssSampler(() => [gateway.pid], true, 100, 1000);
    // Sample at the moment every session is open (the first call), when the tree is at its largest.
    let sampled = false;
    let pss: number | null = null;
    const marking = ((input: RequestInfo | URL, init?: RequestInit) => {
      if (!sampled && typeof init?.body === "string" && init.body.includes('"method":"tools/call"')) {
        sampled = true;
        sampler.rescan();
        sampler.sample();
        pss = treePssKb([gateway.pid]);
      }
      return fetch(input, init);
    }) as typeof fetch;
    const result = await runLoad({ url: gateway.url, token: gateway.token, era: eraOf(target), sessions, calls: 1, timeoutMs }, { fetch: marking, now });
    const memory = sampler.stop();
    return {
      ok: true,
      value: {
        ...scaleFigures(sessions, result),
        gatewayBaseKb: base,
        gatewayPeakKb: memory.rootKb,
        treePeakKb: memory.treeKb,
        treePssKb: pss,
        errors: loadErrors(result),
      },
    };
  } catch (error) {
    return failed(error);
  } finally {
    const stopped = await gateway.stop();
    if (stopped.stragglers > 0) console.error(`  ${target}: killed ${stopped.stragglers} process(es) it left behind`);
  }
}

/**
 * The modern scale point: one sandboxed broker, `callers` concurrent MCP 2026-07-28 callers spread evenly
 * over `principals` tokens (each a new grant through the OAuth flow), one call each after server/discover.
 * The broker's tree is sampled throughout; the children counted are the most of the child's program seen at once.
 */
export async function measureModernScale(child: ChildSpec, callers: number, principals: number, ctx: MeasureContext): Promise<Outcome<ModernScaleSample>> {
  let gateway: Gateway;
  try {
    gateway = await startGateway("broker-modern", child, ctx);
  } catch (error) {
    return failed(error);
  }
  const comm = childComm(child);
  let maxChildren = 0;
  let maxBwrap = 0;
  const count = () => {
    const descendants = descendantsOf(gateway.pid);
    maxChildren = Math.max(maxChildren, countByComm(descendants, comm));
    maxBwrap = Math.max(maxBwrap, countByComm(descendants, "bwrap"));
  };
  const counter = setInterval(count, 100);
  const sampler = new RssSampler(() => [gateway.pid], true, 100, 200);
  try {
    const tokens = [gateway.token!];
    while (tokens.length < principals) tokens.push(await gateway.newToken!());
    const per = Math.ceil(callers / principals);
    const started = now();
    const results = await Promise.all(
      tokens.map((token, i) =>
        runLoad({ url: gateway.url, token, era: "modern", sessions: Math.min(per, callers - i * per), calls: 1, timeoutMs: 120_000 }, { fetch, now }),
      ),
    );
    const seconds = (now() - started) / 1000;
    count();
    const memory = sampler.stop();
    return {
      ok: true,
      value: {
        callers,
        principals,
        discovered: results.reduce((n, r) => n + r.sessions.opened, 0),
        callsOk: results.reduce((n, r) => n + r.calls.ok, 0),
        children: maxChildren,
        bwrapProcesses: maxBwrap,
        treePeakKb: memory.treeKb,
        seconds,
        errors: results.flatMap(loadErrors),
      },
    };
  } catch (error) {
    sampler.stop();
    return failed(error);
  } finally {
    clearInterval(counter);
    const stopped = await gateway.stop();
    if (stopped.stragglers > 0) console.error(`  broker-modern: killed ${stopped.stragglers} process(es) it left behind`);
  }
}

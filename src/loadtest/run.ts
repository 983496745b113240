// The load and churn runs: drive McpHttpSessions, time them, count failures by kind, and
// stop early (with what was measured so far) on Ctrl-C, a refused token or an unreachable URL.

import { LatencyRecorder, type LatencySummary } from "./stats.ts";
import { McpHttpSession, type CallSpec, type Era, type Failure, type FailureKind, type Target } from "./session.ts";

export interface RunDeps {
  fetch: typeof fetch;
  /** Milliseconds from a monotonic clock: performance.now(). */
  now: () => number;
}

/** Counters the run updates in place, for a progress display to sample on its own schedule. */
export interface LiveCounters {
  sessionsOpen: number;
  callsDone: number;
  cyclesDone: number;
  errors: number;
}

export function newLiveCounters(): LiveCounters {
  return { sessionsOpen: 0, callsDone: 0, cyclesDone: 0, errors: 0 };
}

interface CommonOptions {
  url: string;
  token?: string;
  /** Default legacy: each session initializes; modern callers send self-describing requests, set up by server/discover. */
  era?: Era;
  /** Default "echo" with arguments {"text":"hi"}. */
  tool?: string;
  args?: unknown;
  /** Per request; default 30 000. */
  timeoutMs?: number;
  /** Aborting stops the run; it then resolves with what was measured, stop.reason "interrupted". */
  signal?: AbortSignal;
  live?: LiveCounters;
}

export interface LoadOptions extends CommonOptions {
  sessions: number;
  calls: number;
}

export interface ChurnOptions extends CommonOptions {
  cycles: number;
}

export type Stop =
  | { reason: "completed" }
  | { reason: "interrupted" }
  | { reason: "unauthorized"; url: string; message: string; wwwAuthenticate: string | null }
  | { reason: "unreachable"; url: string; cause: string };

export interface ErrorCount {
  kind: FailureKind;
  detail: string;
  count: number;
  /** The first message of this kind, to show what went wrong. */
  example: string;
}

export interface LoadResult {
  url: string;
  tool: string;
  protocolVersion: string | null;
  stop: Stop;
  sessions: {
    requested: number;
    opened: number;
    failed: number;
    durationMs: number;
    perSecond: number | null;
    setupMs: LatencySummary;
  };
  calls: {
    perSession: number;
    requested: number;
    ok: number;
    failed: number;
    durationMs: number;
    perSecond: number | null;
    /** Successful calls only. */
    latencyMs: LatencySummary;
  };
  errors: ErrorCount[];
}

export interface ChurnResult {
  url: string;
  tool: string;
  stop: Stop;
  cycles: {
    requested: number;
    ok: number;
    failed: number;
    /** Successful DELETEs: a server without sessions gets none. */
    deletes: number;
    durationMs: number;
    perSecond: number | null;
    latencyMs: LatencySummary;
  };
  errors: ErrorCount[];
}

export const DEFAULT_TOOL = "echo";
export const DEFAULT_ARGS = { text: "hi" };
export const DEFAULT_TIMEOUT_MS = 30_000;

/** What both runs share: failure accounting, stopping, and the timeout watchdog. */
class Run {
  stop: Stop | null = null;
  anySuccess = false;
  readonly active = new Set<McpHttpSession>();
  readonly live: LiveCounters;
  readonly target: Target;
  readonly call: CallSpec;
  private readonly errors = new Map<string, ErrorCount>();
  private readonly watchdog: ReturnType<typeof setInterval>;
  private readonly onAbort = () => this.halt({ reason: "interrupted" });

  constructor(
    private readonly options: CommonOptions,
    readonly deps: RunDeps,
  ) {
    this.live = options.live ?? newLiveCounters();
    this.target = { url: options.url, token: options.token, fetch: deps.fetch, era: options.era };
    this.call = { tool: options.tool ?? DEFAULT_TOOL, args: options.args ?? DEFAULT_ARGS };
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    // One timer for the whole run instead of one per request: the hot path arms nothing.
    this.watchdog = setInterval(
      () => {
        const now = deps.now();
        for (const session of this.active) {
          if (session.startedAt >= 0 && now - session.startedAt > timeoutMs) session.timeout();
        }
      },
      Math.max(5, Math.min(250, timeoutMs / 4)),
    );
    if (options.signal?.aborted) this.halt({ reason: "interrupted" });
    options.signal?.addEventListener("abort", this.onAbort);
  }

  session(): McpHttpSession {
    const session = new McpHttpSession(this.target, this.call, this.deps.now);
    this.active.add(session);
    return session;
  }

  /** Stops the run: the first reason wins, requests in flight are abandoned. */
  halt(stop: Stop): void {
    if (this.stop !== null) return;
    this.stop = stop;
    for (const session of this.active) session.abort();
  }

  /** Counts a failure; a refused token, or a connection failure before anything worked, ends the run. */
  fail(failure: Failure, duringInitialize: boolean): void {
    if (this.stop !== null) return;
    this.live.errors++;
    const key = `${failure.kind} ${failure.detail}`;
    const entry = this.errors.get(key);
    if (entry === undefined) {
      this.errors.set(key, { kind: failure.kind, detail: failure.detail, count: 1, example: failure.message });
    } else {
      entry.count++;
    }
    if (failure.kind === "http" && failure.detail === "401") {
      const { url } = this.options;
      this.halt({ reason: "unauthorized", url, message: failure.message, wwwAuthenticate: failure.wwwAuthenticate ?? null });
    } else if (failure.kind === "network" && duringInitialize && !this.anySuccess) {
      // Bun's messages usually start with the code already.
      const cause = failure.message.startsWith(failure.detail) ? failure.message : `${failure.detail}: ${failure.message}`;
      this.halt({ reason: "unreachable", url: this.options.url, cause });
    }
  }

  errorList(): ErrorCount[] {
    return [...this.errors.values()].sort((a, b) => b.count - a.count);
  }

  finish(): Stop {
    clearInterval(this.watchdog);
    this.options.signal?.removeEventListener("abort", this.onAbort);
    return this.stop ?? { reason: "completed" };
  }
}

function perSecond(count: number, ms: number): number | null {
  return ms > 0 ? (count * 1000) / ms : null;
}

/**
 * Opens `sessions` sessions concurrently, then (once all are open, so set-up does not overlap
 * the calls) makes `calls` sequential tools/calls in each; ends every session with DELETE.
 * Bun's fetch sends at most 256 requests at once unless the process was started with
 * BUN_CONFIG_MAX_HTTP_REQUESTS ≥ sessions: beyond that the latencies include a client-side queue.
 */
export async function runLoad(options: LoadOptions, deps: RunDeps): Promise<LoadResult> {
  const run = new Run(options, deps);
  const { now } = deps;
  const setup = new LatencyRecorder(options.sessions);
  const latency = new LatencyRecorder(options.sessions * options.calls);
  const open: McpHttpSession[] = [];
  let failedCalls = 0;

  const setupStart = now();
  await Promise.all(
    Array.from({ length: options.sessions }, async () => {
      if (run.stop !== null) return;
      const session = run.session();
      const t0 = now();
      const failure = await session.initialize();
      if (run.stop !== null) return;
      if (failure === null) {
        setup.record(now() - t0);
        run.anySuccess = true;
        run.live.sessionsOpen++;
        open.push(session);
      } else {
        run.active.delete(session);
        run.fail(failure, true);
      }
    }),
  );
  const setupMs = now() - setupStart;

  const callsStart = now();
  await Promise.all(
    open.map(async (session) => {
      for (let i = 0; i < options.calls && run.stop === null; i++) {
        const t0 = now();
        const failure = await session.call();
        if (run.stop !== null) return;
        if (failure === null) latency.record(now() - t0);
        else {
          failedCalls++;
          run.fail(failure, false);
        }
        run.live.callsDone++;
      }
    }),
  );
  const callsMs = now() - callsStart;

  // Untimed and uncounted: leave the server as we found it (with the broker, a session is a process).
  await Promise.all(open.map((session) => session.close()));
  const stop = run.finish();

  return {
    url: options.url,
    tool: run.call.tool,
    protocolVersion: open[0]?.protocolVersion ?? null,
    stop,
    sessions: {
      requested: options.sessions,
      opened: setup.count,
      failed: options.sessions - setup.count,
      durationMs: setupMs,
      perSecond: perSecond(setup.count, setupMs),
      setupMs: setup.summary(),
    },
    calls: {
      perSession: options.calls,
      requested: options.sessions * options.calls,
      ok: latency.count,
      failed: failedCalls,
      durationMs: callsMs,
      perSecond: perSecond(latency.count, callsMs),
      latencyMs: latency.summary(),
    },
    errors: run.errorList(),
  };
}

/** Runs `cycles` sequential initialize → one tools/call → DELETE cycles, each timed whole. */
export async function runChurn(options: ChurnOptions, deps: RunDeps): Promise<ChurnResult> {
  const run = new Run(options, deps);
  const { now } = deps;
  const latency = new LatencyRecorder(options.cycles);
  let failed = 0;
  let deletes = 0;

  const start = now();
  for (let i = 0; i < options.cycles && run.stop === null; i++) {
    const session = run.session();
    const t0 = now();
    let failure = await session.initialize();
    const initialized = failure === null;
    if (initialized) {
      run.anySuccess = true;
      failure = await session.call();
      // Close even after a failed call, so a failing tool does not leak sessions on the server.
      const closeFailure = session.sessionId === null ? null : await session.close();
      if (closeFailure === null && session.sessionId !== null) deletes++;
      failure ??= closeFailure;
    }
    run.active.delete(session);
    if (run.stop !== null) break;
    if (failure === null) latency.record(now() - t0);
    else {
      failed++;
      run.fail(failure, !initialized);
    }
    run.live.cyclesDone++;
  }
  const durationMs = now() - start;
  const stop = run.finish();

  return {
    url: options.url,
    tool: run.call.tool,
    stop,
    cycles: {
      requested: options.cycles,
      ok: latency.count,
      failed,
      deletes,
      durationMs,
      perSecond: perSecond(latency.count, durationMs),
      latencyMs: latency.summary(),
    },
    errors: run.errorList(),
  };
}

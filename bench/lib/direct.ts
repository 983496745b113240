// The "direct" target: the harness drives its own children over stdio with no HTTP at all, the
// physical limit any gateway is measured against. The same phases as the load generator: open S
// sessions concurrently (spawn + initialize + notifications/initialized), then R sequential
// tools/calls per session, concurrently across sessions; and the churn cycle (spawn → initialize →
// one call → end), where ending is closing stdin and reaping the child, the whole of a cycle.
import type { Subprocess } from "bun";
import { LatencyRecorder, type LatencySummary } from "../../src/loadtest/stats.ts";
import { PROTOCOL_VERSION } from "../../src/loadtest/session.ts";
import { SpawnPacer } from "../../src/supervisor/spawn-pacer.ts";

interface Message {
  id?: unknown;
  method?: string;
  result?: { protocolVersion?: unknown; isError?: unknown };
  error?: { code?: unknown; message?: unknown };
}

const CALL_PREFIX = '{"jsonrpc":"2.0","id":';
const CALL_SUFFIX = ',"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}\n';
const INITIALIZED = '{"jsonrpc":"2.0","method":"notifications/initialized"}\n';

/** One child over stdio with at most one request outstanding, as one sequential MCP session. */
export class StdioSession {
  readonly proc: Subprocess<"pipe", "pipe", "ignore">;
  /** Notifications seen (progress), for the correctness check. */
  notifications = 0;
  /** performance.now() when the request in flight was sent, or -1: read by the watchdog. */
  startedAt = -1;
  private nextId = 1;
  private waitingId = -1;
  private resolve: ((message: Message | null) => void) | null = null;
  private closed = false;

  constructor(command: string[], env: Record<string, string>) {
    this.proc = Bun.spawn(command, { stdin: "pipe", stdout: "pipe", stderr: "ignore", env });
    void this.readLoop();
  }

  private async readLoop(): Promise<void> {
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for await (const chunk of this.proc.stdout) {
        buffer += decoder.decode(chunk, { stream: true });
        let newline: number;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line.length === 0) continue;
          const message = JSON.parse(line) as Message;
          if (message.id === this.waitingId && message.method === undefined) {
            const resolve = this.resolve;
            this.resolve = null;
            this.waitingId = -1;
            this.startedAt = -1;
            resolve?.(message);
          } else if (message.method !== undefined) {
            this.notifications++;
          }
        }
      }
    } catch {
      // A malformed line or a closed pipe: the waiter is failed below.
    }
    this.closed = true;
    const resolve = this.resolve;
    this.resolve = null;
    resolve?.(null);
  }

  private send(line: string, id: number): Promise<Message | null> {
    if (this.closed) return Promise.resolve(null);
    const answer = new Promise<Message | null>((resolve) => {
      this.resolve = resolve;
    });
    this.waitingId = id;
    this.startedAt = performance.now();
    this.proc.stdin.write(line);
    this.proc.stdin.flush();
    return answer;
  }

  async initialize(): Promise<string | null> {
    const id = this.nextId++;
    const reply = await this.send(
      JSON.stringify({
        jsonrpc: "2.0",
        id,
        method: "initialize",
        params: { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: "bench-direct", version: "0.1.0" } },
      }) + "\n",
      id,
    );
    if (reply === null) return "the child closed stdout before answering initialize";
    if (reply.error !== undefined) return `initialize error ${JSON.stringify(reply.error)}`;
    if (typeof reply.result?.protocolVersion !== "string") return "InitializeResult has no protocolVersion";
    this.proc.stdin.write(INITIALIZED);
    this.proc.stdin.flush();
    return null;
  }

  async call(): Promise<string | null> {
    const id = this.nextId++;
    const reply = await this.send(CALL_PREFIX + id + CALL_SUFFIX, id);
    if (reply === null) return "the child closed stdout";
    if (reply.error !== undefined) return `jsonrpc ${String(reply.error.code)}`;
    if (reply.result?.isError === true) return "tool isError";
    return null;
  }

  /** tools/call progress with a progress token; returns the notifications that arrived before the answer. */
  async progress(): Promise<number> {
    const id = this.nextId++;
    const before = this.notifications;
    const body = { jsonrpc: "2.0", id, method: "tools/call", params: { name: "progress", arguments: {}, _meta: { progressToken: "p1" } } };
    const reply = await this.send(JSON.stringify(body) + "\n", id);
    if (reply === null) return -1;
    return this.notifications - before;
  }

  /** Ends the session: close stdin (the child exits on EOF) and reap it; SIGKILL after `graceMs`. */
  async close(graceMs = 5000): Promise<void> {
    try {
      this.proc.stdin.end();
    } catch {
      // already closed
    }
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), graceMs);
    await this.proc.exited;
    clearTimeout(timer);
  }

  kill(): void {
    this.proc.kill("SIGKILL");
  }
}

export interface DirectLoadResult {
  sessions: { requested: number; opened: number; setupMs: LatencySummary; durationMs: number };
  calls: { requested: number; ok: number; failed: number; durationMs: number; perSecond: number | null; latencyMs: LatencySummary };
  errors: Record<string, number>;
}

export interface DirectOptions {
  command: string[];
  env: Record<string, string>;
  /** Called with every session as it is spawned, so the harness can sample and clean up. */
  track?: (session: StdioSession) => void;
  /** Per request; a request that does not answer in time fails the run. */
  timeoutMs?: number;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** S sessions opened concurrently, then `calls` sequential echo calls in each; every child reaped at the end. */
export async function runDirectLoad(options: DirectOptions & { sessions: number; calls: number; onCallsStart?: () => void; onCallsEnd?: () => void }): Promise<DirectLoadResult> {
  const now = () => performance.now();
  const timeoutMs = options.timeoutMs ?? 30_000;
  const setup = new LatencyRecorder(options.sessions);
  const latency = new LatencyRecorder(options.sessions * options.calls);
  const errors: Record<string, number> = {};
  const fail = (what: string) => {
    errors[what] = (errors[what] ?? 0) + 1;
  };
  const all: StdioSession[] = [];
  const open: StdioSession[] = [];

  // One timer for the run, as in the load generator: a child that stops answering is killed,
  // which fails its request, so no loop waits forever.
  const watchdog = setInterval(() => {
    const t = now();
    for (const session of all) if (session.startedAt >= 0 && t - session.startedAt > timeoutMs) session.kill();
  }, 250);

  // Timed from the moment all S are asked for, as the load generator times its S concurrent
  // initialize requests: a session's set-up includes waiting while the harness spawns the ones
  // before it. Spawns are paced like the broker's (one per loop turn, src/supervisor/spawn-pacer.ts)
  // so a child that has answered is served between them; run back to back, the same spawns gave
  // direct a later p50, and the floor must be the best a single process can do.
  const pacer = new SpawnPacer();
  const setupStart = now();
  await Promise.all(
    Array.from({ length: options.sessions }, async () => {
      await pacer.turn();
      const session = new StdioSession(options.command, options.env);
      all.push(session);
      options.track?.(session);
      const failure = await withTimeout(session.initialize(), timeoutMs, "initialize").catch((e: Error) => e.message);
      if (failure === null) {
        setup.record(now() - setupStart);
        open.push(session);
      } else fail(failure);
    }),
  );
  const setupMs = now() - setupStart;

  options.onCallsStart?.();
  let failed = 0;
  const callsStart = now();
  await Promise.all(
    open.map(async (session) => {
      for (let i = 0; i < options.calls; i++) {
        const t0 = now();
        const failure = await session.call();
        if (failure === null) latency.record(now() - t0);
        else {
          failed++;
          fail(failure);
          return;
        }
      }
    }),
  );
  const callsMs = now() - callsStart;
  options.onCallsEnd?.();

  await Promise.all(all.map((session) => session.close()));
  clearInterval(watchdog);
  return {
    sessions: { requested: options.sessions, opened: setup.count, setupMs: setup.summary(), durationMs: setupMs },
    calls: {
      requested: options.sessions * options.calls,
      ok: latency.count,
      failed,
      durationMs: callsMs,
      perSecond: callsMs > 0 ? (latency.count * 1000) / callsMs : null,
      latencyMs: latency.summary(),
    },
    errors,
  };
}

export interface DirectChurnResult {
  cycles: { requested: number; ok: number; failed: number; durationMs: number; perSecond: number | null; latencyMs: LatencySummary };
  errors: Record<string, number>;
}

/** `cycles` sequential spawn → initialize → one call → close-and-reap cycles, each timed whole. */
export async function runDirectChurn(options: DirectOptions & { cycles: number }): Promise<DirectChurnResult> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const latency = new LatencyRecorder(options.cycles);
  const errors: Record<string, number> = {};
  let failed = 0;
  const start = performance.now();
  for (let i = 0; i < options.cycles; i++) {
    const t0 = performance.now();
    const session = new StdioSession(options.command, options.env);
    options.track?.(session);
    let failure = await withTimeout(session.initialize(), timeoutMs, "initialize").catch((e: Error) => e.message);
    if (failure === null) failure = await withTimeout(session.call(), timeoutMs, "call").catch((e: Error) => e.message);
    await session.close();
    if (failure === null) latency.record(performance.now() - t0);
    else {
      failed++;
      errors[failure] = (errors[failure] ?? 0) + 1;
    }
  }
  const durationMs = performance.now() - start;
  return {
    cycles: {
      requested: options.cycles,
      ok: latency.count,
      failed,
      durationMs,
      perSecond: durationMs > 0 ? (latency.count * 1000) / durationMs : null,
      latencyMs: latency.summary(),
    },
    errors,
  };
}

// In-memory stand-ins for a child process, for time and for the spawn pacer's loop turns, shared
// by the bridge, session and supervisor tests so that none needs a real process or a real clock.
import type { SessionConfig } from "../../src/config.ts";
import type { ChildExit, ChildProcess } from "../../src/supervisor/child.ts";
import type { NextTurn } from "../../src/supervisor/spawn-pacer.ts";
import type { TimerHandle, Timers } from "../../src/supervisor/timers.ts";

let nextPid = 10_000;

/** The session settings the registry and principals tests run under, with what a test changes. */
export function fakeSessionConfig(changes: Partial<SessionConfig> = {}): SessionConfig {
  return {
    maxSessions: 10,
    maxSessionsPerUser: 3,
    idleTimeoutMs: 900_000,
    refreshLeadMs: 300_000,
    requestTimeoutMs: 300_000,
    maxMessageBytes: 1_000_000,
    allowedOrigins: [],
    ...changes,
  };
}

export type Json = Record<string, unknown>;

export class FakeChild implements ChildProcess {
  readonly pid = nextPid++;
  readonly stdout: ReadableStream<Uint8Array>;
  readonly exited: Promise<ChildExit>;
  /** Lines written to stdin, without their newline. */
  readonly written: string[] = [];
  stopCalls = 0;
  stderr: string | null = null;
  /** Bytes the test says wait for this child to read its stdin. */
  stdinBacklog = 0;
  /** Answers what the bridge writes, like a real server would. */
  onMessage: ((message: Json, child: FakeChild) => void) | null = null;
  private controller!: ReadableStreamDefaultController<Uint8Array>;
  private resolveExit!: (exit: ChildExit) => void;
  private gone = false;
  /** When set, stop() only asks: the child exits when the test calls exit(), like one slow to go. */
  private readonly slowStop: boolean;

  constructor(options: { onMessage?: (message: Json, child: FakeChild) => void; slowStop?: boolean } = {}) {
    this.onMessage = options.onMessage ?? null;
    this.slowStop = options.slowStop ?? false;
    this.stdout = new ReadableStream({ start: (controller) => void (this.controller = controller) });
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
  }

  get messages(): Json[] {
    return this.written.map((line) => JSON.parse(line) as Json);
  }

  write(data: string): boolean {
    if (this.gone) return false;
    for (const line of data.split("\n").filter(Boolean)) {
      this.written.push(line);
      this.onMessage?.(JSON.parse(line) as Json, this);
    }
    return true;
  }

  /** Raw bytes on stdout, exactly as given. */
  emitRaw(text: string | Uint8Array): void {
    this.controller.enqueue(typeof text === "string" ? new TextEncoder().encode(text) : text);
  }

  send(message: Json): void {
    this.emitRaw(JSON.stringify(message) + "\n");
  }

  exit(exit: Partial<ChildExit> = {}): void {
    if (this.gone) return;
    this.gone = true;
    try {
      this.controller.close();
    } catch {
      // already closed
    }
    this.resolveExit({ code: 1, signal: null, lastStderrLine: this.stderr, ...exit });
  }

  lastStderrLine(): string | null {
    return this.stderr;
  }

  stop(): Promise<ChildExit> {
    this.stopCalls++;
    if (!this.slowStop) this.exit({ code: null, signal: "SIGTERM" });
    return this.exited;
  }
}

/** A child that answers initialize the way an MCP server does. */
/** What every fake child answers to initialize. */
export const FAKE_INITIALIZE_RESULT = { protocolVersion: "2025-11-25", capabilities: { tools: {} }, serverInfo: { name: "fake", version: "1" } };

export function initializingChild(extra: (message: Json, child: FakeChild) => void = () => {}, options: { slowStop?: boolean } = {}): FakeChild {
  return new FakeChild({
    ...options,
    onMessage: (message, child) => {
      if (message.method === "initialize") {
        child.send({ jsonrpc: "2.0", id: message.id, result: FAKE_INITIALIZE_RESULT });
      }
      extra(message, child);
    },
  });
}

export class FakeTimers implements Timers {
  private time = 1_000_000;
  private nextId = 1;
  private readonly due = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = this.nextId++;
    this.due.set(id, { at: this.time + ms, fn });
    return id;
  }

  clearTimeout(handle: TimerHandle): void {
    this.due.delete(handle as number);
  }

  get pending(): number {
    return this.due.size;
  }

  /** Moves the clock, firing what falls due in order (including timers those set). */
  advance(ms: number): void {
    const until = this.time + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | null = null;
      for (const entry of this.due) if (entry[1].at <= until && (next === null || entry[1].at < next[1].at)) next = entry;
      if (next === null) break;
      this.due.delete(next[0]);
      this.time = next[1].at;
      next[1].fn();
    }
    this.time = until;
  }
}

/** Every message of an outbound stream (a MessageStream), read until it ends. */
export async function readMessages(stream: { next(): Promise<{ data: string } | null> }): Promise<Json[]> {
  const messages: Json[] = [];
  for (let event = await stream.next(); event !== null; event = await stream.next()) messages.push(JSON.parse(event.data) as Json);
  return messages;
}

/** Lets stream reads and promise callbacks run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Bun.sleep(0);
}

/** Event-loop turns for a SpawnPacer that the test hands out one at a time. */
export function manualTurns(): { nextTurn: NextTurn; readonly waiting: number; give(): void } {
  const waiting: (() => void)[] = [];
  return {
    nextTurn: () => new Promise<void>((resolve) => void waiting.push(resolve)),
    get waiting() {
      return waiting.length;
    },
    give(): void {
      const resolve = waiting.shift();
      if (resolve === undefined) throw new Error("nobody is waiting for a turn");
      resolve();
    },
  };
}

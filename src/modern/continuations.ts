// The MRTR continuations waiting for their caller's retry: a bounded map from a random id to the call
// kept open on a child, each abandoned (its child's requests refused, the call cancelled) at its deadline.
import { randomHex } from "../crypto.ts";
import type { MrtrResult } from "../observability/metrics.ts";
import type { TimerHandle, Timers } from "../supervisor/timers.ts";

/** A call parked until its caller retries with the answers it asked for. */
export interface Parked {
  /** Nobody retried in time (or the broker stops): end it so nothing waits on it. */
  abandon(reason: string): void;
}

export interface ContinuationsOptions {
  timers: Timers;
  /** How long a caller has to retry after an input_required result. */
  deadlineMs: number;
  /** The most continuations waiting at once, over every grant; past it a child's request is refused. */
  maxEntries: number;
  /** Told each park, each park refused for room, and each deadline passed. */
  observe?: (result: Extract<MrtrResult, "input_required" | "full" | "expired">) => void;
}

interface Entry<T> {
  parked: T;
  timer: TimerHandle;
}

export class Continuations<T extends Parked> {
  private readonly entries = new Map<string, Entry<T>>();

  constructor(private readonly options: ContinuationsOptions) {}

  get size(): number {
    return this.entries.size;
  }

  /** Parks `parked` until its deadline; its id and deadline, or null when maxEntries are already waiting. */
  park(parked: T): { id: string; deadline: number } | null {
    if (this.entries.size >= this.options.maxEntries) {
      this.options.observe?.("full");
      return null;
    }
    const id = randomHex(24);
    const timer = this.options.timers.setTimeout(() => {
      if (this.entries.get(id)?.parked !== parked) return;
      this.entries.delete(id);
      this.options.observe?.("expired");
      parked.abandon("no retry came before the continuation's deadline");
    }, this.options.deadlineMs);
    this.entries.set(id, { parked, timer });
    this.options.observe?.("input_required");
    return { id, deadline: this.options.timers.now() + this.options.deadlineMs };
  }

  /** The continuation waiting under `id`, left in place (null when none is). */
  peek(id: string): T | null {
    return this.entries.get(id)?.parked ?? null;
  }

  /** Takes the continuation out: its retry has come (a requestState resumes at most once). */
  take(id: string): T | null {
    const entry = this.entries.get(id);
    if (entry === undefined) return null;
    this.options.timers.clearTimeout(entry.timer);
    this.entries.delete(id);
    return entry.parked;
  }

  /** Abandons every continuation (the broker stops). */
  abandonAll(reason: string): void {
    for (const id of [...this.entries.keys()]) this.take(id)?.abandon(reason);
  }
}

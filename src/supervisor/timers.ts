// The clock and one-shot timers that the supervisor, the child channel, sessions and principals take as
// collaborators, so that tests can move time by hand instead of sleeping.

export type TimerHandle = unknown;

export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

export const realTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** How often an idle reaper looks: a quarter of the idle timeout, between 1 s and 30 s. */
export function reapIntervalFor(idleTimeoutMs: number): number {
  return Math.max(1000, Math.min(30_000, Math.floor(idleTimeoutMs / 4)));
}

/** Runs `task` every `everyMs` on `timers` until the function returned is called. */
export function every(timers: Timers, everyMs: number, task: () => void): () => void {
  let handle: TimerHandle | null = null;
  let stopped = false;
  const next = () => {
    handle = timers.setTimeout(() => {
      if (stopped) return;
      next();
      task();
    }, everyMs);
  };
  next();
  return () => {
    stopped = true;
    if (handle !== null) timers.clearTimeout(handle);
  };
}

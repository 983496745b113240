// The live progress line on a terminal: samples the run's counters on a timer and redraws
// one line with a carriage return, so it costs the measured requests nothing.

import type { LiveCounters } from "./run.ts";

export interface Terminal {
  write(text: string): void;
}

export function loadLine(live: LiveCounters, sessions: number, calls: number, callsPerSecond: number): string {
  return `sessions ${live.sessionsOpen}/${sessions} open · calls ${live.callsDone}/${calls} · ` +
    `${Math.round(callsPerSecond)} calls/s · errors ${live.errors}`;
}

export function churnLine(live: LiveCounters, cycles: number, cyclesPerSecond: number): string {
  return `churn ${live.cyclesDone}/${cycles} cycles · ${Math.round(cyclesPerSecond)} cycles/s · errors ${live.errors}`;
}

/**
 * Every `intervalMs`, redraws `render(rate)` where rate is how fast `done()` grew over the
 * last interval; the returned stop() clears the line so the final table starts clean.
 */
export function startProgress(
  render: (rate: number) => string,
  done: () => number,
  out: Terminal,
  now: () => number,
  intervalMs = 250,
): () => void {
  let lastAt = now();
  let lastDone = done();
  const timer = setInterval(() => {
    const at = now();
    const count = done();
    const rate = ((count - lastDone) * 1000) / Math.max(1, at - lastAt);
    lastAt = at;
    lastDone = count;
    // \x1b[K erases what a longer previous line left behind.
    out.write(`\r${render(rate)}\x1b[K`);
  }, intervalMs);
  return () => {
    clearInterval(timer);
    out.write("\r\x1b[K");
  };
}

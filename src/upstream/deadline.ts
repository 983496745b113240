// How long a caller waits for Forgejo: the wait ends with the caller's error at the deadline,
// while the work itself goes on to its end (a refresh that finishes late is still stored).
import type { Timers } from "../supervisor/timers.ts";

/**
 * `work`'s outcome if it settles within `ms`, else `timedOut()`'s error. A late outcome of `work`
 * is left to whoever owns it: this wait handles a late rejection so it is never unhandled.
 */
export function waitAtMost<T>(
  work: Promise<T>,
  ms: number,
  timers: Pick<Timers, "setTimeout" | "clearTimeout">,
  timedOut: () => Error,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = timers.setTimeout(() => reject(timedOut()), ms);
    work.then(
      (value) => {
        timers.clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        timers.clearTimeout(timer);
        reject(error);
      },
    );
  });
}

// Wakes up when each watched Forgejo user's upstream token is due for a refresh (the rule in
// refresh-timing.ts) and runs the refresh-and-rotate step, retrying on transient failures.
import type { Logger } from "../log.ts";
import type { TimerHandle, Timers } from "../supervisor/timers.ts";
import { MIN_REFRESH_INTERVAL_MS, refreshDueAt, type RefreshTiming } from "../upstream/refresh-timing.ts";

export interface RefreshSchedulerDeps {
  timers: Timers;
  logger: Logger;
  leadMs: number;
  /** The least time between two refreshes of one user; MIN_REFRESH_INTERVAL_MS unless a test says otherwise. */
  minIntervalMs?: number;
  /** Wait after a failed attempt. */
  retryMs: number;
  /**
   * Refreshes and rotates one user; resolves with the new token's expiry (null: nothing more to
   * schedule, e.g. the refresh was refused and the user's sessions ended); rejects to retry.
   */
  onDue(forgejoUserId: number): Promise<number | null>;
}

interface Watch {
  expiresAt: number;
  dueAt: number;
  timer: TimerHandle | null;
  running: boolean;
}

/** setTimeout cannot wait longer than this. */
const MAX_DELAY_MS = 2 ** 31 - 1;

export class RefreshScheduler {
  private readonly watches = new Map<number, Watch>();
  private closed = false;
  private readonly timing: RefreshTiming;

  constructor(private readonly deps: RefreshSchedulerDeps) {
    this.timing = { leadMs: deps.leadMs, minIntervalMs: deps.minIntervalMs ?? MIN_REFRESH_INTERVAL_MS };
  }

  /**
   * Keeps the earliest expiry seen for the user: a session started with a token fetched just
   * before a refresh must still be rotated before that token dies.
   */
  watch(forgejoUserId: number, expiresAt: number | null): void {
    if (expiresAt === null || this.closed) return;
    const existing = this.watches.get(forgejoUserId);
    if (existing !== undefined && (existing.running || existing.expiresAt <= expiresAt)) return;
    // The token was issued before the session that reports it started: counting its life from now
    // underestimates it, which can only make the refresh later than the credential's own rule, never sooner.
    this.schedule(forgejoUserId, expiresAt, refreshDueAt(this.deps.timers.now(), expiresAt, this.timing));
  }

  unwatch(forgejoUserId: number): void {
    const existing = this.watches.get(forgejoUserId);
    if (existing?.timer != null) this.deps.timers.clearTimeout(existing.timer);
    this.watches.delete(forgejoUserId);
  }

  /** When the next refresh for the user is due, for tests and metrics. */
  dueAt(forgejoUserId: number): number | null {
    const existing = this.watches.get(forgejoUserId);
    return existing === undefined ? null : existing.dueAt;
  }

  close(): void {
    this.closed = true;
    for (const forgejoUserId of [...this.watches.keys()]) this.unwatch(forgejoUserId);
  }

  private schedule(forgejoUserId: number, expiresAt: number, dueAt: number): void {
    this.unwatch(forgejoUserId);
    const delay = Math.min(MAX_DELAY_MS, Math.max(0, dueAt - this.deps.timers.now()));
    const watch: Watch = { expiresAt, dueAt, timer: null, running: false };
    watch.timer = this.deps.timers.setTimeout(() => void this.run(forgejoUserId, watch), delay);
    this.watches.set(forgejoUserId, watch);
  }

  private async run(forgejoUserId: number, watch: Watch): Promise<void> {
    watch.timer = null;
    if (watch.dueAt > this.deps.timers.now()) {
      // Woke early because the wait was clamped.
      this.schedule(forgejoUserId, watch.expiresAt, watch.dueAt);
      return;
    }
    watch.running = true;
    let next: number | null;
    try {
      next = await this.deps.onDue(forgejoUserId);
    } catch (error) {
      watch.running = false;
      if (this.watches.get(forgejoUserId) !== watch) return;
      this.deps.logger.warn("upstream token refresh failed; will retry", {
        forgejo_user_id: forgejoUserId,
        error: error instanceof Error ? error.message : String(error),
      });
      this.schedule(forgejoUserId, watch.expiresAt, this.deps.timers.now() + this.deps.retryMs);
      return;
    }
    watch.running = false;
    if (this.watches.get(forgejoUserId) !== watch) return;
    if (next === null) this.unwatch(forgejoUserId);
    // The new token was issued during onDue: its life counts from now, so the next refresh is half
    // of it away at most and the minimum spacing away at least, however short it lives.
    else this.schedule(forgejoUserId, next, refreshDueAt(this.deps.timers.now(), next, this.timing));
  }
}

// Counts what each session and each Forgejo user holds open on /mcp (requests in flight, GET streams)
// and refuses past a cap, so one signed-in user cannot pile up sockets, streams and work for children.
import type { InFlightLimits } from "../config.ts";

export type InFlightSlot = { ok: true; release(): void } | { ok: false; scope: "session" | "user"; limit: number };

export class InFlightCounter {
  private readonly bySession = new Map<string, number>();
  private readonly byUser = new Map<number, number>();

  constructor(private readonly limits: InFlightLimits) {}

  /**
   * Takes a slot for a request of `session` (or, without one, a GET stream) of `forgejoUserId`, or
   * says which cap is reached. Release exactly when the answer or stream is over; extra calls are no-ops.
   */
  acquire(forgejoUserId: number, session: string | null): InFlightSlot {
    const sessionCount = session === null ? 0 : (this.bySession.get(session) ?? 0);
    if (session !== null && sessionCount >= this.limits.perSession) return { ok: false, scope: "session", limit: this.limits.perSession };
    const userCount = this.byUser.get(forgejoUserId) ?? 0;
    if (userCount >= this.limits.perUser) return { ok: false, scope: "user", limit: this.limits.perUser };
    if (session !== null) this.bySession.set(session, sessionCount + 1);
    this.byUser.set(forgejoUserId, userCount + 1);
    let held = true;
    return {
      ok: true,
      release: () => {
        if (!held) return;
        held = false;
        if (session !== null) decrement(this.bySession, session);
        decrement(this.byUser, forgejoUserId);
      },
    };
  }
}

function decrement<K>(counts: Map<K, number>, key: K): void {
  const left = (counts.get(key) ?? 1) - 1;
  if (left === 0) counts.delete(key);
  else counts.set(key, left);
}

// How long a replica waits before its next attempt to reach Redis again: doubling from a first
// delay up to a ceiling, so a Redis restart is found within seconds and an outage costs no busy loop.

export interface BackoffPolicy {
  firstMs: number;
  maxMs: number;
}

export const REDIS_RECONNECT: BackoffPolicy = { firstMs: 100, maxMs: 5_000 };

/** The delay before attempt `attempt` (0 for the first retry after a loss). */
export function backoffDelayMs(attempt: number, policy: BackoffPolicy): number {
  // 2^31 ms is beyond any ceiling; capping the exponent keeps the arithmetic finite for any attempt count.
  return Math.min(policy.maxMs, policy.firstMs * 2 ** Math.min(attempt, 31));
}

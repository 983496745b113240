// A per-key token bucket for the unauthenticated OAuth endpoints (one bucket per endpoint): enough to
// blunt a flood from one address without a shared store; multi-replica limits come later.

export interface RateLimitPolicy {
  /** Requests allowed in a burst. */
  burst: number;
  /** Tokens added back per second. */
  perSecond: number;
}

export type RateVerdict = { allowed: true } | { allowed: false; retryAfterS: number };

export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; updatedAt: number }>();

  constructor(
    private readonly policy: RateLimitPolicy,
    private readonly now: () => number,
    private readonly maxKeys = 100_000,
  ) {}

  take(key: string): RateVerdict {
    const now = this.now();
    const bucket = this.buckets.get(key) ?? { tokens: this.policy.burst, updatedAt: now };
    bucket.tokens = Math.min(this.policy.burst, bucket.tokens + ((now - bucket.updatedAt) / 1000) * this.policy.perSecond);
    bucket.updatedAt = now;
    if (bucket.tokens < 1) {
      this.buckets.set(key, bucket);
      return { allowed: false, retryAfterS: Math.max(1, Math.ceil((1 - bucket.tokens) / this.policy.perSecond)) };
    }
    bucket.tokens -= 1;
    this.buckets.delete(key);
    this.buckets.set(key, bucket);
    if (this.buckets.size > this.maxKeys) this.buckets.delete(this.buckets.keys().next().value!);
    return { allowed: true };
  }
}

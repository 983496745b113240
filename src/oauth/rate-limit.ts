// A per-key token bucket for the unauthenticated OAuth endpoints (one bucket per endpoint): enough to
// blunt a flood from one address without a shared store; replicas count in Redis (src/replicas/shared-rate-limit.ts).

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

  /** `scale` multiplies the burst and the rate, for a key that stands for many addresses (a client's users). */
  take(key: string, scale = 1): RateVerdict {
    const now = this.now();
    const burst = this.policy.burst * scale;
    const perSecond = this.policy.perSecond * scale;
    const bucket = this.buckets.get(key) ?? { tokens: burst, updatedAt: now };
    bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.updatedAt) / 1000) * perSecond);
    bucket.updatedAt = now;
    if (bucket.tokens < 1) {
      this.buckets.set(key, bucket);
      return { allowed: false, retryAfterS: Math.max(1, Math.ceil((1 - bucket.tokens) / perSecond)) };
    }
    bucket.tokens -= 1;
    this.buckets.delete(key);
    this.buckets.set(key, bucket);
    if (this.buckets.size > this.maxKeys) this.buckets.delete(this.buckets.keys().next().value!);
    return { allowed: true };
  }
}

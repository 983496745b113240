// The edge guard's per-address limits counted in Redis, so N replicas behind a load balancer allow
// what one would: a fixed window per key, counted and started in one atomic script.
import type { Logger } from "../log.ts";
import type { RateLimitPolicy, RateVerdict } from "../oauth/rate-limit.ts";
import type { RedisConnection } from "./redis-connection.ts";

/** The token bucket's policy as a window: `burst` requests per the time the bucket takes to refill. */
export interface RateWindow {
  limit: number;
  windowMs: number;
}

export function windowOf(policy: RateLimitPolicy): RateWindow {
  return { limit: policy.burst, windowMs: Math.max(1000, Math.round((policy.burst / policy.perSecond) * 1000)) };
}

/**
 * Counts one request and returns {count, milliseconds left in the window}. A key found without an
 * expiry (left by a crash between two commands of another client) is given one, so no key lives forever.
 */
export const COUNT_IN_WINDOW = `
local count = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if count == 1 or left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {count, left}`;

/** Whether the request counted `count`-th in its window is allowed, and when to retry if not. */
export function windowVerdict(count: number, leftMs: number, window: RateWindow): RateVerdict {
  if (count <= window.limit) return { allowed: true };
  return { allowed: false, retryAfterS: Math.max(1, Math.ceil(leftMs / 1000)) };
}

export interface SharedRateLimiterDeps {
  redis: Pick<RedisConnection, "command">;
  /** Before each key: the broker's Redis prefix and "rate:". */
  keyPrefix: string;
  window: RateWindow;
  /** What counts while Redis cannot: this replica's own limiter. */
  local: { take(key: string): RateVerdict };
  timeoutMs: number;
  logger: Logger;
}

/**
 * While Redis is down each replica limits on its own: neither open (the flood guard gone exactly when
 * the system is degraded) nor closed (a Redis outage would become a sign-in outage of every replica).
 */
export class SharedRateLimiter {
  private degraded = false;

  constructor(private readonly deps: SharedRateLimiterDeps) {}

  async take(key: string): Promise<RateVerdict> {
    const { window } = this.deps;
    try {
      const [count, leftMs] = (await this.deps.redis.command(
        (client) => client.send("EVAL", [COUNT_IN_WINDOW, "1", `${this.deps.keyPrefix}${key}`, String(window.windowMs)]),
        this.deps.timeoutMs,
      )) as [number, number];
      this.degraded = false;
      return windowVerdict(count, leftMs, window);
    } catch (error) {
      if (!this.degraded) {
        this.deps.logger.warn("rate limits counted per replica until Redis answers", { error: error instanceof Error ? error.message : String(error) });
      }
      this.degraded = true;
      return this.deps.local.take(key);
    }
  }
}

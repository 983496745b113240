// The local Redis (127.0.0.1:6379, no auth) tests and the bench share: each run writes under a key prefix of
// its own and deletes what it wrote, so runs in parallel never see each other's keys.
import type { RedisClient } from "bun";

export const REDIS_URL = "redis://127.0.0.1:6379";

/** Deletes every key matching `pattern` (a run's prefix and `*`, say). */
export async function deleteKeys(redis: RedisClient, pattern: string): Promise<void> {
  const keys = (await redis.send("KEYS", [pattern])) as string[];
  if (keys.length > 0) await redis.del(...keys);
}

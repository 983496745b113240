// This replica's liveness key in Redis, `<prefix>replica:<id>` holding the URL the others reach it at:
// written at once, refreshed well within its TTL, deleted on an orderly stop, expired after a crash.
import type { Timers } from "../supervisor/timers.ts";
import { every } from "../supervisor/timers.ts";
import type { RedisCommands, RedisConnection } from "./redis-connection.ts";

export interface LivenessTiming {
  /** How long the key outlives this replica's last refresh: how soon a dead replica counts as gone. */
  ttlMs: number;
  refreshMs: number;
}

export const DEFAULT_LIVENESS: LivenessTiming = { ttlMs: 15_000, refreshMs: 5_000 };

export function livenessKey(prefix: string, replicaId: string): string {
  return `${prefix}replica:${replicaId}`;
}

export interface ReplicaLivenessDeps {
  redis: Pick<RedisConnection, "command">;
  key: string;
  replicaUrl: string;
  timing: LivenessTiming;
  timers: Timers;
  timeoutMs: number;
}

export class ReplicaLiveness {
  private stopRefresh: (() => void) | undefined;
  private stopped = false;

  constructor(private readonly deps: ReplicaLivenessDeps) {}

  /**
   * Writes the key on `client`; also what the connection runs on each (re)connection, so a Redis restart loses it
   * only briefly. Once stopped, never again: a reconnection during the drain must not make this replica live again.
   */
  readonly write = async (client: Pick<RedisCommands, "send">): Promise<unknown> =>
    this.stopped ? undefined : client.send("SET", [this.deps.key, this.deps.replicaUrl, "PX", String(this.deps.timing.ttlMs)]);

  start(): void {
    this.stopRefresh = every(this.deps.timers, this.deps.timing.refreshMs, () => {
      // While Redis is down there is nothing to refresh; the next connection writes the key again.
      this.deps.redis.command(this.write, this.deps.timeoutMs).catch(() => {});
    });
  }

  /** Stops refreshing and deletes the key, so the others stop counting on this replica at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.stopRefresh?.();
    await this.deps.redis.command((client) => client.send("DEL", [this.deps.key]), this.deps.timeoutMs).catch(() => {});
  }
}

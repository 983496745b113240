// One connection to Redis that comes back by itself: opened again with a bounded backoff after any
// loss, each command bounded by a timeout and refused at once while down, so no caller ever hangs on Redis.
import type { RedisClient } from "bun";
import type { Logger } from "../log.ts";
import type { TimerHandle, Timers } from "../supervisor/timers.ts";
import { backoffDelayMs, type BackoffPolicy } from "./backoff.ts";

/** The part of Bun's RedisClient this broker uses, so tests can hand in a stand-in. */
export type RedisCommands = Pick<RedisClient, "connect" | "close" | "send" | "publish" | "subscribe" | "onclose">;

export class RedisUnavailableError extends Error {
  override name = "RedisUnavailableError";
}

export interface RedisConnectionDeps {
  /** A new, unconnected client; Bun's own reconnection is off, so subscriptions are made again by `ready`. */
  open: () => RedisCommands;
  timers: Timers;
  logger: Logger;
  backoff: BackoffPolicy;
  /** What this connection is for, in log lines ("commands", "revocations"). */
  role: string;
  /** Runs on every (re)connection before the connection counts as up: a subscriber subscribes here. */
  ready?: (client: RedisCommands) => Promise<unknown>;
}

export class RedisConnection {
  private client: RedisCommands | undefined;
  private up = false;
  private attempt = 0;
  private retry: TimerHandle | undefined;
  private stopped = false;

  constructor(private readonly deps: RedisConnectionDeps) {}

  /** Connects in the background: the broker starts whether or not Redis answers. */
  start(): void {
    void this.connect();
  }

  get isUp(): boolean {
    return this.up;
  }

  /** Runs `run` on the connection, refused at once while it is down and after `timeoutMs`. */
  async command<T>(run: (client: RedisCommands) => Promise<T>, timeoutMs: number): Promise<T> {
    const client = this.client;
    if (!this.up || client === undefined) throw new RedisUnavailableError(`Redis (${this.deps.role}) is not connected`);
    let timer: TimerHandle | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = this.deps.timers.setTimeout(() => reject(new RedisUnavailableError(`Redis (${this.deps.role}) did not answer within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([run(client), timedOut]);
    } finally {
      this.deps.timers.clearTimeout(timer);
    }
  }

  stop(): void {
    this.stopped = true;
    this.deps.timers.clearTimeout(this.retry);
    this.up = false;
    this.client?.close();
    this.client = undefined;
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const client = this.deps.open();
    this.client = client;
    client.onclose = () => this.lost(client);
    try {
      await client.connect();
      await this.deps.ready?.(client);
    } catch (error) {
      // A failed connect has run onclose already; a failed `ready` closes the client, which runs it.
      if (this.client === client) client.close();
      this.lost(client, error);
      return;
    }
    if (this.client !== client || this.stopped) return;
    if (this.attempt > 0) this.deps.logger.info("Redis reachable again", { role: this.deps.role });
    this.attempt = 0;
    this.up = true;
  }

  /** Called once or more per client as it fails (onclose, a rejected connect): schedules one retry per client. */
  private lost(client: RedisCommands, error?: unknown): void {
    if (this.stopped || this.client !== client) return;
    this.client = undefined;
    this.up = false;
    const delayMs = backoffDelayMs(this.attempt, this.deps.backoff);
    if (this.attempt === 0) {
      this.deps.logger.warn("Redis unreachable; retrying", { role: this.deps.role, retry_ms: delayMs, error: error instanceof Error ? error.message : undefined });
    }
    this.attempt++;
    this.retry = this.deps.timers.setTimeout(() => void this.connect(), delayMs);
  }
}

// A replica's link to the others through Redis: two connections (commands, and the subscriber pub/sub
// needs to itself), the revocation fan-out, the shared rate limits, the session and principal directories, the liveness key and the health check.
import { RedisClient } from "bun";
import type { RedisConfig } from "../config.ts";
import type { Logger } from "../log.ts";
import type { PrincipalChildEntry } from "../modern/principals.ts";
import type { RateLimitPolicy, RateVerdict } from "../oauth/rate-limit.ts";
import { every, type Timers } from "../supervisor/timers.ts";
import { REDIS_RECONNECT } from "./backoff.ts";
import { DEFAULT_LIVENESS, ReplicaLiveness, livenessKey, type LivenessTiming } from "./liveness.ts";
import { PrincipalDirectory } from "./principal-directory.ts";
import { RedisConnection, type RedisCommands } from "./redis-connection.ts";
import { RevocationFanout } from "./revocation-fanout.ts";
import { SessionDirectory } from "./session-directory.ts";
import { SharedRateLimiter, windowOf } from "./shared-rate-limit.ts";
import { UserSlots } from "./user-slots.ts";

/** Long enough for a loaded Redis, short enough that /healthz and a sign-in never wait on a dead one. */
const COMMAND_TIMEOUT_MS = 1_000;
/** A rate-limit check sits in front of every OAuth request: past this it falls back to the local limiter. */
const RATE_LIMIT_TIMEOUT_MS = 250;
/** How often each replica looks for the session entries of replicas that died: a few reads per session, rarely. */
const ORPHAN_SWEEP_MS = 5 * 60_000;

export interface ReplicaLinkDeps {
  config: RedisConfig;
  replicaId: string;
  logger: Logger;
  timers: Timers;
  /** This replica's handling of a grant revoked on another replica. */
  revokedElsewhere: (grantId: string) => void;
  rateLimit: RateLimitPolicy;
  /** The limiter used while Redis does not answer. */
  localRateLimiter: { take(key: string): RateVerdict };
  liveness?: LivenessTiming;
  /** How long a session may go unused before its replica ends it: how long a stopped replica's sessions stay restorable. */
  sessionIdleMs: number;
  /** This replica's running principal children, which the principal directory refreshes. */
  principalChildren: () => PrincipalChildEntry[];
  /** Memory of a child's processes, recorded with it. */
  rssOf: (pid: number) => number | null;
}

export interface ReplicaLink {
  /** Tells the other replicas a grant was revoked here. */
  announceRevocation(grantId: string): void;
  rateLimiter: SharedRateLimiter;
  /** Where each legacy session lives, shared by all replicas. */
  sessions: SessionDirectory;
  /** Which principal children each replica runs, shared by all replicas. */
  principals: PrincipalDirectory;
  /** Each user's slots on every replica, for BROKER_MAX_SESSIONS_PER_USER across them. */
  userSlots: UserSlots;
  /** The address a replica publishes while it lives; null once its liveness key is gone. Throws when Redis does not answer. */
  replicaUrl(replicaId: string): Promise<string | null>;
  /** Resolves when Redis answers a PING within the command timeout. */
  ping(): Promise<void>;
  /**
   * Deletes the liveness key for good, the connections stay: from now on the others restore this replica's
   * sessions on their next request instead of forwarding it here, while revocations still reach it.
   */
  leave(): Promise<void>;
  /** Deletes the principal directory's hash and the liveness key, and closes both connections. */
  stop(): Promise<void>;
}

export function startReplicaLink(deps: ReplicaLinkDeps): ReplicaLink {
  const { config, logger, timers } = deps;
  // Bun's own reconnection gives up after maxRetries; RedisConnection retries without end and subscribes again itself.
  const open = (): RedisCommands => new RedisClient(config.url, { autoReconnect: false, enableOfflineQueue: false, connectionTimeout: 2_000 });
  const revocationChannel = `${config.prefix}revocations`;
  const timing = deps.liveness ?? DEFAULT_LIVENESS;

  const liveness = new ReplicaLiveness({
    redis: { command: (run, timeoutMs) => commands.command(run, timeoutMs) }, // commands is made below: it writes the key on connecting
    key: livenessKey(config.prefix, deps.replicaId),
    replicaUrl: config.replicaUrl,
    timing,
    timers,
    timeoutMs: COMMAND_TIMEOUT_MS,
  });
  const fanout = new RevocationFanout({
    replicaId: deps.replicaId,
    publish: (message) => commands.command((client) => client.publish(revocationChannel, message), COMMAND_TIMEOUT_MS),
    revokedElsewhere: deps.revokedElsewhere,
    logger,
  });
  const commands = new RedisConnection({
    open,
    timers,
    logger,
    backoff: REDIS_RECONNECT,
    role: "commands",
    ready: async (client) => {
      await liveness.write(client);
      await fanout.announceMissed((message) => client.publish(revocationChannel, message));
    },
  });
  const subscriber = new RedisConnection({
    open,
    timers,
    logger,
    backoff: REDIS_RECONNECT,
    role: "revocations",
    ready: (client) => client.subscribe(revocationChannel, fanout.heard),
  });
  const rateLimiter = new SharedRateLimiter({
    redis: commands,
    keyPrefix: `${config.prefix}rate:`,
    window: windowOf(deps.rateLimit),
    local: deps.localRateLimiter,
    timeoutMs: RATE_LIMIT_TIMEOUT_MS,
    logger,
  });
  const sessions = new SessionDirectory({ redis: commands, prefix: config.prefix, replicaId: deps.replicaId, timeoutMs: COMMAND_TIMEOUT_MS, logger, unclaimedMs: deps.sessionIdleMs });
  const principals = new PrincipalDirectory({
    redis: commands,
    prefix: config.prefix,
    replicaId: deps.replicaId,
    timing,
    timers,
    timeoutMs: COMMAND_TIMEOUT_MS,
    children: deps.principalChildren,
    rssOf: deps.rssOf,
  });
  const userSlots = new UserSlots({ redis: commands, prefix: config.prefix, replicaId: deps.replicaId, timeoutMs: COMMAND_TIMEOUT_MS, logger });
  commands.start();
  subscriber.start();
  liveness.start();
  principals.start();
  const stopSweeping = every(timers, ORPHAN_SWEEP_MS, () => {
    sessions.expireOrphans().catch((error: unknown) => logger.warn("could not sweep the session directory", { error: error instanceof Error ? error.message : String(error) }));
  });

  return {
    announceRevocation: (grantId) => fanout.announce(grantId),
    rateLimiter,
    sessions,
    principals,
    userSlots,
    replicaUrl: async (replicaId) => {
      const url = await commands.command((client) => client.send("GET", [livenessKey(config.prefix, replicaId)]), COMMAND_TIMEOUT_MS);
      return typeof url === "string" && url !== "" ? url : null;
    },
    ping: async () => void (await commands.command((client) => client.send("PING", []), COMMAND_TIMEOUT_MS)),
    leave: () => liveness.stop(),
    async stop() {
      stopSweeping();
      await principals.stop();
      await liveness.stop();
      subscriber.stop();
      commands.stop();
    },
  };
}

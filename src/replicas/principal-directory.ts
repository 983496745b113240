// The principal directory in Redis: each replica's running principal children (one hash per replica, a field per
// child), written when one starts, removed when it exits, refreshed on the liveness rhythm, gone by itself with its replica.
import type { ChildEra } from "../modern/child-era.ts";
import type { PrincipalChildEntry } from "../modern/principals.ts";
import type { Timers } from "../supervisor/timers.ts";
import { every } from "../supervisor/timers.ts";
import { parseJsonObject } from "./json-object.ts";
import { livenessKey, type LivenessTiming } from "./liveness.ts";
import type { RedisConnection } from "./redis-connection.ts";

/**
 * One running principal child as the other replicas' admin listings see it. What changes while it runs (its
 * activity, memory, whether it serves) is as of the owner's last refresh: at most one refresh interval old.
 */
export interface PrincipalRecord {
  grantId: string;
  forgejoUserId: number;
  clientId: string;
  childEra: ChildEra;
  pid: number;
  /** Epoch ms, on the owner's clock. */
  startedAt: number;
  lastActivity: number;
  /** A call in flight or a listen stream open: not idle, however long ago its last call began. */
  busy: boolean;
  rssBytes: number | null;
  serving: boolean;
}

/** A principal child another replica runs, while that replica is alive. */
export interface ListedPrincipal {
  record: PrincipalRecord;
  ownerUrl: string;
}

export function principalsKey(prefix: string, replicaId: string): string {
  return `${prefix}principals:${replicaId}`;
}

/** What the directory says of a child now. */
export function recordOf(entry: PrincipalChildEntry, rssBytes: number | null): PrincipalRecord {
  const { grantId, forgejoUserId, clientId, childEra, child, startedAt, serving } = entry;
  return { grantId, forgejoUserId, clientId, childEra, pid: child.childPid, startedAt, lastActivity: child.lastActivity, busy: child.inFlight + child.listening > 0, rssBytes, serving };
}

/** A record as stored, or undefined for anything else (a foreign or damaged value is no child). */
export function decodeRecord(stored: unknown): PrincipalRecord | undefined {
  const r = parseJsonObject(stored);
  if (r === undefined) return undefined;
  const strings = [r.grantId, r.clientId].every((field) => typeof field === "string" && field !== "");
  const numbers = [r.forgejoUserId, r.pid, r.startedAt, r.lastActivity].every((field) => Number.isSafeInteger(field));
  const valid = strings && numbers && (r.childEra === "legacy" || r.childEra === "modern") && typeof r.busy === "boolean" && typeof r.serving === "boolean" && (r.rssBytes === null || Number.isSafeInteger(r.rssBytes));
  return valid ? (r as unknown as PrincipalRecord) : undefined;
}

/** Adds or replaces one child's field and gives the hash its expiry (a hash written only at a start must expire too). */
const RECORD = `redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
return redis.call("PEXPIRE", KEYS[1], ARGV[3])`;

/**
 * The whole hash again, from this replica's children now: what a lost write or a Redis restart dropped comes
 * back, what a lost removal left goes. ARGV: the TTL, then pid and record pairs.
 */
const REPLACE = `redis.call("DEL", KEYS[1])
for i = 2, #ARGV, 2 do redis.call("HSET", KEYS[1], ARGV[i], ARGV[i + 1]) end
if #ARGV > 1 then redis.call("PEXPIRE", KEYS[1], ARGV[1]) end
return (#ARGV - 1) / 2`;

export interface PrincipalDirectoryDeps {
  redis: Pick<RedisConnection, "command">;
  prefix: string;
  replicaId: string;
  /** The liveness key's: the hash expires as the replica's liveness does, and is refreshed as often. */
  timing: LivenessTiming;
  timers: Timers;
  timeoutMs: number;
  /** This replica's running principal children, for each refresh. */
  children: () => PrincipalChildEntry[];
  rssOf: (pid: number) => number | null;
}

export class PrincipalDirectory {
  private stopRefresh: (() => void) | undefined;

  constructor(private readonly deps: PrincipalDirectoryDeps) {}

  private get key(): string {
    return principalsKey(this.deps.prefix, this.deps.replicaId);
  }

  /**
   * A child's process runs here. Every write is sent as its event happens (commands on one connection keep their
   * order, so a removal is never overtaken by an older write); a lost one is put right by the next refresh.
   */
  running(entry: PrincipalChildEntry): void {
    this.send(() => {
      const record = recordOf(entry, this.deps.rssOf(entry.child.childPid));
      return ["EVAL", RECORD, "1", this.key, String(record.pid), JSON.stringify(record), String(this.deps.timing.ttlMs)];
    });
  }

  /** A child's process has exited, for whatever reason. */
  exited(entry: PrincipalChildEntry): void {
    this.send(() => ["HDEL", this.key, String(entry.child.childPid)]);
  }

  /** Refreshes the hash on the liveness rhythm: one write per interval for all the children, none per request. */
  start(): void {
    this.stopRefresh = every(this.deps.timers, this.deps.timing.refreshMs, () => void this.refresh());
  }

  /** Writes the hash from the children now, with a fresh expiry. While Redis is down nothing is read or sent. */
  refresh(): Promise<void> {
    return this.deps.redis
      .command((client) => {
        // Read when sent, not before: a removal already sent must find its child gone from this list.
        const fields = this.deps.children().flatMap((entry) => {
          const record = recordOf(entry, this.deps.rssOf(entry.child.childPid));
          return [String(record.pid), JSON.stringify(record)];
        });
        return client.send("EVAL", [REPLACE, "1", this.key, String(this.deps.timing.ttlMs), ...fields]);
      }, this.deps.timeoutMs)
      .then(
        () => {},
        // Redis down: its connection has said so in the log once; the next refresh after it is back writes everything again.
        () => {},
      );
  }

  /** Stops refreshing and removes the hash, so the others stop listing this replica's children at once. */
  async stop(): Promise<void> {
    this.stopRefresh?.();
    await this.deps.redis.command((client) => client.send("DEL", [this.key]), this.deps.timeoutMs).catch(() => {});
  }

  /**
   * The principal children of the other replicas that are alive now, for the admin listing (this replica lists
   * its own from its PrincipalChildren). Throws when Redis does not answer.
   */
  async othersLive(): Promise<ListedPrincipal[]> {
    const { prefix } = this.deps;
    const command = <T>(name: string, args: string[]) => this.deps.redis.command((client) => client.send(name, args) as Promise<T>, this.deps.timeoutMs);
    const listed: ListedPrincipal[] = [];
    let cursor = "0";
    do {
      const [next, keys] = await command<[string, string[]]>("SCAN", [cursor, "MATCH", principalsKey(prefix, "*"), "COUNT", "200"]);
      cursor = next;
      for (const key of keys) {
        const replicaId = key.slice(principalsKey(prefix, "").length);
        if (replicaId === this.deps.replicaId) continue;
        // A replica stopped in order has deleted its liveness key: its hash (deleted too, or expiring) is not listed.
        const ownerUrl = await command<unknown>("GET", [livenessKey(prefix, replicaId)]);
        if (typeof ownerUrl !== "string" || ownerUrl === "") continue;
        for (const stored of await command<unknown[]>("HVALS", [key])) {
          const record = decodeRecord(stored);
          if (record !== undefined) listed.push({ record, ownerUrl });
        }
      }
    } while (cursor !== "0");
    return listed;
  }

  /** Sends the command `made` makes, made only when Redis is up; while it is down the write is dropped, as in refresh. */
  private send(made: () => [string, ...string[]]): void {
    this.deps.redis
      .command((client) => {
        const [name, ...args] = made();
        return client.send(name, args);
      }, this.deps.timeoutMs)
      .catch(() => {});
  }
}

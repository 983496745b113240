// The legacy session directory in Redis: session id → owning replica, grant, the client's original
// initialize and the negotiated version, so another replica can forward to the owner or restore the session.
import type { Logger } from "../log.ts";
import { parseJsonObject } from "./json-object.ts";
import type { RedisCommands, RedisConnection } from "./redis-connection.ts";
import { livenessKey } from "./liveness.ts";

/**
 * What the directory holds for one session. The entry has no TTL of its own: it is judged by its
 * owner's liveness key, which the owner refreshes anyway. So a session costs two writes in its whole
 * life (start, end) rather than one per message or per liveness tick, and when the owner dies its
 * entries stay readable for the replica that restores them.
 */
export interface DirectoryEntry {
  owner: string;
  grantId: string;
  /** The client's initialize request exactly as it sent it (one JSON-RPC message). */
  initialize: string;
  protocolVersion: string;
  /** When the session started (epoch ms), for the admin listing's age; absent in entries written before it was kept. */
  startedAt?: number;
}

/** Where a session lives now: its owner's URL while the owner's liveness key exists, null once it is gone. */
export interface SessionWhereabouts {
  entry: DirectoryEntry;
  ownerUrl: string | null;
}

/** A session another replica owns, while that replica is alive. */
export interface ListedSession {
  sessionId: string;
  entry: DirectoryEntry;
  ownerUrl: string;
}

export function sessionKey(prefix: string, sessionId: string): string {
  return `${prefix}session:${sessionId}`;
}

/** An entry as stored, or undefined for anything else (a foreign or damaged value is no session). */
export function decodeEntry(stored: unknown): DirectoryEntry | undefined {
  const value = parseJsonObject(stored);
  if (value === undefined) return undefined;
  const { owner, grantId, initialize, protocolVersion, startedAt } = value;
  const fields = [owner, grantId, initialize, protocolVersion];
  if (!fields.every((field) => typeof field === "string" && field !== "")) return undefined;
  const entry = { owner, grantId, initialize, protocolVersion } as DirectoryEntry;
  return typeof startedAt === "number" ? { ...entry, startedAt } : entry;
}

/**
 * Deletes the entry only while this replica still owns it: a replica that was thought dead (and whose
 * sessions were restored elsewhere) must not remove the new owner's entry when it ends its copy.
 */
const DELETE_IF_OWNER = `local stored = redis.call("GET", KEYS[1])
if stored and cjson.decode(stored).owner == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0`;

/** Gives the entry an expiry while this replica still owns it (same reason as DELETE_IF_OWNER). */
const EXPIRE_IF_OWNER = `local stored = redis.call("GET", KEYS[1])
if stored and cjson.decode(stored).owner == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end
return 0`;

export interface SessionDirectoryDeps {
  redis: Pick<RedisConnection, "command">;
  prefix: string;
  replicaId: string;
  timeoutMs: number;
  logger: Logger;
  /**
   * How long the entry of a session this replica left (shut down under it) stays for a restore: the
   * session idle timeout, since the owner would have ended a session unused that long anyway.
   */
  unclaimedMs: number;
}

export class SessionDirectory {
  constructor(private readonly deps: SessionDirectoryDeps) {}

  /** Records a session this replica started. A failure is logged: the session serves on here, it just cannot move. */
  async started(sessionId: string, session: Omit<DirectoryEntry, "owner">): Promise<void> {
    const entry: DirectoryEntry = { owner: this.deps.replicaId, ...session };
    await this.run((client) => client.send("SET", [sessionKey(this.deps.prefix, sessionId), JSON.stringify(entry)]), "record", sessionId);
  }

  /** Removes a session this replica ended (and still owns). */
  async ended(sessionId: string): Promise<void> {
    await this.run((client) => client.send("EVAL", [DELETE_IF_OWNER, "1", sessionKey(this.deps.prefix, sessionId), this.deps.replicaId]), "remove", sessionId);
  }

  /** Removes the entry of a session whose owner `owner` is gone (its client deleted it), unless another replica restored it meanwhile. */
  async forget(sessionId: string, owner: string): Promise<void> {
    await this.run((client) => client.send("EVAL", [DELETE_IF_OWNER, "1", sessionKey(this.deps.prefix, sessionId), owner]), "remove", sessionId);
  }

  /** This replica stopped under the session: the entry stays for a restore elsewhere, but not past the idle timeout. */
  async left(sessionId: string): Promise<void> {
    const expiry = [EXPIRE_IF_OWNER, "1", sessionKey(this.deps.prefix, sessionId), this.deps.replicaId, String(this.deps.unclaimedMs)];
    await this.run((client) => client.send("EVAL", expiry), "expire", sessionId);
  }

  /**
   * Claims the restore of a session whose owner is gone: true for exactly one replica until `ttlMs`
   * passes (by then the restorer's entry names it, alive, so nobody needs to claim again).
   */
  async claim(sessionId: string, ttlMs: number): Promise<boolean> {
    const key = `${this.deps.prefix}claim:${sessionId}`;
    const taken = await this.deps.redis.command((client) => client.send("SET", [key, this.deps.replicaId, "NX", "PX", String(ttlMs)]), this.deps.timeoutMs);
    return taken === "OK";
  }

  /**
   * Gives the entries of replicas that died (no liveness key, never stopped in order) the expiry a
   * stopping replica gives its own, so sessions nobody asks for again do not stay in Redis forever.
   * Entries with an expiry already keep it (NX). Returns how many it gave one.
   */
  async expireOrphans(): Promise<number> {
    const { prefix } = this.deps;
    let cursor = "0";
    let expired = 0;
    const command = <T>(name: string, args: string[]) => this.deps.redis.command((client) => client.send(name, args) as Promise<T>, this.deps.timeoutMs);
    do {
      const [next, keys] = await command<[string, string[]]>("SCAN", [cursor, "MATCH", `${prefix}session:*`, "COUNT", "200"]);
      cursor = next;
      for (const key of keys) {
        const entry = decodeEntry(await command<unknown>("GET", [key]));
        if (entry === undefined || (await command<number>("EXISTS", [livenessKey(prefix, entry.owner)])) === 1) continue;
        expired += await command<number>("PEXPIRE", [key, String(this.deps.unclaimedMs), "NX"]);
      }
    } while (cursor !== "0");
    return expired;
  }

  /**
   * The sessions of the other replicas that are alive now, for the admin listing (this replica lists its own
   * from its registry). Entries of dead owners wait for a restore and are not listed. Throws when Redis does not answer.
   */
  async othersLive(): Promise<ListedSession[]> {
    const { prefix } = this.deps;
    const command = <T>(name: string, args: string[]) => this.deps.redis.command((client) => client.send(name, args) as Promise<T>, this.deps.timeoutMs);
    const ownerUrls = new Map<string, string | null>();
    const listed: ListedSession[] = [];
    let cursor = "0";
    do {
      const [next, keys] = await command<[string, string[]]>("SCAN", [cursor, "MATCH", `${prefix}session:*`, "COUNT", "200"]);
      cursor = next;
      for (const key of keys) {
        const entry = decodeEntry(await command<unknown>("GET", [key]));
        if (entry === undefined || entry.owner === this.deps.replicaId) continue;
        if (!ownerUrls.has(entry.owner)) {
          const url = await command<unknown>("GET", [livenessKey(prefix, entry.owner)]);
          ownerUrls.set(entry.owner, typeof url === "string" && url !== "" ? url : null);
        }
        const ownerUrl = ownerUrls.get(entry.owner);
        if (ownerUrl) listed.push({ sessionId: key.slice(sessionKey(prefix, "").length), entry, ownerUrl });
      }
    } while (cursor !== "0");
    return listed;
  }

  /** Where the session lives, or undefined when the directory does not name it. Throws when Redis does not answer. */
  async find(sessionId: string): Promise<SessionWhereabouts | undefined> {
    const entry = decodeEntry(await this.deps.redis.command((client) => client.send("GET", [sessionKey(this.deps.prefix, sessionId)]), this.deps.timeoutMs));
    if (entry === undefined) return undefined;
    const ownerUrl = await this.deps.redis.command((client) => client.send("GET", [livenessKey(this.deps.prefix, entry.owner)]), this.deps.timeoutMs);
    return { entry, ownerUrl: typeof ownerUrl === "string" && ownerUrl !== "" ? ownerUrl : null };
  }

  private async run(command: (client: Pick<RedisCommands, "send">) => Promise<unknown>, what: string, sessionId: string): Promise<void> {
    try {
      await this.deps.redis.command(command, this.deps.timeoutMs);
    } catch (error) {
      this.deps.logger.warn(`could not ${what} the session in the directory`, { session: sessionId, error: error instanceof Error ? error.message : String(error) });
    }
  }
}

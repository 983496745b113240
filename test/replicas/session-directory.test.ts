// The session directory: its entry format, what it writes (no TTL, no write per message) and reads with a
// stand-in Redis; the owner-only removal and the expiry of a stopped replica's entries against real Redis.
import { afterAll, describe, expect, test } from "bun:test";
import { RedisClient } from "bun";
import { randomUUID } from "node:crypto";
import { createMemoryLogger } from "../../src/log.ts";
import type { RedisCommands } from "../../src/replicas/redis-connection.ts";
import { RedisUnavailableError } from "../../src/replicas/redis-connection.ts";
import { decodeEntry, SessionDirectory, sessionKey, type DirectoryEntry } from "../../src/replicas/session-directory.ts";
import { deleteKeys, REDIS_URL } from "../helpers/redis.ts";

const initialize = JSON.stringify({ jsonrpc: "2.0", id: 0, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "c", version: "1" } } });
const started = { grantId: "grant-1", initialize, protocolVersion: "2025-11-25" };
const entry: DirectoryEntry = { owner: "replica-a", ...started };

describe("decodeEntry", () => {
  test("round-trips an entry", () => {
    expect(decodeEntry(JSON.stringify(entry))).toEqual(entry);
  });
  test.each([null, undefined, 3, "", "not json", "null", "[]", JSON.stringify({ ...entry, owner: "" }), JSON.stringify({ ...entry, grantId: 7 }), JSON.stringify({ owner: "a", grantId: "g", initialize })])(
    "stored value %# is no entry",
    (stored) => {
      expect(decodeEntry(stored)).toBeUndefined();
    },
  );
});

/** A stand-in Redis holding strings, recording each command it gets. */
function fakeRedis(options: { down?: boolean } = {}) {
  const values = new Map<string, string>();
  const sent: string[][] = [];
  const client = {
    send: async (command: string, args: string[]) => {
      sent.push([command, ...args]);
      if (command === "SET") values.set(args[0]!, args[1]!);
      if (command === "GET") return values.get(args[0]!) ?? null;
      return "OK";
    },
  } as unknown as RedisCommands;
  const redis = {
    command: async <T,>(run: (client: RedisCommands) => Promise<T>): Promise<T> => {
      if (options.down) throw new RedisUnavailableError("Redis (commands) is not connected");
      return run(client);
    },
  };
  return { values, sent, redis };
}

function directoryOver(redis: ReturnType<typeof fakeRedis>["redis"], replicaId = "replica-a") {
  const logger = createMemoryLogger();
  return { directory: new SessionDirectory({ redis: redis as never, prefix: "p:", replicaId, timeoutMs: 1_000, logger, unclaimedMs: 900_000 }), logger };
}

describe("SessionDirectory with a stand-in Redis", () => {
  test("a start is one SET of the entry under the session's key, with no expiry of its own", async () => {
    const { redis, sent } = fakeRedis();
    await directoryOver(redis).directory.started("s1", started);
    expect(sent).toEqual([["SET", "p:session:s1", JSON.stringify(entry)]]);
  });

  test("find names the owner's URL while its liveness key exists, null once it is gone, nothing for an unknown session", async () => {
    const { redis, values } = fakeRedis();
    const { directory } = directoryOver(redis);
    await directory.started("s1", started);
    expect(await directory.find("s2")).toBeUndefined();
    expect(await directory.find("s1")).toEqual({ entry, ownerUrl: null });
    values.set("p:replica:replica-a", "http://10.0.0.5:8080");
    expect(await directory.find("s1")).toEqual({ entry, ownerUrl: "http://10.0.0.5:8080" });
  });

  test("a damaged entry is no session", async () => {
    const { redis, values } = fakeRedis();
    values.set(sessionKey("p:", "s1"), "{");
    expect(await directoryOver(redis).directory.find("s1")).toBeUndefined();
  });

  test("while Redis is down a start or end is logged and the session serves on; find throws (the caller answers 503, not 404)", async () => {
    const { redis } = fakeRedis({ down: true });
    const { directory, logger } = directoryOver(redis);
    await directory.started("s1", started);
    await directory.ended("s1");
    expect(logger.lines.filter((line) => line.includes("in the directory"))).toHaveLength(2);
    await expect(directory.find("s1")).rejects.toBeInstanceOf(RedisUnavailableError);
  });
});

describe("SessionDirectory against Redis", () => {
  const prefix = `fmb-test-${randomUUID()}:`;
  const client = new RedisClient(REDIS_URL);
  const redis = { command: <T,>(run: (c: RedisCommands) => Promise<T>) => run(client as unknown as RedisCommands) };
  const on = (replicaId: string, unclaimedMs = 900_000) =>
    new SessionDirectory({ redis, prefix, replicaId, timeoutMs: 1_000, logger: createMemoryLogger(), unclaimedMs });

  afterAll(async () => {
    await deleteKeys(client, `${prefix}*`);
    client.close();
  });

  test("an ended session is removed by its owner only: a replica whose session was taken over cannot remove the new owner's entry", async () => {
    const a = on("replica-a");
    const b = on("replica-b");
    await a.started("s1", started);
    await b.started("s1", started); // B took the session over (a restore writes the entry anew)
    await a.ended("s1");
    expect((await b.find("s1"))?.entry.owner).toBe("replica-b");
    await b.ended("s1");
    expect(await b.find("s1")).toBeUndefined();
  });

  test("a session left by a stopping replica stays for a restore, with the idle timeout as its expiry; a live one has none", async () => {
    const a = on("replica-a", 60_000);
    await a.started("left", started);
    await a.started("live", started);
    await a.left("left");
    const ttl = (key: string) => client.send("PTTL", [sessionKey(prefix, key)]) as Promise<number>;
    expect(await ttl("live")).toBe(-1);
    const left = await ttl("left");
    expect(left).toBeGreaterThan(50_000);
    expect(left).toBeLessThanOrEqual(60_000);
    expect((await a.find("left"))?.entry).toEqual(entry);
    // Another replica's left() leaves an entry it does not own alone.
    await on("replica-b", 1).left("live");
    expect(await ttl("live")).toBe(-1);
  });

  test("othersLive lists the live other replicas' sessions with their owner's URL and start time: not this replica's, not a dead owner's", async () => {
    await deleteKeys(client, `${prefix}session:*`);
    await client.set(`${prefix}replica:here`, "http://10.0.0.7:8080");
    await client.set(`${prefix}replica:there`, "http://10.0.0.8:8080");
    await on("here").started("mine", started);
    await on("there").started("theirs", { ...started, startedAt: 1_234 });
    await on("gone").started("orphan", started);
    expect(await on("here").othersLive()).toEqual([{ sessionId: "theirs", entry: { owner: "there", ...started, startedAt: 1_234 }, ownerUrl: "http://10.0.0.8:8080" }]);
  });

  test("the entries of a replica that died without stopping get the idle timeout as their expiry; a live replica's keep none", async () => {
    await deleteKeys(client, `${prefix}session:*`);
    await client.set(`${prefix}replica:alive`, "http://10.0.0.6:8080");
    const alive = on("alive");
    const dead = on("dead", 60_000);
    await alive.started("kept", started);
    await dead.started("orphan", started);
    const ttl = (key: string) => client.send("PTTL", [sessionKey(prefix, key)]) as Promise<number>;
    expect(await dead.expireOrphans()).toBe(1);
    expect(await ttl("kept")).toBe(-1);
    expect(await ttl("orphan")).toBeGreaterThan(50_000);
    // A second sweep leaves the expiry it gave alone.
    expect(await dead.expireOrphans()).toBe(0);
  });
});

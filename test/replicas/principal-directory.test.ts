// The principal directory: its record format, what it writes (one write per start, exit and refresh, none per
// call) with a stand-in Redis; against real Redis, what another replica lists and a dead replica's hash expiring by itself.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { RedisClient } from "bun";
import { randomUUID } from "node:crypto";
import type { PrincipalChildEntry } from "../../src/modern/principals.ts";
import { livenessKey, type LivenessTiming } from "../../src/replicas/liveness.ts";
import { decodeRecord, PrincipalDirectory, principalsKey, recordOf, type PrincipalRecord } from "../../src/replicas/principal-directory.ts";
import { RedisUnavailableError, type RedisCommands } from "../../src/replicas/redis-connection.ts";
import { FakeTimers, settle } from "../bridge/fakes.ts";
import { deleteKeys, REDIS_URL } from "../helpers/redis.ts";

const record: PrincipalRecord = { grantId: "g1", forgejoUserId: 7, clientId: "c1", childEra: "legacy", pid: 4242, startedAt: 1_000, lastActivity: 2_000, busy: false, rssBytes: 1 << 20, serving: true };

function entry(fields: Partial<PrincipalRecord> = {}): PrincipalChildEntry {
  const r = { ...record, ...fields };
  const child = { childPid: r.pid, lastActivity: r.lastActivity, inFlight: r.busy ? 1 : 0, listening: 0 } as PrincipalChildEntry["child"];
  return { grantId: r.grantId, forgejoUserId: r.forgejoUserId, clientId: r.clientId, childEra: r.childEra, child, startedAt: r.startedAt, serving: r.serving };
}

describe("decodeRecord", () => {
  test("round-trips a record, and one whose memory /proc could not say", () => {
    expect(decodeRecord(JSON.stringify(record))).toEqual(record);
    expect(decodeRecord(JSON.stringify({ ...record, rssBytes: null }))).toEqual({ ...record, rssBytes: null });
  });
  const damaged = [null, 3, "", "not json", "null", "[]", { ...record, grantId: "" }, { ...record, pid: "4242" }, { ...record, childEra: "2026" }, { ...record, busy: 1 }, { ...record, startedAt: 1.5 }, { ...record, serving: undefined }];
  test.each(damaged)("stored value %# is no record", (stored) => {
    expect(decodeRecord(typeof stored === "object" && stored !== null ? JSON.stringify(stored) : stored)).toBeUndefined();
  });
});

test("recordOf: a child with a call in flight is busy", () => {
  expect(recordOf(entry({ busy: true }), 5)).toEqual({ ...record, busy: true, rssBytes: 5 });
  expect(recordOf(entry(), null)).toEqual({ ...record, rssBytes: null });
});

const TIMING: LivenessTiming = { ttlMs: 15_000, refreshMs: 5_000 };

/** A stand-in Redis that records each command it gets; down, it refuses as RedisConnection does, running nothing. */
function fakeRedis() {
  const sent: string[][] = [];
  const state = { down: false };
  const client = { send: async (command: string, args: string[]) => void sent.push([command, ...args]) } as unknown as RedisCommands;
  const redis = {
    command: async <T,>(run: (client: RedisCommands) => Promise<T>): Promise<T> => {
      if (state.down) throw new RedisUnavailableError("Redis (commands) is not connected");
      return run(client);
    },
  };
  return { sent, state, redis };
}

describe("PrincipalDirectory with a stand-in Redis", () => {
  function setup() {
    const fake = fakeRedis();
    const timers = new FakeTimers();
    const children: PrincipalChildEntry[] = [];
    let rssReads = 0;
    const directory = new PrincipalDirectory({
      redis: fake.redis as never,
      prefix: "p:",
      replicaId: "r1",
      timing: TIMING,
      timers,
      timeoutMs: 1_000,
      children: () => children,
      rssOf: () => (rssReads++, 1 << 20),
    });
    return { ...fake, timers, children, directory, rssReads: () => rssReads };
  }

  test("a start is one write of the child's record under its pid, with the hash's expiry; an exit one HDEL", async () => {
    const { directory, sent } = setup();
    directory.running(entry());
    directory.exited(entry());
    await settle();
    expect(sent).toEqual([
      ["EVAL", expect.stringContaining("HSET"), "1", "p:principals:r1", "4242", JSON.stringify(record), "15000"],
      ["HDEL", "p:principals:r1", "4242"],
    ]);
  });

  test("refreshes the whole hash once per liveness interval, whatever the children do in between; nothing read or sent while Redis is down", async () => {
    const { directory, sent, timers, children, state, rssReads } = setup();
    directory.start();
    children.push(entry(), entry({ grantId: "g2", pid: 77, busy: true }));
    timers.advance(TIMING.refreshMs - 1);
    expect(sent).toEqual([]);
    timers.advance(1);
    await settle();
    expect(sent).toEqual([["EVAL", expect.stringContaining("DEL"), "1", "p:principals:r1", "15000", "4242", JSON.stringify(record), "77", JSON.stringify({ ...record, grantId: "g2", pid: 77, busy: true })]]);

    state.down = true;
    const reads = rssReads();
    timers.advance(TIMING.refreshMs);
    directory.running(entry({ pid: 78 }));
    await settle();
    expect(sent).toHaveLength(1);
    // Nothing read from /proc for a write that cannot be sent.
    expect(rssReads()).toBe(reads);
    await directory.stop();
  });

  test("stop removes the hash and refreshes no more", async () => {
    const { directory, sent, timers } = setup();
    directory.start();
    await directory.stop();
    timers.advance(TIMING.refreshMs * 3);
    await settle();
    expect(sent).toEqual([["DEL", "p:principals:r1"]]);
  });
});

describe("PrincipalDirectory against real Redis", () => {
  const prefix = `fmb-test-${randomUUID()}:`;
  const redis = new RedisClient(REDIS_URL);
  // One connection for every directory and the test itself: Redis runs their commands in the order they were sent.
  const shared = { command: <T,>(run: (c: RedisCommands) => Promise<T>) => run(redis as unknown as RedisCommands) };
  let notifyBefore = "";

  async function replica(replicaId: string, timing: LivenessTiming, children: PrincipalChildEntry[] = []) {
    const directory = new PrincipalDirectory({ redis: shared, prefix, replicaId, timing, timers: new FakeTimers(), timeoutMs: 1_000, children: () => children, rssOf: () => 1 << 20 });
    // Its liveness key, as ReplicaLiveness writes it, with the same TTL.
    await redis.send("SET", [livenessKey(prefix, replicaId), `http://${replicaId}.internal:8080`, "PX", String(timing.ttlMs)]);
    return directory;
  }

  beforeAll(async () => {
    // Expired-key events, to await a dead replica's hash going rather than sleep past its TTL; the setting is restored afterwards.
    notifyBefore = ((await redis.send("CONFIG", ["GET", "notify-keyspace-events"])) as Record<string, string>)["notify-keyspace-events"] ?? "";
    const flags = new Set(notifyBefore);
    if (!flags.has("A")) ["E", "x"].forEach((flag) => flags.add(flag));
    await redis.send("CONFIG", ["SET", "notify-keyspace-events", [...flags].join("")]);
  });

  // Each test starts with no replica in the directory.
  beforeEach(() => deleteKeys(redis, `${prefix}*`));

  afterAll(async () => {
    await redis.send("CONFIG", ["SET", "notify-keyspace-events", notifyBefore]);
    await deleteKeys(redis, `${prefix}*`);
    redis.close();
  });

  test("another replica lists a live replica's children with its URL, not its own, and not once they exited", async () => {
    const a = await replica("a", TIMING);
    const b = await replica("b", TIMING);
    a.running(entry({ grantId: "g-on-a", pid: 11 }));
    b.running(entry({ grantId: "g-on-b", pid: 22 }));
    b.running(entry({ grantId: "g-retiring-on-b", pid: 23, serving: false }));
    const listedByA = async () => (await a.othersLive()).map(({ record, ownerUrl }) => [record.grantId, record.pid, record.serving, ownerUrl]).sort();
    expect(await listedByA()).toEqual([
      ["g-on-b", 22, true, "http://b.internal:8080"],
      ["g-retiring-on-b", 23, false, "http://b.internal:8080"],
    ]);
    expect((await b.othersLive()).map(({ record }) => record.grantId)).toEqual(["g-on-a"]);
    expect(await redis.pttl(principalsKey(prefix, "b"))).toBeGreaterThan(0);

    b.exited(entry({ pid: 22 }));
    expect(await listedByA()).toEqual([["g-retiring-on-b", 23, false, "http://b.internal:8080"]]);
    // A replica whose liveness key went (stopped in order) is not listed, whatever is left of its hash.
    await redis.del(livenessKey(prefix, "b"));
    expect(await listedByA()).toEqual([]);
  });

  test("a refresh writes back what Redis lost, and drops what a lost removal left", async () => {
    const children = [entry({ grantId: "g-kept", pid: 31 })];
    const c = await replica("c", TIMING, children);
    const reader = await replica("reader", TIMING);
    c.running(entry({ grantId: "g-gone", pid: 32 }));
    await redis.del(principalsKey(prefix, "c"));
    expect(await reader.othersLive()).toEqual([]);
    await c.refresh();
    expect((await reader.othersLive()).map(({ record }) => record.grantId)).toEqual(["g-kept"]);
  });

  test("a replica that dies without cleaning up: its children's hash expires by itself within the TTL, and nobody lists them", async () => {
    const SHORT: LivenessTiming = { ttlMs: 300, refreshMs: 100 };
    const dead = await replica("dead", SHORT);
    const reader = await replica("reader-2", TIMING);
    const key = principalsKey(prefix, "dead");
    const subscriber = new RedisClient(REDIS_URL);
    try {
      let expired!: () => void;
      const gone = new Promise<void>((resolve) => (expired = resolve));
      await subscriber.subscribe("__keyevent@0__:expired", (message) => message === key && expired());
      // It records a child, then dies: its refresh timer never fires again (its FakeTimers are never advanced), nothing is deleted.
      dead.running(entry({ grantId: "g-dead", pid: 41 }));
      expect((await reader.othersLive()).map(({ record }) => record.grantId)).toEqual(["g-dead"]);
      const ttl = await redis.pttl(key);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(SHORT.ttlMs);
      await gone;
      expect(await redis.exists(key)).toBe(false);
      expect(await reader.othersLive()).toEqual([]);
    } finally {
      subscriber.close();
    }
  });
});

// The replica link's parts with stand-ins: the reconnect backoff, the rate window and its fallback, the
// revocation notice's format, the liveness refresh, and a connection that comes back (and subscribes again).
import { describe, expect, test } from "bun:test";
import { createMemoryLogger } from "../../src/log.ts";
import type { RateVerdict } from "../../src/oauth/rate-limit.ts";
import { backoffDelayMs, REDIS_RECONNECT } from "../../src/replicas/backoff.ts";
import { parseJsonObject } from "../../src/replicas/json-object.ts";
import { RedisConnection, RedisUnavailableError, type RedisCommands } from "../../src/replicas/redis-connection.ts";
import { decodeRevocation, encodeRevocation, MAX_UNANNOUNCED, RevocationFanout } from "../../src/replicas/revocation-fanout.ts";
import { ReplicaLiveness } from "../../src/replicas/liveness.ts";
import { SharedRateLimiter, windowOf, windowVerdict } from "../../src/replicas/shared-rate-limit.ts";
import { FakeTimers, settle } from "../bridge/fakes.ts";
import { rejection } from "../helpers/promises.ts";

describe("backoffDelayMs", () => {
  const cases: [number, number][] = [[0, 100], [1, 200], [2, 400], [5, 3_200], [6, 5_000], [50, 5_000], [10_000, 5_000]];
  test.each(cases)("attempt %p waits %p ms", (attempt, delay) => {
    expect(backoffDelayMs(attempt, REDIS_RECONNECT)).toBe(delay);
  });
});

describe("the rate window", () => {
  test.each([
    [{ burst: 30, perSecond: 1 }, { limit: 30, windowMs: 30_000 }],
    [{ burst: 6, perSecond: 0.5 }, { limit: 6, windowMs: 12_000 }],
    [{ burst: 1, perSecond: 100 }, { limit: 1, windowMs: 1_000 }],
  ])("policy %p is the window %p", (policy, window) => {
    expect(windowOf(policy)).toEqual(window);
  });

  const window = { limit: 3, windowMs: 10_000 };
  const verdicts: [number, number, RateVerdict][] = [
    [1, 10_000, { allowed: true }],
    [3, 1, { allowed: true }],
    [4, 9_001, { allowed: false, retryAfterS: 10 }],
    [4, 1_000, { allowed: false, retryAfterS: 1 }],
    [9, 1, { allowed: false, retryAfterS: 1 }],
    [9, 0, { allowed: false, retryAfterS: 1 }],
  ];
  test.each(verdicts)("request %p with %p ms left: %p", (count, leftMs, verdict) => {
    expect(windowVerdict(count, leftMs, window)).toEqual(verdict);
  });
});

describe("parseJsonObject", () => {
  test.each([
    ['{"replica":"r1","n":2}', { replica: "r1", n: 2 }],
    ["{}", {}],
    ["[]", undefined],
    ["null", undefined],
    ['"text"', undefined],
    ["3", undefined],
    ["not json", undefined],
    ["", undefined],
    [null, undefined],
    [7, undefined],
  ])("%p is %p", (text, fields) => {
    expect(parseJsonObject(text)).toEqual(fields);
  });
});

describe("the revocation notice", () => {
  test("round-trips", () => {
    expect(decodeRevocation(encodeRevocation({ replica: "r1", grantId: "g1" }))).toEqual({ replica: "r1", grantId: "g1" });
  });
  test.each(["", "not json", "null", "[]", '{"replica":"r1"}', '{"replica":"r1","grant":""}', '{"replica":1,"grant":"g"}'])("%p is no notice", (message) => {
    expect(decodeRevocation(message)).toBeUndefined();
  });
});

/** A stand-in client whose connect succeeds or fails as the test says, and whose loss the test causes. */
class FakeRedis {
  onclose: ((error: Error) => void) | null = null;
  closed = false;
  constructor(private readonly reachable: boolean) {}
  async connect(): Promise<void> {
    if (!this.reachable) {
      this.onclose?.(new Error("Connection closed"));
      throw new Error("Connection closed");
    }
  }
  close(): void {
    this.closed = true;
    this.onclose?.(new Error("Connection closed"));
  }
  async send(command: string): Promise<unknown> {
    return command === "PING" ? "PONG" : new Promise(() => {});
  }
}

function connectionOver(reachable: boolean[]) {
  const timers = new FakeTimers();
  const opened: FakeRedis[] = [];
  let readied = 0;
  const connection = new RedisConnection({
    open: () => {
      const client = new FakeRedis(reachable[opened.length] ?? true);
      opened.push(client);
      return client as unknown as RedisCommands;
    },
    timers,
    logger: createMemoryLogger(),
    backoff: REDIS_RECONNECT,
    role: "test",
    ready: async () => void readied++,
  });
  return { connection, timers, opened, readied: () => readied };
}

describe("RedisConnection", () => {
  test("retries an unreachable Redis at the backoff's delays, then is up and ready", async () => {
    const { connection, timers, opened, readied } = connectionOver([false, false, false, true]);
    connection.start();
    await settle();
    expect(opened).toHaveLength(1);
    expect(await rejection(connection.command((client) => client.send("PING", []), 1000))).toBeInstanceOf(RedisUnavailableError);
    for (const [delay, attempts] of [[100, 2], [200, 3], [400, 4]] as const) {
      timers.advance(delay - 1);
      await settle();
      expect(opened).toHaveLength(attempts - 1);
      timers.advance(1);
      await settle();
      expect(opened).toHaveLength(attempts);
    }
    expect(connection.isUp).toBe(true);
    expect(readied()).toBe(1);
    expect(await connection.command((client) => client.send("PING", []), 1000)).toBe("PONG");
  });

  test("a lost connection is retried from the first delay again, and ready runs again (a subscriber subscribes anew)", async () => {
    const { connection, timers, opened, readied } = connectionOver([false, true, false, true]);
    connection.start();
    await settle();
    timers.advance(100);
    await settle();
    expect(connection.isUp).toBe(true);
    expect(readied()).toBe(1);
    opened[1]!.onclose?.(new Error("server restarted"));
    expect(connection.isUp).toBe(false);
    timers.advance(100);
    await settle();
    expect(opened).toHaveLength(3);
    timers.advance(200);
    await settle();
    expect(opened).toHaveLength(4);
    expect(connection.isUp).toBe(true);
    expect(readied()).toBe(2);
  });

  test("a command Redis does not answer is refused after its timeout", async () => {
    const { connection, timers } = connectionOver([true]);
    connection.start();
    await settle();
    const pending = rejection(connection.command((client) => client.send("GET", ["k"]), 250));
    timers.advance(250);
    expect((await pending).message).toContain("did not answer within 250 ms");
  });

  test("after stop nothing reconnects", async () => {
    const { connection, timers, opened } = connectionOver([true]);
    connection.start();
    await settle();
    connection.stop();
    expect(opened[0]!.closed).toBe(true);
    timers.advance(60_000);
    await settle();
    expect(opened).toHaveLength(1);
    expect(timers.pending).toBe(0);
  });
});

describe("SharedRateLimiter", () => {
  const localVerdict: RateVerdict = { allowed: false, retryAfterS: 7 };
  const limiterOver = (answer: () => Promise<unknown>) => {
    const asked: string[] = [];
    const limiter = new SharedRateLimiter({
      redis: { command: (run) => run({ send: (_command: string, args: string[]) => (asked.push(args[2]!), answer()) } as unknown as RedisCommands) as never },
      keyPrefix: "p:rate:",
      window: { limit: 2, windowMs: 10_000 },
      local: { take: () => localVerdict },
      timeoutMs: 250,
      logger: createMemoryLogger(),
    });
    return { limiter, asked };
  };

  test("counts under the prefixed key and judges Redis's count", async () => {
    const { limiter, asked } = limiterOver(async () => [3, 4_500]);
    expect(await limiter.take("register:198.51.100.1")).toEqual({ allowed: false, retryAfterS: 5 });
    expect(asked).toEqual(["p:rate:register:198.51.100.1"]);
  });

  test("while Redis fails, the replica's own limiter decides", async () => {
    const { limiter } = limiterOver(() => Promise.reject(new RedisUnavailableError("down")));
    expect(await limiter.take("register:198.51.100.1")).toEqual(localVerdict);
  });
});

describe("ReplicaLiveness", () => {
  test("writes the key with its TTL every refresh period, and deletes it on stop", async () => {
    const timers = new FakeTimers();
    const sent: string[][] = [];
    const redis = { command: (run: (client: RedisCommands) => Promise<unknown>) => run({ send: async (command: string, args: string[]) => void sent.push([command, ...args]) } as unknown as RedisCommands) };
    const liveness = new ReplicaLiveness({ redis: redis as never, key: "p:replica:r1", replicaUrl: "http://10.0.0.5:8080", timing: { ttlMs: 15_000, refreshMs: 5_000 }, timers, timeoutMs: 1_000 });
    liveness.start();
    timers.advance(4_999);
    expect(sent).toEqual([]);
    timers.advance(1);
    timers.advance(5_000);
    expect(sent).toEqual([
      ["SET", "p:replica:r1", "http://10.0.0.5:8080", "PX", "15000"],
      ["SET", "p:replica:r1", "http://10.0.0.5:8080", "PX", "15000"],
    ]);
    await liveness.stop();
    timers.advance(60_000);
    expect(sent.slice(2)).toEqual([["DEL", "p:replica:r1"]]);
    expect(timers.pending).toBe(0);
    // A reconnection to Redis during the drain writes the key on the new connection: not once stopped.
    await liveness.write({ send: async (command: string, args: string[]) => void sent.push([command, ...args]) } as unknown as RedisCommands);
    expect(sent.slice(3)).toEqual([]);
  });
});

describe("RevocationFanout", () => {
  const fanoutOver = (publish: (message: string) => Promise<unknown>, heard: string[] = []) =>
    new RevocationFanout({ replicaId: "r1", publish, revokedElsewhere: (grantId) => heard.push(grantId), logger: createMemoryLogger() });

  test("hands on other replicas' notices, not its own nor malformed ones", () => {
    const heard: string[] = [];
    const fanout = fanoutOver(async () => 1, heard);
    fanout.heard(encodeRevocation({ replica: "r2", grantId: "g1" }));
    fanout.heard(encodeRevocation({ replica: "r1", grantId: "g2" }));
    fanout.heard("garbage");
    expect(heard).toEqual(["g1"]);
  });

  test("keeps what Redis refused, at most MAX_UNANNOUNCED (oldest given up), and sends it on the next connection", async () => {
    const fanout = fanoutOver(() => Promise.reject(new RedisUnavailableError("down")));
    for (let i = 0; i <= MAX_UNANNOUNCED; i++) fanout.announce(`g${i}`);
    await settle();
    expect(fanout.waiting).toBe(MAX_UNANNOUNCED);
    const sent: string[] = [];
    await fanout.announceMissed(async (message) => sent.push(decodeRevocation(message)!.grantId));
    expect(sent).toHaveLength(MAX_UNANNOUNCED);
    expect(sent[0]).toBe("g1");
    expect(sent.at(-1)).toBe(`g${MAX_UNANNOUNCED}`);
    expect(fanout.waiting).toBe(0);
  });
});

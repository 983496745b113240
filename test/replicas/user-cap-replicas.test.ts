// BROKER_MAX_SESSIONS_PER_USER over two brokers sharing Redis and a database file: a user's sessions on the
// other replica count, a dead replica's count is dropped, and concurrent starts on both never pass the cap.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { RedisClient } from "bun";
import { randomUUID } from "node:crypto";
import type { RunningBroker } from "../../src/broker.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { identityOf, type TestBroker } from "../helpers/broker.ts";
import { INITIALIZE, openSession, postMcp } from "../helpers/mcp.ts";
import { waitWhile } from "../helpers/promises.ts";
import { startReplicaPair, type ReplicaPair } from "../helpers/replica-pair.ts";
import { watchStream } from "../helpers/watched-stream.ts";

const CAP = 2;
const REQUEST_TIMEOUT_S = 120;

describe("the per-user cap across replicas", () => {
  let pair: ReplicaPair;
  let a: TestBroker;
  let b: RunningBroker;
  let prefix: string;
  let redis: RedisClient;
  const bUrl = () => `${b.url}/mcp`;
  /** A new sign-in as `login`: its token and Forgejo user id. */
  const signIn = async (login: string) => {
    a.forgejo.setCurrentUser(login);
    const token = (await obtainTokens(a.config.publicUrl)).accessToken;
    return { token, user: (await identityOf(a, token)).forgejoUserId };
  };
  const sessionsOn = (broker: RunningBroker, user: number) => broker.registry.sessionsOf(user);
  const slotsKey = (user: number) => `${prefix}user-slots:${user}`;

  beforeAll(async () => {
    const env = { BROKER_MAX_SESSIONS_PER_USER: String(CAP), BROKER_REQUEST_TIMEOUT_S: String(REQUEST_TIMEOUT_S) };
    ({ a, b, prefix, redis } = pair = await startReplicaPair({ env }));
  });

  afterAll(() => pair?.stop());

  test("one session on each replica at a cap of 2: a third on either ends that replica's idle one; with it busy, 429", async () => {
    const { token, user } = await signIn("alice");
    const onA = await openSession(a.mcpUrl, token);
    const onB = await openSession(bUrl(), token);
    const third = await openSession(a.mcpUrl, token);
    expect(sessionsOn(a.broker, user)).toEqual([third]);
    expect(sessionsOn(b, user)).toEqual([onB]);
    expect(a.broker.registry.evictions.user).toBe(1);
    expect((await postMcp(a.mcpUrl, token, { jsonrpc: "2.0", id: 2, method: "tools/list" }, { "mcp-session-id": onA })).status).toBe(404);

    // A's one session busy: nothing on A to end, and B's session is B's to end.
    const cancel = new AbortController();
    const busy = fetch(a.mcpUrl, {
      method: "POST",
      signal: cancel.signal,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-session-id": third },
      body: JSON.stringify({ jsonrpc: "2.0", id: 3, method: "tools/call", params: { name: "slow_count", arguments: { n: 1000, delay_ms: 100 }, _meta: { progressToken: "p" } } }),
    });
    // An SSE answer's headers come with its first event, the first progress: the call is in flight.
    expect((await watchStream(await busy)).status).toBe(200);
    const refused = await postMcp(a.mcpUrl, token, INITIALIZE);
    expect(refused.status).toBe(429);
    const retryAfter = Number(refused.headers.get("retry-after"));
    expect(retryAfter).toBeGreaterThan(REQUEST_TIMEOUT_S - 20);
    expect(await refused.json()).toEqual({
      jsonrpc: "2.0",
      id: 1,
      error: { code: -32000, message: `you have ${CAP} open sessions, the most allowed, 1 of them on other replicas of this broker, and none here can be ended to make room; one frees within ${retryAfter} s at the latest` },
    });
    expect(sessionsOn(b, user)).toEqual([onB]);
    cancel.abort();
    await waitWhile(async () => a.broker.registry.list().some((entry) => entry.id === third && entry.inFlight > 0), 100, 50);
    // On B, the idle session on B makes room.
    const fourth = await openSession(bUrl(), token);
    expect(sessionsOn(b, user)).toEqual([fourth]);
    expect(sessionsOn(a.broker, user)).toEqual([third]);
  }, 30_000); // four children start and two end: slow under load

  test("a replica that died holding the user's sessions: counted while its liveness key lives, dropped once it is gone, and a new session starts", async () => {
    const { token, user } = await signIn("bob");
    // What a replica that crashed leaves: its field in the user's count, its liveness key expiring after it.
    const ghost = `ghost-${randomUUID()}`;
    await redis.send("HSET", [slotsKey(user), ghost, String(CAP)]);
    await redis.set(`${prefix}replica:${ghost}`, "http://127.0.0.1:9", "PX", "15000");
    const refused = await postMcp(bUrl(), token, INITIALIZE);
    expect(refused.status).toBe(429);
    await refused.text();

    await redis.del(`${prefix}replica:${ghost}`);
    const admitted = await openSession(bUrl(), token);
    expect(sessionsOn(b, user)).toEqual([admitted]);
    expect(await redis.send("HGET", [slotsKey(user), ghost])).toBeNull();
    expect(await redis.send("HGETALL", [slotsKey(user)])).toEqual({ [await replicaIdOf(b)]: "1" });
  }, 30_000);

  test("eight session starts at once, four on each replica, for a user holding one already: the user never holds more than the cap, and every ended one is counted out", async () => {
    const { token, user } = await signIn("bob");
    const held = () => sessionsOn(a.broker, user).length + sessionsOn(b, user).length;
    let most = 0;
    // Sampled on every turn of the event loop the two in-process replicas share, for as long as the starts race.
    const sample = setInterval(() => (most = Math.max(most, held())), 0);
    const starts = Array.from({ length: 8 }, (_, i) => postMcp(i % 2 === 0 ? a.mcpUrl : bUrl(), token, INITIALIZE).then(async (response) => ({ status: response.status, body: await response.text() })));
    const results = await Promise.all(starts);
    clearInterval(sample);
    expect(most).toBeLessThanOrEqual(CAP);
    for (const result of results) expect([200, 429]).toContain(result.status);
    expect(results.filter((result) => result.status === 200).length).toBeGreaterThanOrEqual(CAP);
    expect(held()).toBeLessThanOrEqual(CAP);
    // Evicted children exit in the background: once they have, the shared count is what the replicas hold.
    const counted = async () => Object.values((await redis.send("HGETALL", [slotsKey(user)])) as Record<string, string>).reduce((sum, n) => sum + Number(n), 0);
    await waitWhile(async () => (await counted()) !== held(), 100, 50);
    expect(await counted()).toBeLessThanOrEqual(CAP);
  }, 60_000); // eight children start on two cores

  /** A replica's id as its own liveness key names it. */
  async function replicaIdOf(broker: RunningBroker): Promise<string> {
    for (const key of (await redis.send("KEYS", [`${prefix}replica:*`])) as string[]) {
      if ((await redis.get(key)) === broker.url) return key.slice(`${prefix}replica:`.length);
    }
    throw new Error("no liveness key names the replica");
  }
});

// BROKER_MAX_SESSIONS_PER_USER over two brokers sharing Redis and a database file: a user's sessions and principal
// children on the other replica count, a dead replica's count is dropped, and concurrent starts on both never pass the cap.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { RedisClient } from "bun";
import { randomUUID } from "node:crypto";
import type { RunningBroker } from "../../src/broker.ts";
import { userSlotsKey } from "../../src/replicas/user-slots.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { identityOf, type TestBroker } from "../helpers/broker.ts";
import { INITIALIZE, isAlive, openSession, postMcp } from "../helpers/mcp.ts";
import { modernHeaders, modernRequest } from "../helpers/modern-client.ts";
import { waitWhile } from "../helpers/promises.ts";
import { startReplicaPair, type ReplicaPair } from "../helpers/replica-pair.ts";
import { watchStream } from "../helpers/watched-stream.ts";

const CAP = 2;
const REQUEST_TIMEOUT_S = 120;
const env = { BROKER_MAX_SESSIONS_PER_USER: String(CAP), BROKER_REQUEST_TIMEOUT_S: String(REQUEST_TIMEOUT_S) };

/** A new sign-in as `login` on A: its token and Forgejo user id. */
async function signInOn(a: TestBroker, login: string) {
  a.forgejo.setCurrentUser(login);
  const token = (await obtainTokens(a.config.publicUrl)).accessToken;
  return { token, user: (await identityOf(a, token)).forgejoUserId };
}

const sessionsOn = (broker: RunningBroker, user: number) => broker.registry.sessionsOf(user);

/** A replica's id as its own liveness key names it. */
async function replicaIdOf({ redis, prefix }: ReplicaPair, broker: RunningBroker): Promise<string> {
  for (const key of (await redis.send("KEYS", [`${prefix}replica:*`])) as string[]) {
    if ((await redis.get(key)) === broker.url) return key.slice(`${prefix}replica:`.length);
  }
  throw new Error("no liveness key names the replica");
}

describe("the per-user cap across replicas", () => {
  let pair: ReplicaPair;
  let a: TestBroker;
  let b: RunningBroker;
  let prefix: string;
  let redis: RedisClient;
  const bUrl = () => `${b.url}/mcp`;
  const signIn = (login: string) => signInOn(a, login);
  const slotsKey = (user: number) => userSlotsKey(prefix, user);

  beforeAll(async () => {
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
    expect(await redis.send("HGETALL", [slotsKey(user)])).toEqual({ [await replicaIdOf(pair, b)]: "1" });
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
});

// A pair of its own: the user starts with nothing, whatever the tests above left behind.
describe("the per-user cap across replicas, with principal children", () => {
  let pair: ReplicaPair;
  let a: TestBroker;
  let b: RunningBroker;
  const bUrl = () => `${b.url}/mcp`;

  beforeAll(async () => {
    ({ a, b } = pair = await startReplicaPair({ env }));
  });

  afterAll(() => pair?.stop());

  test("a principal child on A and a session on B at a cap of 2: a third of either kind on either replica ends that replica's idle one; with it busy, 429", async () => {
    const { token, user } = await signInOn(a, "alice");
    const { grantId } = await identityOf(a, token);
    /** The legacy test's refusal: the cap reached with one slot on the other replica, a Retry-After of about the request timeout. */
    const refusedByTheCap = (id: number, retryAfter: number) => {
      expect(retryAfter).toBeGreaterThan(REQUEST_TIMEOUT_S - 20);
      return {
        jsonrpc: "2.0",
        id,
        error: { code: -32000, message: `you have ${CAP} open sessions, the most allowed, 1 of them on other replicas of this broker, and none here can be ended to make room; one frees within ${retryAfter} s at the latest` },
      };
    };
    const modern = (url: string, body: ReturnType<typeof modernRequest>, signal?: AbortSignal) =>
      fetch(url, { method: "POST", signal, headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json, text/event-stream", ...modernHeaders(body) }, body: JSON.stringify(body) });
    const list = modernRequest(1, "tools/list");
    const evictedBefore = { a: a.broker.registry.evictions.user, b: b.registry.evictions.user };

    expect((await modern(a.mcpUrl, list)).status).toBe(200);
    const childOnA = a.broker.principals.childOf(grantId)!;
    const onB = await openSession(bUrl(), token);
    expect(await pair.redis.send("HGETALL", [userSlotsKey(pair.prefix, user)])).toEqual({ [await replicaIdOf(pair, a.broker)]: "1", [await replicaIdOf(pair, b)]: "1" });

    // A session on A: A's idle principal child makes room, B's session stays.
    const onA = await openSession(a.mcpUrl, token);
    expect(a.broker.principals.childOf(grantId)).toBeNull();
    await waitWhile(() => isAlive(childOnA.childPid), 100, 20);
    expect(isAlive(childOnA.childPid)).toBe(false);
    expect(sessionsOn(a.broker, user)).toEqual([onA]);
    expect(sessionsOn(b, user)).toEqual([onB]);
    expect(a.broker.registry.evictions.user - evictedBefore.a).toBe(1);

    // A principal child on B: B's idle session makes room, A's session stays.
    expect((await modern(bUrl(), modernRequest(2, "tools/list"))).status).toBe(200);
    expect(b.principals.childOf(grantId)).not.toBeNull();
    expect(sessionsOn(b, user)).toEqual([]);
    expect((await postMcp(bUrl(), token, { jsonrpc: "2.0", id: 3, method: "tools/list" }, { "mcp-session-id": onB })).status).toBe(404);
    expect(sessionsOn(a.broker, user)).toEqual([onA]);
    expect(b.registry.evictions.user - evictedBefore.b).toBe(1);

    // B's principal child busy: a session on B is refused, with the slot on A counted.
    const cancelOnB = new AbortController();
    const counting = modernRequest(4, "tools/call", { name: "slow_count", arguments: { n: 1000, delay_ms: 100 } }, { progressToken: "p" });
    expect((await watchStream(await modern(bUrl(), counting, cancelOnB.signal))).status).toBe(200);
    const refusedOnB = await postMcp(bUrl(), token, INITIALIZE);
    expect(refusedOnB.status).toBe(429);
    expect(await refusedOnB.json()).toEqual(refusedByTheCap(INITIALIZE.id, Number(refusedOnB.headers.get("retry-after"))));
    cancelOnB.abort();

    // A's session busy: a principal child on A is refused the same way, with B's child counted.
    const cancelOnA = new AbortController();
    const busy = fetch(a.mcpUrl, {
      method: "POST",
      signal: cancelOnA.signal,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-session-id": onA },
      body: JSON.stringify({ jsonrpc: "2.0", id: 5, method: "tools/call", params: { name: "slow_count", arguments: { n: 1000, delay_ms: 100 }, _meta: { progressToken: "p" } } }),
    });
    expect((await watchStream(await busy)).status).toBe(200);
    const refusedOnA = await modern(a.mcpUrl, modernRequest(6, "tools/list"));
    expect(refusedOnA.status).toBe(429);
    expect(await refusedOnA.json()).toEqual(refusedByTheCap(6, Number(refusedOnA.headers.get("retry-after"))));
    expect(a.broker.principals.childOf(grantId)).toBeNull();
    expect(sessionsOn(a.broker, user)).toEqual([onA]);
    cancelOnA.abort();
  }, 30_000); // four children start and two end: slow under load

});

// Two brokers sharing Redis and a database file: when the replica owning a legacy session is gone (its
// liveness key expired, or it refuses connections), the next request on the other replica restores the session.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { RedisClient } from "bun";
import type { RunningBroker } from "../../src/broker.ts";
import { createMemoryLogger } from "../../src/log.ts";
import type { TestBroker } from "../helpers/broker.ts";
import { connectAs, openSession, postMcp } from "../helpers/mcp.ts";
import { startReplicaPair, type ReplicaPair } from "../helpers/replica-pair.ts";

const echo = (id: number) => ({ jsonrpc: "2.0", id, method: "tools/call", params: { name: "slow_count", arguments: { n: 2 }, _meta: { progressToken: id } } });

describe("a session whose replica is gone", () => {
  let pair: ReplicaPair;
  let a: TestBroker;
  let b: RunningBroker;
  let prefix: string;
  let redis: RedisClient;
  const bLogger = createMemoryLogger();

  beforeAll(async () => {
    ({ a, b, prefix, redis } = pair = await startReplicaPair({ b: { logger: bLogger } }));
  });

  afterAll(() => pair?.stop());

  test("is restored on the next request to another replica, without a new initialize; another grant's request gets 404; a restarted owner's address refusing connections counts as gone", async () => {
    const bob = await connectAs(a, "bob");
    const alice = await connectAs(a, "alice");
    try {
      const token = bob.provider.savedTokens!.access_token;
      const aliceToken = alice.provider.savedTokens!.access_token;
      const idle = await openSession(a.mcpUrl, token);
      const refusing = await openSession(a.mcpUrl, token);
      const deleted = await openSession(a.mcpUrl, token);
      expect((await postMcp(a.mcpUrl, token, echo(1), { "mcp-session-id": idle })).status).toBe(200);
      const aUrl = await redis.get(`${prefix}replica:${JSON.parse((await redis.get(`${prefix}session:${idle}`))!).owner}`);
      expect(aUrl).toBe(a.config.publicUrl);

      // A goes away: its liveness key is gone, the directory still names it as the owner.
      await a.broker.stop();
      expect(await redis.get(`${prefix}session:${idle}`)).not.toBeNull();
      expect(b.registry.holds(idle)).toBe(false);

      // Another user's token never gets the session, nor restores it.
      expect((await postMcp(b.url + "/mcp", aliceToken, echo(2), { "mcp-session-id": idle })).status).toBe(404);
      expect(b.registry.holds(idle)).toBe(false);

      // A DELETE starts nothing: the session's entry goes, and it is unknown everywhere from then on.
      const deleting = await fetch(b.url + "/mcp", { method: "DELETE", headers: { authorization: `Bearer ${token}`, "mcp-session-id": deleted } });
      expect(deleting.status).toBe(204);
      expect(bLogger.lines.filter((line) => line.includes('"msg":"session started"'))).toEqual([]);
      expect(await redis.get(`${prefix}session:${deleted}`)).toBeNull();
      expect((await postMcp(b.url + "/mcp", token, echo(5), { "mcp-session-id": deleted })).status).toBe(404);

      const called = await postMcp(b.url + "/mcp", token, echo(3), { "mcp-session-id": idle });
      expect(called.status).toBe(200);
      expect(called.headers.get("mcp-session-id")).toBe(idle);
      expect(await called.text()).toContain("counted to 2");
      expect(b.registry.holds(idle)).toBe(true);
      const entry = JSON.parse((await redis.get(`${prefix}session:${idle}`))!);
      expect(await redis.get(`${prefix}replica:${entry.owner}`)).toBe(b.url);

      // A's address comes back in the directory (a crash leaves its key for up to 15 s) but nobody answers there.
      const aId = JSON.parse((await redis.get(`${prefix}session:${refusing}`))!).owner;
      await redis.set(`${prefix}replica:${aId}`, aUrl!, "PX", "15000");
      const again = await postMcp(b.url + "/mcp", token, echo(4), { "mcp-session-id": refusing });
      expect(again.status).toBe(200);
      expect(await again.text()).toContain("counted to 2");
      expect(b.registry.holds(refusing)).toBe(true);
    } finally {
      await bob.client.close().catch(() => {});
      await alice.client.close().catch(() => {});
    }
  }, 60_000);
});

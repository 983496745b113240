// One of three replica processes behind Caddy goes away, by SIGTERM or by kill -9, while its sessions are in use:
// what their clients see (their sessions go on elsewhere, without a new initialize) and what is left of its children.
import { expect, test } from "bun:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { signInFlow } from "../../src/testing/oauth-client.ts";
import { openSession, outermost, postMcp, processesMatching, textOf } from "../helpers/mcp.ts";
import { answerMessages } from "../helpers/modern-client.ts";
import { waitWhile } from "../helpers/promises.ts";
import { descendantsOf, startReplicaCluster } from "../helpers/replica-cluster.ts";

/**
 * For the SIGTERM test, Caddy asks each replica's /healthz this often (2 s as shipped): the stopped replica no longer
 * listens, and a request Caddy still sends it before its check notices fails like one to a dead replica, which is what
 * `admin drain` before the SIGTERM avoids. The kill -9 test runs with the Caddyfile's own interval.
 */
const HEALTH_INTERVAL = "500ms";

const call = (id: number, name: string, args: Record<string, unknown> = {}, meta?: Record<string, unknown>) => ({
  jsonrpc: "2.0",
  id,
  method: "tools/call",
  params: { name, arguments: args, ...(meta === undefined ? {} : { _meta: meta }) },
});

test("SIGTERM on one replica mid-call: the call completes, the replica leaves the rotation and Redis, its children stop, and the session's next call is served elsewhere without a new initialize", async () => {
  const cluster = await startReplicaCluster({ healthInterval: HEALTH_INTERVAL });
  try {
    const { accessToken } = await signInFlow(cluster.publicUrl, { user: "alice" });
    const sessionId = await openSession(cluster.mcpUrl, accessToken);
    const owner = (await cluster.ownerOf(sessionId))!;
    const livenessKey = `${cluster.redisPrefix}replica:${owner.replicaId}`;
    expect(await cluster.redis.exists(livenessKey)).toBe(true);

    // Two seconds of counting with a progress event per step: the first event says the call is in flight.
    const answer = await postMcp(cluster.mcpUrl, accessToken, call(2, "slow_count", { n: 20, delay_ms: 100 }, { progressToken: "p" }), { "mcp-session-id": sessionId });
    const messages = answerMessages(answer);
    expect((await messages.next()).value).toMatchObject({ method: "notifications/progress" });
    const exited = owner.process.stop("SIGTERM");

    // While the call runs on: the replica's liveness key is gone at once (the others restore its sessions rather than
    // forward to it) and its /healthz fails (it no longer listens), so Caddy sends it nothing new.
    await waitWhile(async () => await cluster.redis.exists(livenessKey), 50, 20);
    expect(await cluster.redis.exists(livenessKey)).toBe(false);
    const health = await fetch(`${owner.url}/healthz`).then((response) => response.status, () => "refused");
    expect(health).not.toBe(200);

    let last: Record<string, unknown> | undefined;
    for await (const message of messages) last = message;
    expect(last).toMatchObject({ id: 2, result: { content: [{ text: "counted to 20" }] } });
    expect(await exited).toBe(0);
    expect(await processesMatching(owner.marker)).toEqual([]);

    // The same session id, no initialize: restored on another replica at its next request.
    const next = await postMcp(cluster.mcpUrl, accessToken, call(3, "whoami"), { "mcp-session-id": sessionId });
    expect(next.status).toBe(200);
    expect((await answerMessages(next).next()).value).toMatchObject({ id: 3, result: { content: [{ text: "alice" }] } });
    const restoredOn = await cluster.ownerOf(sessionId);
    expect(restoredOn).toBeDefined();
    expect(restoredOn!.index).not.toBe(owner.index);
    expect(restoredOn!.process.log()).toContain('"msg":"restored a session whose replica is gone"');
  } finally {
    await cluster.stop();
  }
}, 120_000);

test("kill -9 of one replica under load: every session goes on with at most one failed call, the dead replica's children are gone within 3 s, and none is left at the end", async () => {
  const cluster = await startReplicaCluster();
  try {
    const tokens = { alice: (await signInFlow(cluster.publicUrl, { user: "alice" })).accessToken, bob: (await signInFlow(cluster.publicUrl, { user: "bob" })).accessToken };
    const sessions = await Promise.all(
      Array.from({ length: 6 }, async (_, i) => {
        const login = i % 2 === 0 ? "alice" : "bob";
        const transport = new StreamableHTTPClientTransport(new URL(cluster.mcpUrl), { requestInit: { headers: { authorization: `Bearer ${tokens[login]}` } } });
        const client = new Client({ name: "under-load", version: "1.0.0" });
        await client.connect(transport);
        return { login, client, transport, ok: 0, failed: [] as string[], wrong: [] as string[] };
      }),
    );
    const owners = await Promise.all(sessions.map(({ transport }) => cluster.ownerOf(transport.sessionId!)));
    const victim = owners[0]!;
    const victimSessions = sessions.filter((_, i) => owners[i] === victim).length;
    expect(victimSessions).toBeGreaterThan(0);
    expect(outermost(await processesMatching(victim.marker)).length).toBe(victimSessions);

    // Each session calls without pause: a short slow_count (its answer is an SSE stream), then whoami. A call that
    // hangs counts as failed after 10 s.
    let killedAt: number | null = null;
    const callsAfterKill = 6;
    const load = sessions.map(async (session, i) => {
      let afterKill = 0;
      for (let round = 0; afterKill < callsAfterKill; round++) {
        if (killedAt !== null) afterKill++;
        try {
          const counted = await session.client.callTool({ name: "slow_count", arguments: { n: 3, delay_ms: 20 } }, undefined, { timeout: 10_000 });
          const who = await session.client.callTool({ name: "whoami", arguments: {} }, undefined, { timeout: 10_000 });
          if (textOf(counted) === "counted to 3" && textOf(who) === session.login) session.ok++;
          else session.wrong.push(`${textOf(counted)} / ${textOf(who)}`);
        } catch (error) {
          session.failed.push(`round ${round} of session ${i}: ${error instanceof Error ? error.message : String(error)}`);
        }
      }
    });
    // Under way on every session before the kill.
    await waitWhile(() => sessions.some((session) => session.ok < 2), 200, 25);
    expect(sessions.map((session) => session.ok >= 2)).toEqual(sessions.map(() => true));
    const victimPid = victim.process.pid;
    const dead = victim.process.stop("SIGKILL");
    killedAt = performance.now();
    await waitWhile(async () => (await processesMatching(victim.marker)).length > 0, 60, 50);
    const childrenGoneMs = performance.now() - killedAt;
    expect(await processesMatching(victim.marker)).toEqual([]);
    expect(childrenGoneMs).toBeLessThan(3_000);
    expect(await dead).not.toBe(0);
    expect(descendantsOf(victimPid)).toEqual([]);

    await Promise.all(load);
    expect(sessions.flatMap((session) => session.wrong)).toEqual([]);
    expect(sessions.map((session) => session.failed.length <= 1 ? "at most one failed" : session.failed.join("; "))).toEqual(sessions.map(() => "at most one failed"));
    // The dead replica's sessions live on the others now, under the same ids.
    const ownersNow = await Promise.all(sessions.map(({ transport }) => cluster.ownerOf(transport.sessionId!)));
    expect(ownersNow.filter((owner) => owner === undefined || owner === victim)).toEqual([]);

    await Promise.all(sessions.map(async ({ client, transport }) => {
      await transport.terminateSession();
      await client.close();
    }));
    // No child of any replica is left once the sessions have ended, and the live replicas have no other descendant.
    await waitWhile(async () => (await cluster.children()).length > 0, 60, 50);
    expect(await cluster.children()).toEqual([]);
    expect(cluster.replicas.filter((replica) => replica !== victim).flatMap((replica) => descendantsOf(replica.process.pid))).toEqual([]);
  } finally {
    await cluster.stop();
  }
}, 120_000);

// A Redis restart as a replica sees it, played by a TCP relay whose connections the test cuts: the
// link reports Redis down without hanging, comes back by itself, hears revocations again and sends those it kept.
import { afterAll, expect, test } from "bun:test";
import { RedisClient, type Socket, type TCPSocketListener } from "bun";
import { randomUUID } from "node:crypto";
import { createMemoryLogger } from "../../src/log.ts";
import { RateLimiter } from "../../src/oauth/rate-limit.ts";
import { startReplicaLink, type ReplicaLink } from "../../src/replicas/replica-link.ts";
import { realTimers } from "../../src/supervisor/timers.ts";
import { rejection, waitWhile } from "../helpers/promises.ts";
import { deleteKeys, REDIS_URL } from "../helpers/redis.ts";

interface RelayedPair {
  client: Socket<undefined>;
  upstream?: Socket<undefined>;
  /** What the client sent before the upstream connection opened. */
  pending: Uint8Array[];
}

/** Relays TCP to Redis on `port` (any when 0); cut() drops every relayed connection at once, as a stopping server would. */
function startRelay(target: { hostname: string; port: number }, port = 0) {
  const pairs = new Map<Socket<undefined>, RelayedPair>();
  const listener: TCPSocketListener<undefined> = Bun.listen<undefined>({
    hostname: "127.0.0.1",
    port,
    socket: {
      open(client) {
        const pair: RelayedPair = { client, pending: [] };
        pairs.set(client, pair);
        void Bun.connect<undefined>({
          ...target,
          socket: {
            open(upstream) {
              pair.upstream = upstream;
              for (const chunk of pair.pending) upstream.write(chunk);
            },
            data: (_upstream, chunk) => void client.write(chunk),
            close: () => void client.end(),
          },
        });
      },
      data(client, chunk) {
        const pair = pairs.get(client);
        if (pair?.upstream) pair.upstream.write(chunk);
        else pair?.pending.push(new Uint8Array(chunk));
      },
      close(client) {
        pairs.get(client)?.upstream?.end();
        pairs.delete(client);
      },
    },
  });
  return {
    port: listener.port,
    cut() {
      for (const pair of pairs.values()) {
        pair.client.end();
        pair.upstream?.end();
      }
      pairs.clear();
    },
    stop: () => listener.stop(true),
  };
}

const prefix = `fmb-test-${randomUUID()}:`;
const redis = new RedisClient(REDIS_URL);
const links: ReplicaLink[] = [];

afterAll(async () => {
  await Promise.all(links.map((link) => link.stop()));
  await deleteKeys(redis, `${prefix}*`);
  redis.close();
});

function linkVia(url: string, replicaId: string, heard: string[]) {
  const link = startReplicaLink({
    config: { url, prefix, replicaUrl: `http://${replicaId}.internal:8080` },
    replicaId,
    logger: createMemoryLogger(),
    timers: realTimers,
    revokedElsewhere: (grantId) => heard.push(grantId),
    rateLimit: { burst: 5, perSecond: 1 },
    localRateLimiter: new RateLimiter({ burst: 5, perSecond: 1 }, Date.now),
    sessionIdleMs: 900_000,
    principalChildren: () => [],
    rssOf: () => null,
  });
  links.push(link);
  return link;
}

const subscribers = async () => ((await redis.send("PUBSUB", ["NUMSUB", `${prefix}revocations`])) as [string, number])[1];
const pingOk = (link: ReplicaLink) => link.ping().then(() => true, () => false);

test("while Redis is away the link answers 'down' at once; once back it reconnects, subscribes again, hears revocations and sends the ones it missed", async () => {
  let relay = startRelay({ hostname: "127.0.0.1", port: 6379 });
  const port = relay.port;
  try {
    const heardByA: string[] = [];
    const a = linkVia(`redis://127.0.0.1:${port}`, "replica-a", heardByA);
    const heardByB: string[] = [];
    const b = linkVia(REDIS_URL, "replica-b", heardByB);
    await waitWhile(async () => (await subscribers()) < 2 || !(await pingOk(a)), 100, 20);
    expect(await subscribers()).toBe(2);

    // Redis "stops": its connections drop and nothing listens on its port.
    relay.cut();
    relay.stop();
    await waitWhile(async () => (await subscribers()) > 1, 100, 20);
    expect(await subscribers()).toBe(1);
    expect((await rejection(a.ping())).name).toBe("RedisUnavailableError");
    a.announceRevocation("grant-while-down");

    // Redis "restarts" on the same port.
    relay = startRelay({ hostname: "127.0.0.1", port: 6379 }, port);
    await waitWhile(async () => (await subscribers()) < 2 || !(await pingOk(a)), 100, 60);
    expect(await subscribers()).toBe(2);
    b.announceRevocation("grant-after-restart");
    await waitWhile(() => heardByA.length === 0 || heardByB.length === 0, 100, 10);
    expect(heardByA).toEqual(["grant-after-restart"]);
    // What A revoked while Redis was away went out once A was connected again.
    expect(heardByB).toEqual(["grant-while-down"]);
  } finally {
    relay.stop();
  }
}, 20_000);

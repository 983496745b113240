// The replicated targets: N broker processes sharing one fresh PostgreSQL database and one Redis prefix,
// behind real Caddy running deploy/Caddyfile as shipped (round robin, no sticky sessions), measured through Caddy.
import { randomUUID } from "node:crypto";
import { RedisClient } from "bun";
import { freePort } from "../../test/helpers/broker.ts";
import { CADDY, sharedReplicaEnv, startCaddy as startShippedCaddy } from "../../test/helpers/caddy.ts";
import { createTestDatabase, type TestDatabase } from "../../test/helpers/postgres.ts";
import { deleteKeys, REDIS_URL } from "../../test/helpers/redis.ts";
import { brokerReady, signedInGateway, spawnBroker, stopProcess, trackProcess, Unavailable, waitFor, type BrokerOptions, type Gateway, type SpawnedBroker, type StopReport } from "./gateways.ts";


/**
 * `replicas` brokers as an operator runs them for scale-out (BROKER_DATABASE_URL, BROKER_REDIS_URL, one
 * sealing key, BROKER_PUBLIC_URL the proxy's, Caddy trusted for X-Forwarded-For), Caddy in front; the
 * gateway's url is Caddy's /mcp and its pid the first replica's. stop() stops Caddy and every replica,
 * drops the database and deletes the run's Redis keys.
 */
export async function startReplicas(replicas: number, options: BrokerOptions): Promise<Gateway> {
  if (!(await Bun.file(CADDY).exists())) throw new Unavailable(`${CADDY} is not installed (apt-get install caddy)`);
  const cleanups: (() => Promise<unknown>)[] = [];
  const stopAll = async (): Promise<StopReport> => {
    const reports = await Promise.all(cleanups.splice(0).reverse().map((cleanup) => cleanup().catch(() => undefined)));
    const stops = reports.filter((r): r is StopReport => typeof r === "object" && r !== null && "stragglers" in r);
    return { stragglers: stops.reduce((n, r) => n + r.stragglers, 0), ended: [...new Set(stops.map((r) => r.ended))].join(", ") };
  };
  try {
    let database: TestDatabase;
    try {
      database = await createTestDatabase();
    } catch (error) {
      throw new Unavailable(`no PostgreSQL on 127.0.0.1:5432: ${error instanceof Error ? error.message : String(error)}`);
    }
    cleanups.push(() => database.drop());
    const prefix = `fmb-bench-${randomUUID()}:`;
    cleanups.push(() => deleteRedisKeys(prefix));

    const caddyPort = await freePort();
    const publicUrl = `http://127.0.0.1:${caddyPort}`;
    const shared = sharedReplicaEnv({ publicUrl, databaseUrl: database.url, redisPrefix: prefix });
    const brokers: SpawnedBroker[] = [];
    for (let i = 0; i < replicas; i++) {
      const broker = await spawnReplica(options, shared);
      cleanups.push(broker.stop);
      brokers.push(broker);
    }
    // One after another: the first applies the migrations, and the rest start on a ready database.
    for (const broker of brokers) await brokerReady(broker, options);
    const caddy = await startCaddy(publicUrl, brokers.map((b) => new URL(b.directUrl).host));
    cleanups.push(caddy.stop);
    return await signedInGateway(publicUrl, brokers[0]!.proc.pid, stopAll);
  } catch (error) {
    await stopAll();
    throw error instanceof Unavailable ? error : new Unavailable(error instanceof Error ? error.message : String(error));
  }
}

/** A broker whose BROKER_REPLICA_URL, the address the other replicas reach it at, is its own listening address. */
async function spawnReplica(options: BrokerOptions, shared: Record<string, string>): Promise<SpawnedBroker> {
  const port = await freePort();
  return spawnBroker({ ...options, port, env: { ...options.env, ...shared, BROKER_REPLICA_URL: `http://127.0.0.1:${port}` } });
}

/** The shipped Caddy, tracked from its spawn on, stopped as the brokers are; ready once it reaches a healthy broker. */
async function startCaddy(publicUrl: string, upstreams: string[]): Promise<{ stop(): Promise<StopReport> }> {
  const caddy = await startShippedCaddy({ publicUrl, upstreams, spawned: trackProcess });
  const stop = async () => {
    const report = await stopProcess(caddy.proc, 5000);
    await caddy.stop();
    return report;
  };
  try {
    await waitFor(async () => (await fetch(`${publicUrl}/healthz`, { signal: AbortSignal.timeout(1000) })).ok, caddy.proc, 15_000, "caddy");
    return { stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

async function deleteRedisKeys(prefix: string): Promise<void> {
  const redis = new RedisClient(REDIS_URL);
  try {
    await deleteKeys(redis, `${prefix}*`);
  } finally {
    redis.close();
  }
}

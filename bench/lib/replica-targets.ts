// The replicated targets: N broker processes sharing one fresh PostgreSQL database and one Redis prefix,
// behind real Caddy running deploy/Caddyfile as shipped (round robin, no sticky sessions), measured through Caddy.
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RedisClient } from "bun";
import { freePort } from "../../test/helpers/broker.ts";
import { createTestDatabase, type TestDatabase } from "../../test/helpers/postgres.ts";
import { brokerReady, REPO_ROOT, signedInGateway, spawnBroker, stopProcess, trackProcess, Unavailable, waitFor, type BrokerOptions, type Gateway, type SpawnedBroker, type StopReport } from "./gateways.ts";

const CADDY = "/usr/bin/caddy";
const REDIS_URL = "redis://127.0.0.1:6379";

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
    const shared = {
      BROKER_PUBLIC_URL: publicUrl,
      BROKER_DATABASE_URL: database.url,
      BROKER_SEALING_KEY: randomBytes(32).toString("base64"),
      BROKER_REDIS_URL: REDIS_URL,
      BROKER_REDIS_PREFIX: prefix,
      BROKER_TRUSTED_PROXIES: "127.0.0.1",
    };
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

/** Caddy with deploy/Caddyfile, plain HTTP on `publicUrl`, no admin endpoint, its state and log in a directory of its own. */
async function startCaddy(publicUrl: string, upstreams: string[]): Promise<{ stop(): Promise<StopReport> }> {
  const home = mkdtempSync(join(tmpdir(), "fmb-bench-caddy-"));
  const proc = trackProcess(
    Bun.spawn([CADDY, "run", "--config", join(REPO_ROOT, "deploy/Caddyfile"), "--adapter", "caddyfile"], {
      stdin: "ignore",
      stdout: "ignore",
      stderr: "ignore",
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        HOME: home,
        XDG_DATA_HOME: join(home, "data"),
        XDG_CONFIG_HOME: join(home, "config"),
        BROKER_SITE: publicUrl,
        BROKER_UPSTREAMS: upstreams.join(" "),
        CADDY_ACCESS_LOG: join(home, "access.log"),
        CADDY_ADMIN: "off",
      },
    }),
  );
  const stop = async () => {
    const report = await stopProcess(proc, 5000);
    rmSync(home, { recursive: true, force: true });
    return report;
  };
  try {
    await waitFor(async () => (await fetch(`${publicUrl}/healthz`, { signal: AbortSignal.timeout(1000) })).ok, proc, 15_000, "caddy");
    return { stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

async function deleteRedisKeys(prefix: string): Promise<void> {
  const redis = new RedisClient(REDIS_URL);
  try {
    const keys = (await redis.send("KEYS", [`${prefix}*`])) as string[];
    if (keys.length > 0) await redis.del(...keys);
  } finally {
    redis.close();
  }
}

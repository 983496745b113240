// N broker replicas as separate processes (`bun src/index.ts`) sharing a fresh PostgreSQL database, a Redis prefix
// and one Forgejo stand-in, behind the real Caddy running deploy/Caddyfile itself; stop() leaves no process behind.
import { RedisClient } from "bun";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startFakeForgejo, type FakeForgejo, type FakeForgejoOptions } from "../../src/testing/forgejo-stand-in.ts";
import { startBrokerProcess, type BrokerProcess } from "./broker-process.ts";
import { freePort } from "./broker.ts";
import { sharedReplicaEnv, startCaddy, type RunningCaddy } from "./caddy.ts";
import { childCommand, isAlive, processesMatching, type ProcessRow } from "./mcp.ts";
import type { OutputLines } from "./output.ts";
import { createTestDatabase, type TestDatabase } from "./postgres.ts";
import { waitWhile } from "./promises.ts";
import { deleteKeys, REDIS_URL } from "./redis.ts";

/** A broker's SIGTERM takes at most its two drain graces (10 s each) and its children's stop grace (5 s). */
const STOP_BOUND_MS = 30_000;

export interface ClusterReplica {
  index: number;
  /** Its own address (BROKER_REPLICA_URL), bypassing Caddy. */
  url: string;
  /** The id it announces in Redis (its liveness key, the owner of its sessions in the directory). */
  replicaId: string;
  /** The argument its children carry: `processesMatching(marker)` finds this replica's children, orphans included. */
  marker: string;
  process: BrokerProcess;
}

export interface ReplicaCluster {
  /** Caddy's address: BROKER_PUBLIC_URL of every replica. */
  publicUrl: string;
  mcpUrl: string;
  forgejo: FakeForgejo;
  database: TestDatabase;
  redisPrefix: string;
  /** A Redis connection of the test's, for reading the directory and liveness keys under redisPrefix. */
  redis: RedisClient;
  replicas: ClusterReplica[];
  /** Caddy's log (stderr), line by line as it comes. */
  caddyLog: OutputLines;
  /** The replica that owns a legacy session as the Redis directory says, or undefined when it names none of them. */
  ownerOf(sessionId: string): Promise<ClusterReplica | undefined>;
  /** The live processes of every replica's children (each carries the cluster's marker), orphans of a killed replica included. */
  children(): Promise<ProcessRow[]>;
  /** Kills every process, the children's orphans included, drops the database and the Redis keys; throws if a process outlived it. */
  stop(): Promise<void>;
}

export interface ReplicaClusterOptions {
  replicas?: number;
  /** Extra environment of every replica (BROKER_REFRESH_LEAD_S, …). */
  env?: Record<string, string>;
  forgejo?: FakeForgejoOptions;
  /** Caddy's active health check period (CADDY_HEALTH_INTERVAL); the Caddyfile's default otherwise. */
  healthInterval?: string;
}

/** "fmb-cluster-<hex>": every replica's children carry `<marker>-r<index>`, so one search finds them all. */
function runMarker(): string {
  return `fmb-cluster-${randomBytes(6).toString("hex")}`;
}

/** Every live descendant of `pid` (from /proc), which a replica's orderly stop or a kill must leave none of. */
export function descendantsOf(pid: number): number[] {
  const parents = new Map<number, number[]>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, "utf8");
    } catch {
      continue;
    }
    // The command name may hold spaces and parentheses: the fields after its last ")" are fixed.
    const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (state === "Z") continue;
    const siblings = parents.get(Number(ppid)) ?? [];
    siblings.push(Number(name));
    parents.set(Number(ppid), siblings);
  }
  const found: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    for (const child of parents.get(queue.shift()!) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}

export async function startReplicaCluster(options: ReplicaClusterOptions = {}): Promise<ReplicaCluster> {
  const count = options.replicas ?? 3;
  const marker = runMarker();
  const redisPrefix = `${marker}:`;
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  const redis = new RedisClient(REDIS_URL);
  cleanups.push(async () => {
    await deleteKeys(redis, `${redisPrefix}*`);
    redis.close();
  });
  const replicas: ClusterReplica[] = [];
  /** Every replica process as soon as it is spawned, so a failed start still stops the ones that did start. */
  const processes: BrokerProcess[] = [];
  let caddy: RunningCaddy | undefined;

  const leftovers = async (): Promise<string[]> => {
    const pids = [...processes.map((broker) => broker.pid), ...(caddy === undefined ? [] : [caddy.proc.pid])];
    const rows = await processesMatching(marker);
    return [
      ...pids.filter(isAlive).map((pid) => `process ${pid}`),
      ...pids.flatMap(descendantsOf).map((pid) => `descendant ${pid}`),
      ...rows.map((row) => `child ${row.pid} ${row.args}`),
    ];
  };
  const stop = async () => {
    // An orderly stop first (children get their SIGTERM, a broker drains within its grace); a broker still running
    // past that bound is killed, and so is anything left: reported below all the same.
    await Promise.all(processes.map((broker) => Promise.race([broker.stop("SIGTERM"), Bun.sleep(STOP_BOUND_MS).then(() => broker.stop("SIGKILL"))])));
    await caddy?.stop();
    await waitWhile(async () => (await leftovers()).length > 0, 50, 100);
    const left = await leftovers();
    for (const row of await processesMatching(marker)) {
      try {
        process.kill(row.pid, "SIGKILL");
      } catch {}
    }
    for (const cleanup of cleanups.reverse()) await cleanup();
    if (left.length > 0) throw new Error(`the cluster left processes behind:\n${left.join("\n")}`);
  };

  try {
    const forgejo = await startFakeForgejo(options.forgejo);
    cleanups.push(() => forgejo.stop());
    const database = await createTestDatabase();
    cleanups.push(() => database.drop());
    const publicUrl = `http://127.0.0.1:${await freePort()}`;
    const shared = { ...sharedReplicaEnv({ publicUrl, databaseUrl: database.url, redisPrefix }), ...options.env };
    // All at once, as operators start them: the migrations must be safe when every replica runs them together.
    const started = await Promise.all(
      Array.from({ length: count }, async (_, index) => {
        const dataDir = mkdtempSync(join(tmpdir(), "fmb-cluster-replica-"));
        cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
        const replicaMarker = `${marker}-r${index}`;
        const broker = await startBrokerProcess(forgejo, dataDir, { ...shared, BROKER_CHILD_COMMAND: childCommand(replicaMarker) });
        processes.push(broker);
        return { index, broker, marker: replicaMarker };
      }),
    );
    for (const { index, broker, marker: replicaMarker } of started) {
      const linked = await broker.stdout.waitFor((line) => line.includes('"msg":"replica linked to the others through Redis"'));
      const replicaId = linked === null ? undefined : (JSON.parse(linked) as { replica?: string }).replica;
      if (replicaId === undefined) throw new Error(`replica ${index} did not say its replica id: ${broker.log()}`);
      replicas.push({ index, url: broker.url, replicaId, marker: replicaMarker, process: broker });
    }
    // Each replica connects to Redis in the background: /healthz says "ok" once it has.
    const healthy = async (url: string) => (await fetch(`${url}/healthz`).catch(() => null))?.status === 200;
    await waitWhile(async () => !(await Promise.all(replicas.map((replica) => healthy(replica.url)))).every(Boolean), 100, 50);

    caddy = await startCaddy({
      publicUrl,
      upstreams: replicas.map((replica) => new URL(replica.url).host),
      placeholders: options.healthInterval === undefined ? {} : { CADDY_HEALTH_INTERVAL: options.healthInterval },
    });
    const byId = new Map(replicas.map((replica) => [replica.replicaId, replica]));
    return {
      publicUrl,
      mcpUrl: `${publicUrl}/mcp`,
      forgejo,
      database,
      redisPrefix,
      redis,
      replicas,
      caddyLog: caddy.log,
      async ownerOf(sessionId) {
        const stored = await redis.get(`${redisPrefix}session:${sessionId}`);
        return stored === null ? undefined : byId.get((JSON.parse(stored) as { owner: string }).owner);
      },
      children: () => processesMatching(marker),
      stop,
    };
  } catch (error) {
    await stop().catch(() => {});
    throw error;
  }
}

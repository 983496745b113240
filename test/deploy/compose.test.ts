// deploy/compose.replicas.yaml read as compose reads it, with deploy/compose.replicas.env.example as its .env (no
// container engine runs on the test machine): three replicas whose settings loadConfig accepts and reads, each with
// its own BROKER_REPLICA_URL and data volume, Caddy balancing exactly those, a health check on every service (those
// this machine can run are run), and no secret in the file.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig, type BrokerConfig } from "../../src/config.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";

const ROOT = join(import.meta.dir, "..", "..");
const DEPLOY = join(ROOT, "deploy");
const read = (name: string) => readFileSync(join(DEPLOY, name), "utf8");

interface ServiceSecret {
  source: string;
  target?: string;
}
interface Service {
  image: string;
  environment?: Record<string, string>;
  env_file?: string | string[];
  secrets?: (string | ServiceSecret)[];
  volumes?: string[];
  networks?: string[] | Record<string, { ipv4_address?: string } | null>;
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[]; disable?: boolean };
}
interface Compose {
  services: Record<string, Service>;
  secrets: Record<string, { file?: string; environment?: string }>;
  volumes: Record<string, unknown>;
}

/** KEY=VALUE lines, as compose reads a .env or env_file (comments and blank lines skipped). */
function envLines(text: string): Record<string, string> {
  const entries = text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line)!.slice(1) as [string, string]);
  return Object.fromEntries(entries);
}

/** Compose's interpolation of one value: `$$`, `${NAME}`, `${NAME:-default}`, `${NAME:?error}` (unset or empty fails). */
function interpolate(value: string, vars: Record<string, string>): string {
  return value.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])([^}]*))?\}|\$(?=[A-Za-z_{])/g, (match, name, kind, word) => {
    if (match === "$$") return "$";
    if (name === undefined) throw new Error(`unsupported interpolation in ${JSON.stringify(value)}`);
    const set = vars[name];
    if (set !== undefined && set !== "") return set;
    if (kind === "-") return word;
    throw new Error(`${name} is not set: ${word ?? "no default"}`);
  });
}

function interpolated<T>(node: T, vars: Record<string, string>): T {
  if (typeof node === "string") return interpolate(node, vars) as T;
  if (Array.isArray(node)) return node.map((item) => interpolated(item, vars)) as T;
  if (node !== null && typeof node === "object") {
    return Object.fromEntries(Object.entries(node).map(([key, value]) => [key, interpolated(value, vars)])) as T;
  }
  return node;
}

const dotEnv = envLines(read("compose.replicas.env.example"));
// Compose parses the YAML first (anchors and merge keys included) and interpolates the values it holds.
const compose = interpolated(Bun.YAML.parse(read("compose.replicas.yaml")) as Compose, dotEnv);
const services = Object.entries(compose.services);

/** The image the Quadlet unit runs is the one the Containerfile builds: the replicas must run it too. */
const BROKER_IMAGE = /^Image=(.*)$/m.exec(read("forgejo-mcp-broker.container"))![1]!;
const replicas = services.filter(([, service]) => service.image === BROKER_IMAGE);
const replicaNames = replicas.map(([name]) => name);

/** The final stage's ENV of deploy/Containerfile: what every replica's environment starts from. */
const imageEnv: Record<string, string> = (() => {
  const joined = read("Containerfile").replace(/\\\n\s*/g, " ");
  const finalStage = joined.slice(joined.lastIndexOf("\nFROM "));
  const env: Record<string, string> = {};
  for (const [, line] of finalStage.matchAll(/^ENV\s+(.*)$/gm)) {
    for (const [, key, quoted, bare] of line!.matchAll(/([A-Z_]+)=(?:"([^"]*)"|(\S+))/g)) env[key!] = quoted ?? bare!;
  }
  return env;
})();

const secretTarget = (secret: string | ServiceSecret) =>
  typeof secret === "string" ? `/run/secrets/${secret}` : secret.target?.startsWith("/") ? secret.target : `/run/secrets/${secret.target ?? secret.source}`;
const secretSource = (secret: string | ServiceSecret) => (typeof secret === "string" ? secret : secret.source);
const envFiles = (service: Service): string[] => (service.env_file === undefined ? [] : [service.env_file].flat());

/** The shell lines of the compose file's header that create deploy/secrets/ (one command over several lines). */
const secretsRecipe = (() => {
  const lines = read("compose.replicas.yaml").split("\n").map((line) => line.replace(/^#   /, ""));
  const first = lines.findIndex((line) => line.startsWith("(cd deploy && umask 077"));
  const last = lines.findIndex((line, index) => index > first && !line.endsWith("\\"));
  return lines.slice(first, last + 1).join("\n");
})();

interface LoadedReplica {
  name: string;
  service: Service;
  config: BrokerConfig;
  /** Every variable the replica's environment holds (image, env_file, environment), and those loadConfig read. */
  given: string[];
  read: Set<string>;
}

const CLIENT_SECRET = `gto_${crypto.randomUUID()}`;
let checkout: string;
const secretFile = (name: string) => join(checkout, "deploy", "secrets", name.replace(/^\.\/secrets\//, ""));
let loaded: LoadedReplica[];

beforeAll(async () => {
  // The header's recipe, run as written in a directory of the test's, the Forgejo client secret typed on stdin.
  checkout = mkdtempSync(join(tmpdir(), "fmb-compose-"));
  mkdirSync(join(checkout, "deploy"));
  const recipe = Bun.spawn(["bash", "-euo", "pipefail", "-c", secretsRecipe], { cwd: checkout, stdin: new Blob([`${CLIENT_SECRET}\n`]), stderr: "pipe" });
  const [code, stderr] = await Promise.all([recipe.exited, new Response(recipe.stderr).text()]);
  if (code !== 0) throw new Error(`the secrets recipe failed: ${stderr}`);

  loaded = replicas.map(([name, service]) => {
    // What the container gets: the image's ENV, then its env_file, then its environment.
    const fromFiles = envFiles(service).map((file) => envLines(readFileSync(secretFile(file), "utf8")));
    const env: Record<string, string> = Object.assign({}, imageEnv, ...fromFiles, service.environment);
    // A secret mounted at /run/secrets/<target> is, here, the file the recipe wrote for it.
    const mounted = new Map((service.secrets ?? []).map((secret) => [secretTarget(secret), secretFile(compose.secrets[secretSource(secret)]!.file!)]));
    for (const [key, value] of Object.entries(env)) if (key.endsWith("_FILE")) env[key] = mounted.get(value) ?? value;
    const readNames = new Set<string>();
    const watched = new Proxy(env, {
      get(target, key) {
        if (typeof key === "string") readNames.add(key);
        return target[key as string];
      },
    });
    const result = loadConfig(watched);
    if (!result.ok) throw new Error(`${name}: ${result.problems.join("; ")}`);
    return { name, service, config: result.config, given: Object.keys(env), read: readNames };
  });
});
afterAll(() => rmSync(checkout, { recursive: true, force: true }));

describe("deploy/compose.replicas.yaml", () => {
  test("three replicas of the broker's image, with the header's secrets, that loadConfig accepts and whose every variable it reads", () => {
    expect(replicaNames).toHaveLength(3);
    const secret = (name: string) => readFileSync(secretFile(name), "utf8").trim();
    const redisPassword = /^requirepass (\S+)$/.exec(secret("redis_conf"))![1];
    for (const replica of loaded) {
      expect({ replica: replica.name, notRead: replica.given.filter((key) => !replica.read.has(key)) }).toEqual({ replica: replica.name, notRead: [] });
      // Shared by all: PostgreSQL with the password PostgreSQL is given, Redis with Redis's, one sealing key.
      expect(new URL(replica.config.databaseUrl!).password).toBe(secret("postgres_password"));
      expect(new URL(replica.config.redis!.url).password).toBe(redisPassword!);
      expect(Buffer.from(replica.config.sealingKey!).toString("base64")).toBe(secret("broker_sealing_key"));
      expect(replica.config.forgejo.clientSecret).toBe(CLIENT_SECRET);
    }
    for (const { file } of Object.values(compose.secrets)) expect(statSync(secretFile(file!)).mode & 0o077).toBe(0);
  });

  test("one BROKER_PUBLIC_URL, Caddy's site, for all; a BROKER_REPLICA_URL and a data volume of its own for each", () => {
    const publicUrls = new Set(loaded.map((replica) => replica.config.publicUrl));
    expect([...publicUrls]).toEqual([`https://${dotEnv.BROKER_SITE}`]);

    const replicaUrls = loaded.map((replica) => new URL(replica.config.redis!.replicaUrl));
    // Reached by service name (compose's DNS) on the port the image makes the broker listen on.
    expect(replicaUrls.map((url) => url.hostname)).toEqual(replicaNames);
    for (const [index, url] of replicaUrls.entries()) expect(Number(url.port)).toBe(loaded[index]!.config.port);

    const dataVolumes = loaded.map((replica) => {
      const mounts = (replica.service.volumes ?? []).map((volume) => volume.split(":"));
      expect(mounts.map(([, target]) => target)).toEqual([replica.config.dataDir]);
      return mounts[0]![0]!;
    });
    expect(new Set(dataVolumes).size).toBe(3);
    // Named volumes of the file, not host paths.
    for (const volume of dataVolumes) expect(Object.keys(compose.volumes)).toContain(volume);
  });

  test("Caddy runs deploy/Caddyfile with exactly the replicas as upstreams, and trusts its own address only", async () => {
    const caddies = services.filter(([, service]) => (service.volumes ?? []).some((volume) => volume.startsWith("./Caddyfile:")));
    expect(caddies).toHaveLength(1);
    const [, caddy] = caddies[0]!;
    expect(caddy.volumes).toContain("./Caddyfile:/etc/caddy/Caddyfile:ro");
    expect(caddy.environment!.BROKER_SITE).toBe(dotEnv.BROKER_SITE!);

    // The upstreams as Caddy itself reads the file with the service's environment.
    const home = mkdtempSync(join(tmpdir(), "fmb-compose-caddy-"));
    try {
      const adapt = Bun.spawn(["/usr/bin/caddy", "adapt", "--config", join(DEPLOY, "Caddyfile"), "--adapter", "caddyfile"], {
        env: { PATH: process.env.PATH ?? "", HOME: home, XDG_DATA_HOME: home, XDG_CONFIG_HOME: home, ...caddy.environment },
        stdout: "pipe",
        stderr: "pipe",
      });
      const [code, json] = await Promise.all([adapt.exited, new Response(adapt.stdout).text()]);
      expect(code).toBe(0);
      const dials: string[] = [];
      JSON.stringify(JSON.parse(json), (key, value) => {
        if (value?.handler === "reverse_proxy") dials.push(...(value.upstreams as { dial: string }[]).map((upstream) => upstream.dial));
        return value;
      });
      expect(dials.toSorted()).toEqual(loaded.map((replica) => new URL(replica.config.redis!.replicaUrl).host).toSorted());
    } finally {
      rmSync(home, { recursive: true, force: true });
    }

    // X-Forwarded-For is believed from Caddy's fixed address on the replicas' network, and from nothing else.
    const addresses = Object.values(caddy.networks as Record<string, { ipv4_address?: string } | null>).flatMap((network) => network?.ipv4_address ?? []);
    expect(addresses).toHaveLength(1);
    for (const replica of loaded) expect(replica.service.environment!.BROKER_TRUSTED_PROXIES).toBe(addresses[0]!);
  });

  test("every service has a health check, and the replicas start only once PostgreSQL and Redis pass theirs", () => {
    for (const [name, service] of services) {
      expect({ name, check: service.healthcheck?.test?.[0] }).toEqual({ name, check: expect.stringMatching(/^CMD(-SHELL)?$/) });
      expect(service.healthcheck!.disable).not.toBe(true);
    }
    const database = services.find(([, service]) => service.image.includes("/postgres:"))![0];
    const redis = services.find(([, service]) => service.image.includes("/redis:"))![0];
    for (const { service } of loaded) {
      expect(service.depends_on).toEqual({ [database]: { condition: "service_healthy" }, [redis]: { condition: "service_healthy" } });
    }
  });

  test("no secret in the file: secrets are files under deploy/secrets/ that git ignores, and every /run/secrets path is mounted", async () => {
    for (const [name, secret] of Object.entries(compose.secrets)) expect({ name, secret }).toEqual({ name, secret: { file: `./secrets/${name}` } });
    for (const [name, service] of services) {
      for (const [key, value] of Object.entries(service.environment ?? {})) {
        // Only *_FILE names a secret; a URL never carries credentials here.
        if (/SECRET|PASSWORD|SEALING_KEY|TOKEN|DATABASE_URL|REDIS_URL/.test(key)) expect({ name, key }).toEqual({ name, key: expect.stringMatching(/_FILE$/) });
        expect(value).not.toMatch(/\/\/[^/@\s]*:[^/@\s]*@/);
      }
      const mounted = (service.secrets ?? []).map(secretTarget);
      for (const [path] of JSON.stringify(service).matchAll(/\/run\/secrets\/[\w.-]+/g)) expect({ name, path, mounted: mounted.includes(path!) }).toEqual({ name, path, mounted: true });
    }
    const paths = [...Object.keys(compose.secrets), ...loaded.flatMap((replica) => envFiles(replica.service))].map((file) => join("deploy", "secrets", file.replace(/^\.\/secrets\//, "")));
    const check = Bun.spawn(["git", "check-ignore", "--no-index", ...paths, "deploy/.env"], { cwd: ROOT, stdout: "pipe" });
    const [code, ignored] = await Promise.all([check.exited, new Response(check.stdout).text()]);
    expect({ code, ignored: ignored.trim().split("\n") }).toEqual({ code: 0, ignored: [...paths, "deploy/.env"] });
  });
});

test("PostgreSQL's health check passes against a PostgreSQL that accepts connections (the test server on 127.0.0.1:5432)", async () => {
  const [kind, ...command] = services.find(([, service]) => service.image.includes("/postgres:"))![1].healthcheck!.test;
  expect(kind).toBe("CMD");
  const check = Bun.spawn(command, { stdout: "ignore", stderr: "ignore" });
  expect(await check.exited).toBe(0);
});

describe("the replicas' health check, run as the container runs it", () => {
  let t: TestBroker;
  let running = false;
  beforeAll(async () => {
    t = await startTestBroker();
    running = true;
  });
  afterAll(async () => {
    if (running) await t.stop();
  });

  /** Runs a replica's healthcheck command with the container's BROKER_PORT (Bun in the image, the test's Bun here). */
  async function healthcheck(port: number): Promise<number> {
    const [, program, ...args] = loaded[0]!.service.healthcheck!.test;
    expect(program).toBe("bun");
    const check = Bun.spawn([process.execPath, ...args], { env: { PATH: process.env.PATH ?? "", BROKER_PORT: String(port) }, stdout: "ignore", stderr: "ignore" });
    return check.exited;
  }

  test("passes while the replica's /healthz answers 200, fails once nothing answers", async () => {
    const port = Number(new URL(t.broker.url).port);
    expect((await fetch(`${t.broker.url}/healthz`)).status).toBe(200);
    expect(await healthcheck(port)).toBe(0);
    await t.stop();
    running = false;
    expect(await healthcheck(port)).not.toBe(0);
  });
});

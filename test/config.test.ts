// Configuration as an operator writes it: defaults, each variable's validation, and the
// command-line splitting that must never go through a shell.
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEFAULT_FORGEJO_SCOPES, hiddenFromChildren, loadConfig, splitCommandLine, type SecretFileReader } from "../src/config.ts";
import type { LogLevel } from "../src/log.ts";

const REQUIRED = { FORGEJO_URL: "https://forgejo.example.com/", FORGEJO_CLIENT_ID: "id", FORGEJO_CLIENT_SECRET: "secret" };

describe("loadConfig", () => {
  test("defaults", () => {
    const result = loadConfig(REQUIRED);
    if (!result.ok) throw new Error(result.problems.join("\n"));
    expect(result.config).toMatchObject({
      publicUrl: "http://127.0.0.1:8080",
      resourceUrl: "http://127.0.0.1:8080/mcp",
      host: "127.0.0.1",
      port: 8080,
      dataDir: "./data",
      sealingKey: null,
      forgejo: { url: "https://forgejo.example.com", clientId: "id", clientSecret: "secret", scopes: DEFAULT_FORGEJO_SCOPES.split(" "), timeoutMs: 20_000 },
      child: { command: ["forgejo-mcp", "--transport", "stdio"], urlEnv: "FORGEJO_URL", tokenEnv: "FORGEJO_ACCESS_TOKEN", passthroughEnv: [], stopGraceMs: 5000, sandbox: { kind: "bwrap", bind: [] }, era: "auto" },
      sessions: { idleTimeoutMs: 900_000, refreshLeadMs: 300_000, requestTimeoutMs: 300_000, maxMessageBytes: 4 * 1024 * 1024, allowedOrigins: ["http://127.0.0.1:8080"] },
      logLevel: "info",
    });
  });

  const levels: [string, LogLevel][] = [["debug", "debug"], ["warn", "warn"], ["INFO", "info"], ["Error", "error"]];
  test.each(levels)("BROKER_LOG_LEVEL=%s is the level %s", (raw, level) => {
    const result = loadConfig({ ...REQUIRED, BROKER_LOG_LEVEL: raw });
    expect(result.ok && result.config.logLevel).toBe(level);
  });

  test("FORGEJO_TIMEOUT_S is read in seconds", () => {
    const result = loadConfig({ ...REQUIRED, FORGEJO_TIMEOUT_S: "7" });
    expect(result.ok && result.config.forgejo.timeoutMs).toBe(7000);
  });

  test("BROKER_CHILD_SANDBOX=none and BROKER_CHILD_SANDBOX_BIND's paths reach the child's sandbox config", () => {
    const result = loadConfig({ ...REQUIRED, BROKER_CHILD_SANDBOX: "none", BROKER_CHILD_SANDBOX_BIND: "/usr/local/lib/node_modules, /etc/ssl" });
    expect(result.ok && result.config.child.sandbox).toEqual({ kind: "none", bind: ["/usr/local/lib/node_modules", "/etc/ssl"] });
  });

  test("a configured sealing key is decoded", () => {
    const key = Buffer.alloc(32, 7).toString("base64");
    const result = loadConfig({ ...REQUIRED, BROKER_SEALING_KEY: key });
    expect(result.ok && Buffer.from(result.config.sealingKey!).equals(Buffer.alloc(32, 7))).toBe(true);
  });

  test("BROKER_DATABASE_URL with a sealing key selects PostgreSQL; unset, the SQLite file", () => {
    const shared = loadConfig({ ...REQUIRED, BROKER_DATABASE_URL: "postgres://broker:pw@db:5432/broker", BROKER_SEALING_KEY: Buffer.alloc(32, 7).toString("base64") });
    expect(shared.ok && shared.config.databaseUrl).toBe("postgres://broker:pw@db:5432/broker");
    const alone = loadConfig(REQUIRED);
    expect(alone.ok && alone.config.databaseUrl).toBeNull();
  });

  test("BROKER_TRUSTED_PROXIES takes IPv4 and IPv6 addresses and CIDR blocks, and none by default", () => {
    const result = loadConfig({ ...REQUIRED, BROKER_TRUSTED_PROXIES: "127.0.0.1, 10.0.0.0/8 ::1,fd00::/8" });
    if (!result.ok) throw new Error(result.problems.join("\n"));
    expect(result.config.trustedProxies.map(({ version, prefix }) => [version, prefix])).toEqual([[4, 32], [4, 8], [6, 128], [6, 8]]);
    const defaults = loadConfig(REQUIRED);
    expect(defaults.ok && defaults.config.trustedProxies).toEqual([]);
  });

  test("each bad BROKER_TRUSTED_PROXIES entry is a line of its own", () => {
    const result = loadConfig({ ...REQUIRED, BROKER_TRUSTED_PROXIES: "10.0.0.1/8,proxy.local,10.0.0.0/8" });
    expect(result.ok ? [] : result.problems).toEqual([
      expect.stringMatching(/^BROKER_TRUSTED_PROXIES: has "10.0.0.1\/8", which is not an IP address or CIDR block/),
      expect.stringMatching(/^BROKER_TRUSTED_PROXIES: has "proxy.local", which is not an IP address or CIDR block/),
    ]);
  });

  test.each([
    ["probed once per command when unset", undefined, "auto"],
    ["probed once per command", "auto", "auto"],
    ["initialized as a 2025-era server, no probe", "legacy", "legacy"],
    ["spoken to in 2026-07-28, no probe", "modern", "modern"],
  ] as const)("BROKER_CHILD_ERA: a modern caller's child is %s", (_, value, era) => {
    const result = loadConfig(value === undefined ? REQUIRED : { ...REQUIRED, BROKER_CHILD_ERA: value });
    expect(result.ok && result.config.child.era).toBe(era);
  });

  test("metrics and traces are off unless configured; BROKER_METRICS_ADDR takes IPv4 and [IPv6] hosts", () => {
    const plain = loadConfig(REQUIRED);
    if (!plain.ok) throw new Error(plain.problems.join("\n"));
    expect(plain.config.observability).toEqual({ metricsAddr: null, metricsToken: null, otlpEndpoint: null, serviceName: "forgejo-mcp-broker" });
    const set = loadConfig({
      ...REQUIRED,
      BROKER_METRICS_ADDR: "[::1]:9464",
      BROKER_METRICS_TOKEN: "0123456789abcdef0123",
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318/",
      OTEL_SERVICE_NAME: "mcp-gw",
    });
    if (!set.ok) throw new Error(set.problems.join("\n"));
    expect(set.config.observability).toEqual({
      metricsAddr: { host: "::1", port: 9464 },
      metricsToken: "0123456789abcdef0123",
      otlpEndpoint: "http://127.0.0.1:4318",
      serviceName: "mcp-gw",
    });
    const v4 = loadConfig({ ...REQUIRED, BROKER_METRICS_ADDR: "127.0.0.1:9464" });
    expect(v4.ok && v4.config.observability.metricsAddr).toEqual({ host: "127.0.0.1", port: 9464 });
  });

  const problems: [string, Record<string, string>, RegExp][] = [
    ["public URL with a query", { BROKER_PUBLIC_URL: "https://mcp.example.com/?x=1" }, /^BROKER_PUBLIC_URL: must not carry a query/],
    ["public URL of another scheme", { BROKER_PUBLIC_URL: "ftp://mcp.example.com" }, /^BROKER_PUBLIC_URL: must be an http or https URL/],
    ["port out of range", { BROKER_PORT: "70000" }, /^BROKER_PORT: must be a whole number from 0 to 65535, got "70000"/],
    ["key of the wrong length", { BROKER_SEALING_KEY: Buffer.alloc(16).toString("base64") }, /^BROKER_SEALING_KEY: must be 32 bytes/],
    ["a database URL of another kind", { BROKER_DATABASE_URL: "mysql://db/broker", BROKER_SEALING_KEY: Buffer.alloc(32, 7).toString("base64") }, /^BROKER_DATABASE_URL: must be a postgres:\/\/ URL \(example: /],
    ["a shared database without a sealing key", { BROKER_DATABASE_URL: "postgres://db/broker" }, /^BROKER_SEALING_KEY: is required with BROKER_DATABASE_URL, the same on every replica/],
    ["a bad env name for the token", { BROKER_CHILD_TOKEN_ENV: "MY-TOKEN" }, /^BROKER_CHILD_TOKEN_ENV: is not an environment variable name/],
    ["a bad passthrough name", { BROKER_CHILD_ENV_PASSTHROUGH: "HOME,BAD=1" }, /^BROKER_CHILD_ENV_PASSTHROUGH: has a bad variable name "BAD=1"/],
    ["the client secret passed through", { BROKER_CHILD_ENV_PASSTHROUGH: "HOME,FORGEJO_CLIENT_SECRET" }, /^BROKER_CHILD_ENV_PASSTHROUGH: must not hand the broker's own "FORGEJO_CLIENT_SECRET" to children/],
    ["the sealing key passed through", { BROKER_CHILD_ENV_PASSTHROUGH: "BROKER_SEALING_KEY LANG" }, /^BROKER_CHILD_ENV_PASSTHROUGH: must not hand the broker's own "BROKER_SEALING_KEY" to children/],
    ["a broker variable passed through", { BROKER_CHILD_ENV_PASSTHROUGH: "BROKER_METRICS_TOKEN" }, /^BROKER_CHILD_ENV_PASSTHROUGH: must not hand the broker's own "BROKER_METRICS_TOKEN" to children/],
    ["an unknown sandbox", { BROKER_CHILD_SANDBOX: "docker" }, /^BROKER_CHILD_SANDBOX: must be bwrap or none, got "docker"/],
    ["an unknown child era", { BROKER_CHILD_ERA: "2026" }, /^BROKER_CHILD_ERA: must be one of auto, legacy, modern, got "2026" \(example: BROKER_CHILD_ERA=auto\)$/],
    ["a relative sandbox bind", { BROKER_CHILD_SANDBOX_BIND: "/etc/ssl,node_modules" }, /^BROKER_CHILD_SANDBOX_BIND: has "node_modules", which is not an absolute path/],
    ["an origin with a path", { BROKER_ALLOWED_ORIGINS: "https://claude.ai/x" }, /^BROKER_ALLOWED_ORIGINS: has "https:\/\/claude.ai\/x", which is not an origin/],
    ["zero sessions", { BROKER_MAX_SESSIONS: "0" }, /^BROKER_MAX_SESSIONS: must be a whole number from 1/],
    ["no wait for Forgejo at all", { FORGEJO_TIMEOUT_S: "0" }, /^FORGEJO_TIMEOUT_S: must be a whole number from 1 to 600, got "0"/],
    ["a metrics address without a port", { BROKER_METRICS_ADDR: "127.0.0.1" }, /^BROKER_METRICS_ADDR: must be host:port, got "127.0.0.1"/],
    ["a metrics port out of range", { BROKER_METRICS_ADDR: "[::1]:70000" }, /^BROKER_METRICS_ADDR: must be host:port, got "\[::1\]:70000"/],
    ["a short metrics token", { BROKER_METRICS_TOKEN: "secret" }, /^BROKER_METRICS_TOKEN: must be at least 16 printable characters without spaces/],
    ["a metrics token with a space", { BROKER_METRICS_TOKEN: "0123456789abcdef 0123" }, /^BROKER_METRICS_TOKEN: must be at least 16 printable characters/],
    ["an OTLP endpoint that is no URL", { OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318" }, /^OTEL_EXPORTER_OTLP_ENDPOINT: must be an http or https URL, got collector:/],
    ["an unknown log level", { BROKER_LOG_LEVEL: "verbose" }, /^BROKER_LOG_LEVEL: must be one of debug, info, warn, error, got "verbose" \(example: BROKER_LOG_LEVEL=info\)$/],
  ];
  test.each(problems)("%s", (_, env, expected) => {
    const result = loadConfig({ ...REQUIRED, ...env });
    expect(result.ok).toBe(false);
    if (!result.ok) {
      expect(result.problems).toHaveLength(1);
      expect(result.problems[0]).toMatch(expected);
      expect(result.problems[0]).toContain("(example: ");
    }
  });
});

describe("secrets from files (the _FILE variables)", () => {
  const { FORGEJO_CLIENT_SECRET: _, ...WITHOUT_SECRET } = REQUIRED;
  const SECRET = "gto_secretfromafile";
  const KEY = Buffer.alloc(32, 9);
  const CREDENTIALS = "/run/credentials/forgejo-mcp-broker.service";
  /** Files as a mode (st_mode, so with the regular-file bits) and a text; any other path fails as open(2) does. */
  const files: Record<string, { text: string; mode: number }> = {
    "/etc/fmb/client_secret": { text: `${SECRET}\n`, mode: 0o100600 },
    "/etc/fmb/sealing_key": { text: `${KEY.toString("base64")}\n`, mode: 0o100400 },
    "/etc/fmb/group_readable": { text: SECRET, mode: 0o100640 },
    "/etc/fmb/world_readable_key": { text: KEY.toString("base64"), mode: 0o100644 },
    "/etc/fmb/blank": { text: " \n", mode: 0o100600 },
    "/etc/fmb/short_key": { text: "c2hvcnRrZXljb250ZW50", mode: 0o100600 },
    "/etc/fmb/database_url": { text: "postgres://broker:dbpassword@db:5432/broker\n", mode: 0o100400 },
    "/etc/fmb/redis_url": { text: "redis://:redispassword@redis:6379\n", mode: 0o100400 },
    "/etc/fmb/world_readable_redis_url": { text: "redis://:redispassword2@redis:6379", mode: 0o100644 },
    [`${CREDENTIALS}/forgejo_client_secret`]: { text: SECRET, mode: 0o100440 },
    [`${CREDENTIALS}-other/forgejo_client_secret`]: { text: SECRET, mode: 0o100440 },
    [`${CREDENTIALS}/../elsewhere/forgejo_client_secret`]: { text: SECRET, mode: 0o100440 },
  };
  const readFake: SecretFileReader = (path) => {
    const file = files[path];
    if (file === undefined) throw new Error(`ENOENT: no such file or directory, open '${path}'`);
    return file;
  };

  test("each secret is read from its file, without the trailing newline", () => {
    const result = loadConfig({ ...WITHOUT_SECRET, FORGEJO_CLIENT_SECRET_FILE: "/etc/fmb/client_secret", BROKER_SEALING_KEY_FILE: "/etc/fmb/sealing_key" }, readFake);
    if (!result.ok) throw new Error(result.problems.join("\n"));
    expect(result.config.forgejo.clientSecret).toBe(SECRET);
    expect(Buffer.from(result.config.sealingKey!).equals(KEY)).toBe(true);
  });

  test("the database and Redis URLs, which carry their passwords, are read from files like the other secrets", () => {
    const result = loadConfig({ ...REQUIRED, BROKER_SEALING_KEY_FILE: "/etc/fmb/sealing_key", BROKER_DATABASE_URL_FILE: "/etc/fmb/database_url", BROKER_REDIS_URL_FILE: "/etc/fmb/redis_url" }, readFake);
    if (!result.ok) throw new Error(result.problems.join("\n"));
    expect([result.config.databaseUrl, result.config.redis?.url]).toEqual(["postgres://broker:dbpassword@db:5432/broker", "redis://:redispassword@redis:6379"]);
    expect(hiddenFromChildren(result.config)).toEqual(expect.arrayContaining(["/etc/fmb/database_url", "/etc/fmb/redis_url"]));
  });

  test("the files a secret came from are hidden from children, with the data directory", () => {
    const result = loadConfig({ ...WITHOUT_SECRET, FORGEJO_CLIENT_SECRET_FILE: "/etc/fmb/client_secret", BROKER_SEALING_KEY_FILE: "/etc/fmb/sealing_key" }, readFake);
    if (!result.ok) throw new Error(result.problems.join("\n"));
    expect(hiddenFromChildren(result.config)).toEqual([result.config.dataDir, "/etc/fmb/sealing_key", "/etc/fmb/client_secret"]);
  });

  test("a file in systemd's credentials directory may show 0440: systemd grants the unit's user read with an ACL", () => {
    const path = `${CREDENTIALS}/forgejo_client_secret`;
    const result = loadConfig({ ...WITHOUT_SECRET, CREDENTIALS_DIRECTORY: CREDENTIALS, FORGEJO_CLIENT_SECRET_FILE: path }, readFake);
    expect(result.ok ? result.config.forgejo.clientSecret : result.problems).toBe(SECRET);
  });

  const refused: [string, Record<string, string>, RegExp][] = [
    ["a secret both in the environment and in a file", { ...REQUIRED, FORGEJO_CLIENT_SECRET_FILE: "/etc/fmb/client_secret" }, /^FORGEJO_CLIENT_SECRET_FILE: and FORGEJO_CLIENT_SECRET are both set; keep only one/],
    ["a key both in the environment and in a file", { ...REQUIRED, BROKER_SEALING_KEY: KEY.toString("base64"), BROKER_SEALING_KEY_FILE: "/etc/fmb/sealing_key" }, /^BROKER_SEALING_KEY_FILE: and BROKER_SEALING_KEY are both set; keep only one/],
    ["a file that cannot be read", { ...WITHOUT_SECRET, FORGEJO_CLIENT_SECRET_FILE: "/etc/fmb/missing" }, /^FORGEJO_CLIENT_SECRET_FILE: cannot read \/etc\/fmb\/missing: ENOENT: no such file or directory \(example: /],
    ["a file of blanks", { ...WITHOUT_SECRET, FORGEJO_CLIENT_SECRET_FILE: "/etc/fmb/blank" }, /^FORGEJO_CLIENT_SECRET_FILE: \/etc\/fmb\/blank is empty; it must hold the Forgejo client secret/],
    ["a secret file its group may read", { ...WITHOUT_SECRET, FORGEJO_CLIENT_SECRET_FILE: "/etc/fmb/group_readable" }, /^FORGEJO_CLIENT_SECRET_FILE: \/etc\/fmb\/group_readable has mode 0640, so other users may read the Forgejo client secret; run chmod 600 '\/etc\/fmb\/group_readable' and start again/],
    ["a key file anyone may read", { ...REQUIRED, BROKER_SEALING_KEY_FILE: "/etc/fmb/world_readable_key" }, /^BROKER_SEALING_KEY_FILE: \/etc\/fmb\/world_readable_key has mode 0644, so other users may read the sealing key; run chmod 600/],
    ["a Redis URL both in the environment and in a file", { ...REQUIRED, BROKER_REDIS_URL: "redis://127.0.0.1:6379", BROKER_REDIS_URL_FILE: "/etc/fmb/redis_url" }, /^BROKER_REDIS_URL_FILE: and BROKER_REDIS_URL are both set; keep only one/],
    ["a Redis URL file anyone may read", { ...REQUIRED, BROKER_REDIS_URL_FILE: "/etc/fmb/world_readable_redis_url" }, /^BROKER_REDIS_URL_FILE: \/etc\/fmb\/world_readable_redis_url has mode 0644, so other users may read the Redis URL; run chmod 600/],
    ["a key file that is not 32 bytes of base64", { ...REQUIRED, BROKER_SEALING_KEY_FILE: "/etc/fmb/short_key" }, /^BROKER_SEALING_KEY_FILE: \/etc\/fmb\/short_key must hold 32 bytes in base64/],
    ["0440 beside the credentials directory, in one whose name starts like it", { ...WITHOUT_SECRET, CREDENTIALS_DIRECTORY: CREDENTIALS, FORGEJO_CLIENT_SECRET_FILE: `${CREDENTIALS}-other/forgejo_client_secret` }, /^FORGEJO_CLIENT_SECRET_FILE: .* has mode 0440/],
    ["0440 reached from the credentials directory by ..", { ...WITHOUT_SECRET, CREDENTIALS_DIRECTORY: CREDENTIALS, FORGEJO_CLIENT_SECRET_FILE: `${CREDENTIALS}/../elsewhere/forgejo_client_secret` }, /^FORGEJO_CLIENT_SECRET_FILE: .* has mode 0440/],
    ["the client secret's file passed through to children", { ...REQUIRED, BROKER_CHILD_ENV_PASSTHROUGH: "FORGEJO_CLIENT_SECRET_FILE" }, /^BROKER_CHILD_ENV_PASSTHROUGH: must not hand the broker's own "FORGEJO_CLIENT_SECRET_FILE" to children/],
  ];
  test.each(refused)("%s: one line that names the file and shows none of it", (_, env, expected) => {
    const result = loadConfig(env, readFake);
    const problems = result.ok ? [] : result.problems;
    expect(problems).toEqual([expect.stringMatching(expected)]);
    expect(problems[0]).toContain("(example: ");
    for (const text of Object.values(files).map((file) => file.text.trim()).filter(Boolean)) expect(problems[0]).not.toContain(text);
  });

  describe("on disk", () => {
    const dir = mkdtempSync(join(tmpdir(), "fmb-secrets-"));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    const file = (name: string, text: string, mode: number) => {
      const path = join(dir, name);
      writeFileSync(path, text);
      chmodSync(path, mode);
      return path;
    };
    const fromDisk = (path: string) => loadConfig({ ...WITHOUT_SECRET, FORGEJO_CLIENT_SECRET_FILE: path });

    test("an owner-only file is read, an exposed one, a directory and a FIFO are refused, and nothing waits on the FIFO", () => {
      const owned = fromDisk(file("owned", `${SECRET}\n`, 0o600));
      expect(owned.ok ? owned.config.forgejo.clientSecret : owned.problems).toBe(SECRET);

      const exposed = file("exposed", SECRET, 0o604);
      expect(fromDisk(exposed)).toEqual({ ok: false, problems: [expect.stringContaining(`${exposed} has mode 0604, so other users may read the Forgejo client secret`)] });

      const directory = join(dir, "directory");
      mkdirSync(directory);
      expect(fromDisk(directory)).toEqual({ ok: false, problems: [expect.stringContaining(`cannot read ${directory}: not a regular file`)] });

      const fifo = join(dir, "fifo");
      expect(Bun.spawnSync(["mkfifo", "-m", "600", fifo]).exitCode).toBe(0);
      expect(fromDisk(fifo)).toEqual({ ok: false, problems: [expect.stringContaining(`cannot read ${fifo}: not a regular file`)] });
    });

    test("a file larger than a secret is refused before it is read", () => {
      const large = file("large", "x".repeat(64 * 1024 + 1), 0o600);
      expect(fromDisk(large)).toEqual({ ok: false, problems: [expect.stringContaining(`cannot read ${large}: larger than 65536 bytes`)] });
    });
  });
});

describe("splitCommandLine", () => {
  const cases: [string, string[] | null][] = [
    ["forgejo-mcp --transport stdio", ["forgejo-mcp", "--transport", "stdio"]],
    ["  a   b  ", ["a", "b"]],
    [`bun "/opt/my app/child.ts" --x`, ["bun", "/opt/my app/child.ts", "--x"]],
    [`echo 'a "b" c'`, ["echo", 'a "b" c']],
    [`echo "a \\"b\\""`, ["echo", 'a "b"']],
    [`echo a\\ b`, ["echo", "a b"]],
    [`echo ''`, ["echo", ""]],
    [`echo $HOME; rm -rf /`, ["echo", "$HOME;", "rm", "-rf", "/"]],
    [`echo "unterminated`, null],
  ];
  test.each(cases)("%p → %p", (line, argv) => {
    expect(splitCommandLine(line)).toEqual(argv);
  });
});

describe("client policy: BROKER_CIMD_INSECURE_HOSTS and BROKER_CLIENT_IDLE_DAYS", () => {
  test("none insecure and 90 idle days by default", () => {
    const result = loadConfig(REQUIRED);
    expect(result.ok && result.config.clients).toEqual({ insecureMetadataHosts: [], idleMs: 90 * 86_400_000 });
  });

  test("host:port entries are read (lower-cased), and the idle days", () => {
    const result = loadConfig({ ...REQUIRED, BROKER_CIMD_INSECURE_HOSTS: "LocalHost:8443, 127.0.0.1:3000 [::1]:9000", BROKER_CLIENT_IDLE_DAYS: "7" });
    expect(result.ok && result.config.clients).toEqual({ insecureMetadataHosts: ["localhost:8443", "127.0.0.1:3000", "[::1]:9000"], idleMs: 7 * 86_400_000 });
  });

  test("an entry without a port, a URL, or a bad day count is a problem", () => {
    const result = loadConfig({ ...REQUIRED, BROKER_CIMD_INSECURE_HOSTS: "localhost,https://a.example:1", BROKER_CLIENT_IDLE_DAYS: "0" });
    expect(result.ok).toBe(false);
    expect(!result.ok && result.problems).toEqual([
      'BROKER_CIMD_INSECURE_HOSTS: has "localhost", which is not host:port (example: BROKER_CIMD_INSECURE_HOSTS=localhost:8443)',
      'BROKER_CIMD_INSECURE_HOSTS: has "https://a.example:1", which is not host:port (example: BROKER_CIMD_INSECURE_HOSTS=localhost:8443)',
      'BROKER_CLIENT_IDLE_DAYS: must be a whole number from 1 to 36500, got "0" (example: BROKER_CLIENT_IDLE_DAYS=90)',
    ]);
  });
});

describe("many replicas: BROKER_REDIS_URL, BROKER_REDIS_PREFIX, BROKER_REPLICA_URL", () => {
  test("no Redis by default: one box", () => {
    const result = loadConfig(REQUIRED);
    expect(result.ok && result.config.redis).toBeUndefined();
  });

  test("with a Redis URL the prefix is fmb: and this replica is reached at its host and port", () => {
    const result = loadConfig({ ...REQUIRED, BROKER_REDIS_URL: "redis://:pw@10.0.0.9:6379/2", BROKER_HOST: "10.0.0.5", BROKER_PORT: "9000" });
    expect(result.ok && result.config.redis).toEqual({ url: "redis://:pw@10.0.0.9:6379/2", prefix: "fmb:", replicaUrl: "http://10.0.0.5:9000" });
  });

  test("an IPv6 host is bracketed in the default replica URL; a given prefix and replica URL are kept", () => {
    const result = loadConfig({ ...REQUIRED, BROKER_REDIS_URL: "rediss://cache.internal", BROKER_HOST: "::1", BROKER_REDIS_PREFIX: "team-a:", BROKER_REPLICA_URL: "http://replica-2.internal:8080/" });
    expect(result.ok && result.config.redis).toEqual({ url: "rediss://cache.internal", prefix: "team-a:", replicaUrl: "http://replica-2.internal:8080" });
    const defaulted = loadConfig({ ...REQUIRED, BROKER_REDIS_URL: "redis://127.0.0.1", BROKER_HOST: "::1" });
    expect(defaulted.ok && defaulted.config.redis?.replicaUrl).toBe("http://[::1]:8080");
  });

  test("a bad URL, prefix or replica URL is a line each, and the Redis URL (which may hold a password) is not echoed", () => {
    const result = loadConfig({ ...REQUIRED, BROKER_REDIS_URL: "hunter2@cache:6379", BROKER_REDIS_PREFIX: "has space", BROKER_REPLICA_URL: "ftp://x" });
    expect(!result.ok && result.problems).toEqual([
      "BROKER_REDIS_URL: must be a redis:// or rediss:// URL naming a host (and at most a database number) (example: BROKER_REDIS_URL=redis://127.0.0.1:6379)",
      'BROKER_REDIS_PREFIX: must be 1 to 64 letters, digits or ":_.-", got "has space" (example: BROKER_REDIS_PREFIX=fmb:)',
      "BROKER_REPLICA_URL: must be an http or https URL, got ftp: (example: BROKER_REPLICA_URL=http://10.0.0.5:8080)",
    ]);
    expect(JSON.stringify(!result.ok && result.problems)).not.toContain("hunter2");
  });
});

// Real processes: the child's environment, its process group, its stop sequence and its stderr,
// checked the way an operator would check them (env output, ps, the log).
import { afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ChildConfig } from "../../src/config.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { checkChildCommand, ChildStartError, createSpawnChild, type ChildProcess } from "../../src/supervisor/child.ts";
import { probeSandbox, sandboxInitPid, type SandboxPlan } from "../../src/supervisor/sandbox.ts";
import { waitWhile } from "../helpers/promises.ts";

const brokerEnv = {
  PATH: process.env.PATH,
  HOME: "/home/broker",
  LANG: undefined,
  FORGEJO_CLIENT_SECRET: "gto_brokersecretbrokersecret",
  BROKER_SEALING_KEY: "must-not-leak",
};

function config(command: string[], overrides: Partial<ChildConfig> = {}): ChildConfig {
  return {
    command,
    urlEnv: "FORGEJO_URL",
    tokenEnv: "FORGEJO_ACCESS_TOKEN",
    passthroughEnv: ["HOME", "LANG"],
    stopGraceMs: 2000,
    sandbox: { kind: "none", bind: [] },
    era: "legacy",
    ...overrides,
  };
}

const started: ChildProcess[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((child) => child.stop()));
});

// Unsandboxed unless a test says otherwise: most of these are about the process group, stdio and stderr.
function spawn(
  command: string[],
  options: { overrides?: Partial<ChildConfig>; token?: string; maxStderrBytes?: number; sandbox?: SandboxPlan } = {},
) {
  const logger = createMemoryLogger();
  const spawnChild = createSpawnChild({
    config: config(command, options.overrides),
    sandbox: options.sandbox ?? { kind: "none" },
    forgejoUrl: "https://forgejo.test",
    env: brokerEnv,
    logger,
    maxStderrLineChars: 200,
    maxStderrBytes: options.maxStderrBytes ?? 1024 * 1024,
  });
  const child = spawnChild({ sessionId: "sess-1", token: options.token ?? "gto_usertokenusertoken" });
  started.push(child);
  return { child, logger };
}

/** Live (not zombie: this container's init does not reap) processes in a process group. */
function liveInGroup(pgid: number): string[] {
  const out = Bun.spawnSync(["ps", "-eo", "pid=,pgid=,stat=,args="]).stdout.toString();
  return out
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    .filter((cols) => Number(cols[1]) === pgid && !cols[2]?.startsWith("Z"))
    .map((cols) => cols.join(" "));
}

/** Live processes in a PID namespace, found by the namespace's identity in every process's /proc entry. */
function liveInNamespace(namespace: string): number[] {
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        return readlinkSync(`/proc/${pid}/ns/pid`) === namespace && !/^\S+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
      } catch {
        return false;
      }
    })
    .map(Number);
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<string> {
  return await new Response(stream).text();
}

describe("child environment", () => {
  test("is exactly PATH, the URL, the token and the passthrough variables that are set", async () => {
    const { child } = spawn(["env"]);
    const text = await readAll(child.stdout);
    const env = Object.fromEntries(text.trim().split("\n").map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]));
    expect(env).toEqual({
      PATH: process.env.PATH!,
      HOME: "/home/broker",
      FORGEJO_URL: "https://forgejo.test",
      FORGEJO_ACCESS_TOKEN: "gto_usertokenusertoken",
    });
    expect((await child.exited).code).toBe(0);
  });

  test("uses the configured variable names", async () => {
    const { child } = spawn(["env"], { overrides: { urlEnv: "GITEA_HOST", tokenEnv: "GITEA_TOKEN", passthroughEnv: [] } });
    const text = await readAll(child.stdout);
    expect(text.trim().split("\n").map((line) => line.split("=")[0]).sort()).toEqual(["GITEA_HOST", "GITEA_TOKEN", "PATH"]);
  });
});

describe("process group", () => {
  test("the child leads its own group, and stop leaves nothing of it in ps", async () => {
    const { child } = spawn(["sh", "-c", "sleep 60 & sleep 60 & echo ready; wait"]);
    const reader = child.stdout.getReader();
    await reader.read();
    // Every process the child started is in the group whose id is the child's pid.
    expect(liveInGroup(child.pid).length).toBe(3);
    const exit = await child.stop();
    expect(exit.signal).toBe("SIGTERM");
    await waitWhile(() => liveInGroup(child.pid).length > 0, 100, 10);
    expect(liveInGroup(child.pid)).toEqual([]);
  });

  test("a child that ignores SIGTERM is killed after the grace period", async () => {
    const { child } = spawn(["sh", "-c", "trap '' TERM; sleep 60 & echo ready; wait"], { overrides: { stopGraceMs: 300 } });
    await child.stdout.getReader().read();
    const began = performance.now();
    const exit = await child.stop();
    expect(performance.now() - began).toBeGreaterThanOrEqual(280);
    expect(exit.signal).toBe("SIGKILL");
    await waitWhile(() => liveInGroup(child.pid).length > 0, 100, 10);
    expect(liveInGroup(child.pid)).toEqual([]);
  });

  test("what a child leaves behind when it exits on its own is killed too", async () => {
    const { child } = spawn(["sh", "-c", "sleep 60 & exit 0"]);
    await child.exited;
    await waitWhile(() => liveInGroup(child.pid).length > 0, 100, 10);
    expect(liveInGroup(child.pid)).toEqual([]);
  });

  test("stop after exit resolves with the same exit", async () => {
    const { child } = spawn(["true"]);
    const exit = await child.exited;
    expect(await child.stop()).toEqual(exit);
  });
});

describe("stdio", () => {
  test("writes reach stdin and closing stdin lets a well-behaved child finish", async () => {
    const { child } = spawn(["cat"]);
    expect(child.write('{"jsonrpc":"2.0","method":"ping","id":1}\n')).toBe(true);
    const reader = child.stdout.getReader();
    const { value } = await reader.read();
    expect(new TextDecoder().decode(value)).toBe('{"jsonrpc":"2.0","method":"ping","id":1}\n');
    await child.stop();
    expect(child.write("late\n")).toBe(false);
  });
});

describe("stdin a child does not read", () => {
  // Reads nothing until SIGUSR1; Bun keeps what the pipe does not take in the broker's memory.
  const LAZY_READER = ["sh", "-c", 'trap "exec cat > /dev/null" USR1; sleep 600 & echo ready; wait'];
  const line = "x".repeat(64 * 1024 - 1) + "\n";
  // More than a pipe holds (Linux: 64 KiB by default, 1 MiB at most unprivileged).
  const LINES = 64;

  test("is counted while it waits, and no longer once the child has read it", async () => {
    const { child } = spawn(LAZY_READER);
    await child.stdout.getReader().read();
    for (let i = 0; i < LINES; i++) expect(child.write(line)).toBe(true);
    expect(child.stdinBacklog).toBeGreaterThan(0);
    expect(child.stdinBacklog).toBeLessThanOrEqual(LINES * line.length);
    process.kill(child.pid, "SIGUSR1");
    await waitWhile(() => child.stdinBacklog > 0, 300, 10);
    expect(child.stdinBacklog).toBe(0);
  });

  // Bun rejects the sink's pending flush with EPIPE; unhandled, bun test fails the run ("Unhandled error between tests").
  test("a child killed while input waits for it leaves nothing counted and no unhandled error", async () => {
    const { child } = spawn(LAZY_READER);
    await child.stdout.getReader().read();
    for (let i = 0; i < LINES; i++) child.write(line);
    expect(child.stdinBacklog).toBeGreaterThan(0);
    process.kill(child.pid, "SIGKILL");
    await child.exited;
    await waitWhile(() => child.stdinBacklog > 0, 300, 10);
    expect(child.stdinBacklog).toBe(0);
  });
});

describe("stderr", () => {
  test("is logged line by line, tagged with the session, with secrets masked", async () => {
    const { child, logger } = spawn(
      ["sh", "-c", "echo 'starting'; echo 'token is plain-user-token-1234 and gto_abcdefghijklmnop' >&2; printf 'no newline at end' >&2"],
      { token: "plain-user-token-1234" },
    );
    await child.exited;
    const lines = logger.lines.map((line) => JSON.parse(line)).filter((entry) => entry.msg === "child stderr");
    expect(lines.map((entry) => entry.stderr)).toEqual(["token is *** and gto_abc***", "no newline at end"]);
    expect(lines.every((entry) => entry.session === "sess-1")).toBe(true);
    expect(logger.lines.join("\n")).not.toContain("plain-user-token-1234");
    expect(logger.lines.join("\n")).not.toContain("abcdefghijklmnop");
  });

  test("a child that dies at start-up leaves its last stderr line in the exit", async () => {
    const { child } = spawn(["sh", "-c", "echo 'connecting' >&2; echo 'fatal: GET /api/v1/version: 401 for gto_abcdefghijklmnop' >&2; exit 3"]);
    const exit = await child.exited;
    expect(exit).toEqual({ code: 3, signal: null, lastStderrLine: "fatal: GET /api/v1/version: 401 for gto_abc***" });
  });

  test("long lines are cut and the total logged is capped, while the child is still drained", async () => {
    const { child, logger } = spawn(
      ["sh", "-c", "head -c 1000 /dev/zero | tr '\\0' x >&2; echo >&2; i=0; while [ $i -lt 2000 ]; do echo \"line $i\" >&2; i=$((i+1)); done; echo done"],
      { maxStderrBytes: 1000 },
    );
    expect(await readAll(child.stdout)).toBe("done\n");
    const exit = await child.exited;
    const entries = logger.lines.map((line) => JSON.parse(line));
    const stderrLines = entries.filter((entry) => entry.msg === "child stderr").map((entry) => entry.stderr as string);
    expect(stderrLines[0]).toBe("x".repeat(200) + " …[truncated]");
    const loggedBytes = stderrLines.reduce((sum, line) => sum + Buffer.byteLength(line), 0);
    expect(loggedBytes).toBeGreaterThanOrEqual(1000);
    expect(loggedBytes).toBeLessThan(1000 + 250);
    expect(entries.filter((entry) => entry.msg.includes("exceeded its log cap")).length).toBe(1);
    expect(exit.lastStderrLine).toBe("line 1999");
  });
});

describe("start-up check", () => {
  test("a command that does not resolve is reported clearly", () => {
    expect(checkChildCommand(["forgejo-mcp-not-installed", "--transport", "stdio"], { PATH: "/usr/bin:/bin" })).toBe(
      'BROKER_CHILD_COMMAND: "forgejo-mcp-not-installed" is not an executable file on PATH (/usr/bin:/bin)',
    );
    expect(checkChildCommand(["sh"], { PATH: process.env.PATH })).toBeNull();
  });

  test("spawning a command that does not resolve throws ChildStartError", () => {
    expect(() => spawn(["forgejo-mcp-not-installed"])).toThrow(ChildStartError);
  });
});

describe("in the sandbox", () => {
  let sandbox: SandboxPlan;
  beforeAll(async () => {
    sandbox = await probeSandbox({ kind: "bwrap", bind: [] }, [], { path: process.env.PATH ?? "" });
  });

  /** Starts a sandboxed shell script that says "ready"; returns the child and its PID namespace once it has. */
  async function spawnReady(script: string, overrides: Partial<ChildConfig> = {}) {
    const { child, logger } = spawn(["sh", "-c", script], { sandbox, overrides });
    const reader = child.stdout.getReader();
    await reader.read();
    const init = sandboxInitPid(child.pid);
    if (init === null) throw new Error("the sandbox has no init");
    const rest = async () => {
      let text = "";
      for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) text += new TextDecoder().decode(chunk.value);
      return text;
    };
    return { child, logger, namespace: readlinkSync(`/proc/${init}/ns/pid`), rest };
  }

  test("the environment is the same plus bwrap's PWD, and the token is on no command line", async () => {
    // It waits for a line, so that bwrap's command line is read while bwrap runs.
    const { child, rest } = await spawnReady("echo ready; read line; exec env");
    const bwrapCommandLine = readFileSync(`/proc/${child.pid}/cmdline`, "utf8");
    child.write("go\n");
    const text = await rest();
    expect(Object.fromEntries(text.trim().split("\n").map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]))).toEqual({
      PATH: process.env.PATH!,
      HOME: "/home/broker",
      FORGEJO_URL: "https://forgejo.test",
      FORGEJO_ACCESS_TOKEN: "gto_usertokenusertoken",
      // The sandbox starts the child in its root, not in the broker's directory, which it cannot see.
      PWD: "/",
    });
    expect(bwrapCommandLine).toContain("--unshare-pid");
    expect(bwrapCommandLine).not.toContain("gto_usertokenusertoken");
  });

  test("stop lets the server handle SIGTERM, and leaves nothing of the sandbox, setsid descendants included", async () => {
    const { child, namespace } = await spawnReady("trap 'echo stopping gracefully >&2; exit 0' TERM; setsid sleep 60 & sleep 60 & echo ready; wait");
    expect(liveInNamespace(namespace).length).toBe(4);
    const exit = await child.stop();
    expect(exit).toEqual({ code: 0, signal: null, lastStderrLine: "stopping gracefully" });
    await waitWhile(() => liveInNamespace(namespace).length > 0, 100, 10);
    expect(liveInNamespace(namespace)).toEqual([]);
  });

  test("a server that ignores SIGTERM and stdin is killed with all it started after the grace period", async () => {
    const { child, namespace } = await spawnReady("trap '' TERM; setsid sh -c 'trap \"\" TERM; sleep 60' & sleep 60 & echo ready; wait", { stopGraceMs: 300 });
    const began = performance.now();
    const exit = await child.stop();
    expect(performance.now() - began).toBeGreaterThanOrEqual(280);
    expect(exit.signal).toBe("SIGKILL");
    await waitWhile(() => liveInNamespace(namespace).length > 0, 100, 10);
    expect(liveInNamespace(namespace)).toEqual([]);
  });

  test("what a server leaves behind when it exits on its own ends with it", async () => {
    const { child, namespace } = await spawnReady("setsid sleep 60 & sleep 60 & echo ready; read line; exit 0");
    expect(liveInNamespace(namespace).length).toBe(4);
    child.write("go\n");
    await child.exited;
    await waitWhile(() => liveInNamespace(namespace).length > 0, 100, 10);
    expect(liveInNamespace(namespace)).toEqual([]);
  });

  test("a data directory inside a bound path is empty and read-only in the sandbox; the rest of the path is there", async () => {
    const app = mkdtempSync(join(tmpdir(), "fmb-bound-"));
    try {
      mkdirSync(join(app, "data"));
      writeFileSync(join(app, "data", "sealing.key"), "secret");
      writeFileSync(join(app, "child.js"), "code");
      const plan = { ...sandbox, bind: [app], hide: [join(app, "data")] };
      const { child } = spawn(["sh", "-c", `ls -A ${app}; ls -A ${app}/data; cat ${app}/data/sealing.key; touch ${app}/data/x || echo no-write`], { sandbox: plan });
      expect((await readAll(child.stdout)).split("\n")).toEqual(["child.js", "data", "no-write", ""]);
    } finally {
      rmSync(app, { recursive: true, force: true });
    }
  });

  test("killing bwrap from outside takes the whole sandbox with it", async () => {
    const { child, namespace } = await spawnReady("trap '' TERM; setsid sleep 60 & echo ready; wait");
    process.kill(child.pid, "SIGKILL");
    await child.exited;
    await waitWhile(() => liveInNamespace(namespace).length > 0, 100, 10);
    expect(liveInNamespace(namespace)).toEqual([]);
  });
});

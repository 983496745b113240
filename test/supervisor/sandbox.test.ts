// The bubblewrap argv as a table over hosts and plans (what is bound, hidden and unshared), and the
// start-up probe's decisions with a stand-in for running it.
import { describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { probeSandbox, sandboxArgv, sandboxInitPid, SandboxUnavailableError, type HostPaths, type SandboxPlan } from "../../src/supervisor/sandbox.ts";
import { rejection } from "../helpers/promises.ts";

/** A host described by its paths: a string is a symlink's target, "dir" and "file" are what they say. */
function host(paths: Record<string, string>): HostPaths {
  return {
    kind: (path) => (paths[path] === undefined ? null : paths[path] === "dir" || paths[path] === "file" ? (paths[path] as "dir" | "file") : "symlink"),
    readlink: (path) => paths[path]!,
    realpath: (path) => (paths[path] === undefined || paths[path] === "dir" || paths[path] === "file" ? path : paths[path]!.startsWith("/") ? paths[path]! : `/${paths[path]}`),
  };
}

const MERGED_USR = host({ "/usr": "dir", "/bin": "usr/bin", "/lib": "usr/lib", "/lib64": "usr/lib64", "/sbin": "usr/sbin", "/etc": "dir", "/usr/bin/forgejo-mcp": "file" });
const WITH_DATA = host({ "/usr": "dir", "/etc": "dir", "/srv/app/data": "dir", "/srv/data": "dir", "/srv/app/client_secret": "file" });
const plan = (overrides: Partial<Extract<SandboxPlan, { kind: "bwrap" }>> = {}): SandboxPlan => ({
  kind: "bwrap",
  bwrap: "/usr/bin/bwrap",
  userNamespace: true,
  bind: [],
  hide: ["/var/lib/forgejo-mcp-broker"],
  ...overrides,
});

/** The options of an argv as pairs and triples, so that a row can say "this bind is there" without the whole argv. */
function has(argv: string[], ...option: string[]): boolean {
  return argv.some((_, i) => option.every((word, j) => argv[i + j] === word));
}

describe("sandboxArgv", () => {
  test("none runs the program as it is", () => {
    expect(sandboxArgv({ kind: "none" }, "/usr/bin/forgejo-mcp", ["--transport", "stdio"], MERGED_USR)).toEqual(["/usr/bin/forgejo-mcp", "--transport", "stdio"]);
  });

  test("a merged-/usr host: namespaces, system read-only, symlinks as symlinks, fresh /proc, /dev and /tmp, then the program", () => {
    expect(sandboxArgv(plan(), "/usr/bin/forgejo-mcp", ["--transport", "stdio"], MERGED_USR)).toEqual([
      "/usr/bin/bwrap",
      "--unshare-pid", "--unshare-ipc",
      "--unshare-user", "--uid", "65534", "--gid", "65534",
      "--die-with-parent", "--new-session", "--cap-drop", "ALL",
      "--ro-bind", "/usr", "/usr",
      "--symlink", "usr/bin", "/bin",
      "--symlink", "usr/sbin", "/sbin",
      "--symlink", "usr/lib", "/lib",
      "--symlink", "usr/lib64", "/lib64",
      "--ro-bind", "/etc", "/etc",
      "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
      "--remount-ro", "/",
      "--chdir", "/",
      "--", "/usr/bin/forgejo-mcp", "--transport", "stdio",
    ]);
  });

  const rows: [string, HostPaths, SandboxPlan, string, (argv: string[]) => boolean][] = [
    ["no user namespace: no --unshare-user", MERGED_USR, plan({ userNamespace: false }), "/usr/bin/forgejo-mcp", (argv) => !argv.includes("--unshare-user") && !argv.includes("--uid")],
    ["the broker's config directory in /etc is an empty read-only tmpfs", host({ "/etc": "dir", "/etc/forgejo-mcp-broker": "dir" }), plan(), "/usr/bin/x",
      (argv) => has(argv, "--tmpfs", "/etc/forgejo-mcp-broker", "--remount-ro", "/etc/forgejo-mcp-broker")],
    ["/etc/shadow is /dev/null", host({ "/etc": "dir", "/etc/shadow": "file" }), plan(), "/usr/bin/x", (argv) => has(argv, "--ro-bind", "/dev/null", "/etc/shadow")],
    ["hidden paths that do not exist are not mentioned", host({ "/etc": "dir" }), plan(), "/usr/bin/x", (argv) => !argv.some((word) => word.startsWith("/etc/"))],
    ["resolv.conf linked into /run: its target is bound", host({ "/etc": "dir", "/etc/resolv.conf": "/run/systemd/resolve/stub-resolv.conf", "/run/systemd/resolve/stub-resolv.conf": "file" }), plan(), "/usr/bin/x",
      (argv) => has(argv, "--ro-bind", "/run/systemd/resolve/stub-resolv.conf", "/run/systemd/resolve/stub-resolv.conf")],
    ["a program outside the system dirs is bound, by its real path", host({ "/usr": "dir", "/opt/mcp/bin/server": "/opt/mcp/releases/1.2/server", "/opt/mcp/releases/1.2/server": "file" }), plan(), "/opt/mcp/bin/server",
      (argv) => has(argv, "--ro-bind", "/opt/mcp/releases/1.2/server", "/opt/mcp/releases/1.2/server") && argv.at(-1) === "/opt/mcp/releases/1.2/server"],
    ["a program under /usr is not bound twice", MERGED_USR, plan(), "/usr/bin/forgejo-mcp", (argv) => argv.filter((word) => word === "--ro-bind").length === 2],
    ["BROKER_CHILD_SANDBOX_BIND paths are bound read-only", MERGED_USR, plan({ bind: ["/opt/node", "/srv/app"] }), "/usr/bin/x",
      (argv) => has(argv, "--ro-bind", "/opt/node", "/opt/node") && has(argv, "--ro-bind", "/srv/app", "/srv/app")],
    ["a program inside a bound path is not bound again", MERGED_USR, plan({ bind: ["/opt/node"] }), "/opt/node/bin/node", (argv) => !has(argv, "--ro-bind", "/opt/node/bin/node")],
    ["the data dir under a bound path gets an empty read-only tmpfs over it, after the bind", WITH_DATA, plan({ bind: ["/srv/app"], hide: ["/srv/app/data"] }), "/usr/bin/x",
      (argv) => has(argv, "--tmpfs", "/srv/app/data", "--remount-ro", "/srv/app/data") && argv.indexOf("/srv/app/data") > argv.indexOf("/srv/app")],
    ["a secret file under a bound path is covered by /dev/null, after the bind", WITH_DATA, plan({ bind: ["/srv/app"], hide: ["/srv/app/client_secret"] }), "/usr/bin/x",
      (argv) => has(argv, "--ro-bind", "/dev/null", "/srv/app/client_secret") && argv.indexOf("/srv/app/client_secret") > argv.indexOf("/srv/app")],
    ["the data dir bound itself is hidden all the same", WITH_DATA, plan({ bind: ["/srv/data"], hide: ["/srv/data"] }), "/usr/bin/x", (argv) => has(argv, "--tmpfs", "/srv/data", "--remount-ro", "/srv/data")],
    ["a data dir that does not exist yet is left alone (nothing to hide, and no mount point in a read-only bind)", MERGED_USR, plan({ bind: ["/srv/app"], hide: ["/srv/app/data"] }), "/usr/bin/x",
      (argv) => !argv.includes("/srv/app/data")],
    ["the data dir under /var (not bound) is not mentioned", MERGED_USR, plan(), "/usr/bin/x", (argv) => !argv.includes("/var/lib/forgejo-mcp-broker")],
    ["a sibling with a common prefix is not inside", MERGED_USR, plan({ bind: ["/srv/app"], hide: ["/srv/app-data"] }), "/usr/bin/x", (argv) => !argv.includes("/srv/app-data")],
  ];
  test.each(rows)("%s", (_, hostPaths, thePlan, program, check) => {
    expect(check(sandboxArgv(thePlan, program, [], hostPaths))).toBe(true);
  });
});

describe("probeSandbox", () => {
  const config = { kind: "bwrap" as const, bind: [] };
  const PATH = "/usr/bin:/bin";

  test("none is not probed", async () => {
    expect(await probeSandbox({ kind: "none", bind: [] }, [], { path: PATH, run: () => Promise.reject(new Error("ran")) })).toEqual({ kind: "none" });
  });

  test("a user namespace is used where it works", async () => {
    const runs: string[][] = [];
    const result = await probeSandbox(config, ["/data"], { path: PATH, run: async (argv) => (runs.push(argv), { exitCode: 0, stderr: "" }) });
    expect(result).toMatchObject({ kind: "bwrap", userNamespace: true, hide: ["/data"] });
    expect(runs).toHaveLength(1);
  });

  test("without user namespaces the sandbox runs as it can", async () => {
    const run = async (argv: string[]) =>
      argv.includes("--unshare-user") ? { exitCode: 1, stderr: "bwrap: No permissions to creating new namespace" } : { exitCode: 0, stderr: "" };
    expect(await probeSandbox(config, [], { path: PATH, run })).toMatchObject({ kind: "bwrap", userNamespace: false });
  });

  test("a sandbox that cannot start is one line saying what bwrap said and what to do", async () => {
    const error = await rejection(probeSandbox(config, [], { path: PATH, run: async () => ({ exitCode: 1, stderr: "bwrap: setting up uid map: Permission denied\n" }) }));
    expect(error).toBeInstanceOf(SandboxUnavailableError);
    expect(error.message).toMatch(/^BROKER_CHILD_SANDBOX=bwrap: \S+bwrap cannot start a sandbox here \(bwrap: setting up uid map: Permission denied\): install bubblewrap \(apt-get install bubblewrap\) or choose BROKER_CHILD_SANDBOX=none/);
  });

  test("no bwrap on PATH says how to install it", async () => {
    const error = await rejection(probeSandbox(config, [], { path: "/nonexistent" }));
    expect(error.message).toBe(
      "BROKER_CHILD_SANDBOX=bwrap: bwrap is not on PATH (/nonexistent): install bubblewrap (apt-get install bubblewrap) or choose BROKER_CHILD_SANDBOX=none to run children unsandboxed",
    );
  });

  test("on this host the real probe succeeds", async () => {
    expect(await probeSandbox(config, [], { path: process.env.PATH ?? "" })).toMatchObject({ kind: "bwrap" });
  });
});

describe("sandboxInitPid", () => {
  /** A /proc with these processes: pid → [comm, ppid]. */
  function fakeProc(processes: Record<number, [string, number]>): string {
    const root = mkdtempSync(join(tmpdir(), "fmb-proc-"));
    for (const [pid, [comm, ppid]] of Object.entries(processes)) {
      mkdirSync(join(root, pid));
      writeFileSync(join(root, pid, "stat"), `${pid} (${comm}) S ${ppid} ${pid} ${pid} 0 -1 4194560`);
    }
    mkdirSync(join(root, "self"));
    return root;
  }

  const rows: [string, Record<number, [string, number]>, number | null][] = [
    ["the next pid", { 500: ["bwrap", 400], 501: ["bwrap", 500], 502: ["sh", 501] }, 501],
    ["far from bwrap's pid (pids wrapped around)", { 500: ["bwrap", 400], 37: ["bwrap", 500], 38: ["sh", 37] }, 37],
    ["a comm with spaces and parentheses", { 500: ["bwrap", 400], 503: ["a) S 500 (b", 1], 504: ["bwrap", 500] }, 504],
    ["gone", { 500: ["bwrap", 400] }, null],
  ];
  test.each(rows)("%s", (_, processes, expected) => {
    const root = fakeProc(processes);
    try {
      expect(sandboxInitPid(500, root)).toBe(expected);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

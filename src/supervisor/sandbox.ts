// How a child command is wrapped: the bubblewrap argv that gives each child its own PID, IPC and mount
// namespaces with a read-only view of the system only, and the start-up probe that checks it works here.
import { lstatSync, readdirSync, readFileSync, readlinkSync, realpathSync } from "node:fs";
import { isAbsolute, relative, resolve } from "node:path";

export type SandboxKind = "bwrap" | "none";

export interface SandboxConfig {
  kind: SandboxKind;
  /** Absolute paths bound read-only into every child's sandbox, besides the system and the program. */
  bind: string[];
}

/** How children are wrapped on this host, once the probe has run. */
export type SandboxPlan =
  | { kind: "none" }
  | {
      kind: "bwrap";
      /** The resolved bwrap binary. */
      bwrap: string;
      /** Whether the child can run as uid 65534 in a user namespace of its own. */
      userNamespace: boolean;
      bind: string[];
      /** Paths that must stay out of sight even where they lie under a bound path: the data directory, secret files. */
      hide: string[];
    };

/** What the argv builder needs to know about the host's file system. */
export interface HostPaths {
  /** The path's type without following a last symlink, or null when nothing is there. */
  kind(path: string): "dir" | "file" | "symlink" | null;
  readlink(path: string): string;
  realpath(path: string): string;
}

export const realHostPaths: HostPaths = {
  kind(path) {
    try {
      const stat = lstatSync(path);
      return stat.isSymbolicLink() ? "symlink" : stat.isDirectory() ? "dir" : "file";
    } catch {
      return null;
    }
  },
  readlink: (path) => readlinkSync(path),
  realpath(path) {
    try {
      return realpathSync(path);
    } catch {
      return path;
    }
  },
};

/** The system a program needs to run; on a merged-/usr host most of these are symlinks into /usr. */
const SYSTEM_PATHS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc"];

/**
 * What /etc holds that no child may read: the broker's own configuration, systemd's credential stores,
 * password hashes and the host's SSH keys (a child in a user namespace of root's is the owner of root's files).
 */
export const HIDDEN_SYSTEM_PATHS = [
  "/etc/forgejo-mcp-broker",
  "/etc/credstore",
  "/etc/credstore.encrypted",
  "/etc/shadow",
  "/etc/gshadow",
  "/etc/ssh",
];

/** Files in /etc that are often symlinks into /run, which is not bound: their targets are. */
const FOLLOWED_SYSTEM_LINKS = ["/etc/resolv.conf"];

/** The argv that runs `program args` in the sandbox; `program` is already resolved on PATH. */
export function sandboxArgv(plan: SandboxPlan, program: string, args: string[], host: HostPaths = realHostPaths): string[] {
  if (plan.kind === "none") return [program, ...args];
  const argv = [plan.bwrap, "--unshare-pid", "--unshare-ipc"];
  if (plan.userNamespace) argv.push("--unshare-user", "--uid", "65534", "--gid", "65534");
  // --new-session: the child cannot push input into the broker's terminal (TIOCSTI), and the sandbox's init
  // leads a process group of its own that a stop can signal without signalling bwrap itself.
  argv.push("--die-with-parent", "--new-session", "--cap-drop", "ALL");

  const bound: string[] = [];
  const bindReadOnly = (path: string) => {
    argv.push("--ro-bind", path, path);
    bound.push(path);
  };
  for (const path of SYSTEM_PATHS) {
    const kind = host.kind(path);
    if (kind === "symlink") argv.push("--symlink", host.readlink(path), path);
    else if (kind !== null) bindReadOnly(path);
  }
  for (const path of FOLLOWED_SYSTEM_LINKS) {
    if (host.kind(path) !== "symlink") continue;
    const target = host.realpath(path);
    if (!bound.some((root) => isWithin(target, root)) && host.kind(target) === "file") bindReadOnly(target);
  }
  for (const path of HIDDEN_SYSTEM_PATHS) {
    const kind = host.kind(path);
    if (kind === "dir") argv.push("--tmpfs", path, "--remount-ro", path);
    else if (kind !== null) argv.push("--ro-bind", "/dev/null", path);
  }
  argv.push("--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp");

  const realProgram = host.realpath(program);
  for (const path of [...plan.bind.map((path) => host.realpath(path)), realProgram]) {
    if (!bound.some((root) => isWithin(path, root))) bindReadOnly(path);
  }
  // A bind of a parent (the repository, /usr) must not carry the data directory or a secret file in with
  // it: an empty, read-only tmpfs goes over a directory and /dev/null over a file. Under /tmp they are
  // already out of sight; before one exists there is nothing to hide.
  for (const path of plan.hide.map((path) => host.realpath(resolve(path)))) {
    if (!bound.some((root) => isWithin(path, root))) continue;
    const kind = host.kind(path);
    if (kind === "dir") argv.push("--tmpfs", path, "--remount-ro", path);
    else if (kind !== null) argv.push("--ro-bind", "/dev/null", path);
  }
  // The sandbox's own root is a tmpfs: read-only too, so that /tmp is the one place a child can write.
  argv.push("--remount-ro", "/", "--chdir", "/", "--", realProgram, ...args);
  return argv;
}

function isWithin(path: string, root: string): boolean {
  const rel = relative(root, path);
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
}

/** Runs a probe's argv to its end: how it exited and what it said on stderr. */
export type RunProbe = (argv: string[]) => Promise<{ exitCode: number; stderr: string }>;

export const runProbe: RunProbe = async (argv) => {
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "ignore", stderr: "pipe", env: { PATH: "/usr/bin:/bin" } });
  const stderr = await new Response(proc.stderr).text();
  return { exitCode: await proc.exited, stderr };
};

export class SandboxUnavailableError extends Error {
  override readonly name = "SandboxUnavailableError";
}

/**
 * Checks once that children can be sandboxed here, by running `true` through the same argv builder, first
 * with a user namespace and then without; throws SandboxUnavailableError with one line saying what to do.
 */
export async function probeSandbox(
  config: SandboxConfig,
  hide: string[],
  deps: { path: string; run?: RunProbe; host?: HostPaths },
): Promise<SandboxPlan> {
  if (config.kind === "none") return { kind: "none" };
  const advice = "install bubblewrap (apt-get install bubblewrap) or choose BROKER_CHILD_SANDBOX=none to run children unsandboxed";
  const bwrap = Bun.which("bwrap", { PATH: deps.path });
  if (bwrap === null) throw new SandboxUnavailableError(`BROKER_CHILD_SANDBOX=bwrap: bwrap is not on PATH (${deps.path}): ${advice}`);
  const probe = Bun.which("true", { PATH: "/usr/bin:/bin" }) ?? "/bin/true";
  const run = deps.run ?? runProbe;
  let said = "";
  for (const userNamespace of [true, false]) {
    const plan: SandboxPlan = { kind: "bwrap", bwrap, userNamespace, bind: config.bind, hide };
    const result = await run(sandboxArgv(plan, probe, [], deps.host));
    if (result.exitCode === 0) return plan;
    said = result.stderr.trim().split("\n").pop() ?? "";
  }
  throw new SandboxUnavailableError(`BROKER_CHILD_SANDBOX=bwrap: ${bwrap} cannot start a sandbox here (${said || "no message"}): ${advice}`);
}

/**
 * The host pid of the sandbox's init, bwrap's one child, or null once it is gone. It leads the process group
 * of the server it runs (--new-session); bwrap, whose death kills the sandbox at once, is not in it.
 */
export function sandboxInitPid(bwrapPid: number, procRoot = "/proc"): number | null {
  const parentOf = (pid: string): number | null => {
    let stat: string;
    try {
      stat = readFileSync(`${procRoot}/${pid}/stat`, "utf8");
    } catch {
      return null;
    }
    // "pid (comm) state ppid …": comm may hold spaces and parentheses, so fields count from the last ")".
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  };
  // bwrap forks its init as it starts, so the pids just after its own are nearly always the answer; the
  // whole table (thousands of entries beside a thousand sessions) is read only when they are not.
  const near = Array.from({ length: 16 }, (_, i) => String(bwrapPid + 1 + i));
  for (const pid of [...near, ...readdirSync(procRoot).filter((entry) => /^\d+$/.test(entry))]) {
    if (parentOf(pid) === bwrapPid) return Number(pid);
  }
  return null;
}

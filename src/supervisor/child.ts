// One child MCP server process: spawned without a shell, in its sandbox and its own process group, with a
// minimal environment, stderr drained to the log, and stopped by signalling the whole group.
import type { ChildConfig } from "../config.ts";
import { maskSecrets, type Logger } from "../log.ts";
import { sandboxArgv, sandboxInitPid, type SandboxPlan } from "./sandbox.ts";
import { drainStderr } from "./stderr.ts";
import { realTimers, type Timers } from "./timers.ts";

export interface ChildExit {
  code: number | null;
  signal: string | null;
  /** Masked; what the child said last before it went, for error messages to the client. */
  lastStderrLine: string | null;
}

export interface ChildProcess {
  /** The process the broker started: bwrap's when the child is sandboxed, the server's otherwise. */
  readonly pid: number;
  /** Newline-delimited JSON-RPC from the child. */
  readonly stdout: ReadableStream<Uint8Array>;
  /** Writes to the child's stdin; false when stdin is already closed or the child is gone. */
  write(data: string): boolean;
  /** Bytes written that the child's stdin pipe has not taken yet: they wait in the broker's memory. */
  readonly stdinBacklog: number;
  /** Settles once the child has exited and its stderr is drained; never rejects. */
  readonly exited: Promise<ChildExit>;
  lastStderrLine(): string | null;
  /** Close stdin, SIGTERM the server's group, SIGKILL everything after the grace period; settles like `exited`. */
  stop(): Promise<ChildExit>;
}

export interface ChildSpec {
  sessionId: string;
  /** The user's upstream Forgejo token, handed to the child in its environment only. */
  token: string;
}

/** Starts a child or throws ChildStartError; the seam that lets tests use in-memory children. */
export type SpawnChild = (spec: ChildSpec) => ChildProcess;

export class ChildStartError extends Error {
  override readonly name = "ChildStartError";
  constructor(
    message: string,
    readonly lastStderrLine: string | null = null,
  ) {
    super(message);
  }
}

type Env = Record<string, string | undefined>;

export interface SpawnChildDeps {
  config: ChildConfig;
  /** How the child is wrapped, as the start-up probe found it works on this host. */
  sandbox: SandboxPlan;
  forgejoUrl: string;
  /** The broker's own environment: only PATH and the passthrough names are read from it. */
  env: Env;
  logger: Logger;
  timers?: Timers;
  maxStderrLineChars?: number;
  maxStderrBytes?: number;
  /** How long `exited` waits for stderr to reach end of file after the child has gone. */
  stderrSettleMs?: number;
}

/** Exactly PATH, the URL and token variables, and the passthrough variables that are set. */
export function childEnvironment(config: ChildConfig, forgejoUrl: string, token: string, env: Env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of config.passthroughEnv) {
    const value = env[name];
    if (value !== undefined) out[name] = value;
  }
  out.PATH = env.PATH ?? "/usr/local/bin:/usr/bin:/bin";
  out[config.urlEnv] = forgejoUrl;
  out[config.tokenEnv] = token;
  return out;
}

/** A start-up problem line when the child command does not resolve on PATH, else null. */
export function checkChildCommand(command: string[], env: Env): string | null {
  const program = command[0];
  if (program === undefined || program === "") return "BROKER_CHILD_COMMAND: is empty";
  if (Bun.which(program, { PATH: env.PATH ?? "" }) !== null) return null;
  return `BROKER_CHILD_COMMAND: ${JSON.stringify(program)} is not an executable file${program.includes("/") ? "" : ` on PATH (${env.PATH ?? "unset"})`}`;
}

/** Bun's sink calls are typed as numbers but return a promise once the pipe is full, which rejects (EPIPE) if the child dies first. */
function settleQuietly(result: unknown): void {
  if (result instanceof Promise) result.catch(() => {});
}

export function createSpawnChild(deps: SpawnChildDeps): SpawnChild {
  const timers = deps.timers ?? realTimers;
  return ({ sessionId, token }) => {
    const logger = deps.logger.child({ session: sessionId });
    const [program, ...args] = deps.config.command;
    const resolved = program === undefined ? null : Bun.which(program, { PATH: deps.env.PATH ?? "" });
    if (resolved === null) {
      throw new ChildStartError(`cannot start the MCP server: ${JSON.stringify(program ?? "")} was not found`);
    }
    // A token shaped unlike the ones maskSecrets knows must still never reach the log.
    const mask = (line: string) => maskSecrets(token.length >= 4 ? line.split(token).join("***") : line);

    let proc: Bun.Subprocess<"pipe", "pipe", "pipe">;
    try {
      // The token goes in the environment bwrap hands to the child, never on bwrap's command line, which
      // /proc/<pid>/cmdline shows to anyone.
      proc = Bun.spawn(sandboxArgv(deps.sandbox, resolved, args), {
        env: childEnvironment(deps.config, deps.forgejoUrl, token, deps.env),
        stdin: "pipe",
        stdout: "pipe",
        stderr: "pipe",
        // setsid(): the child leads a new process group, so one signal reaches everything it started.
        detached: true,
      });
    } catch (error) {
      throw new ChildStartError(`cannot start the MCP server: ${mask(error instanceof Error ? error.message : String(error))}`);
    }
    const pid = proc.pid;
    logger.info("child started", { pid, command: program });

    const stderr = drainStderr(proc.stderr, {
      logger,
      mask,
      maxLineChars: deps.maxStderrLineChars ?? 4096,
      maxTotalBytes: deps.maxStderrBytes ?? 1024 * 1024,
    });

    const signalGroup = (signal: NodeJS.Signals, leader = pid) => {
      try {
        process.kill(-leader, signal);
      } catch {
        // ESRCH: the group is already empty.
      }
    };
    // SIGTERM kills bwrap, and bwrap's death kills the whole sandbox at once: a graceful stop signals the group
    // of the sandbox's init instead (its init ignores SIGTERM; the server in it gets it). SIGKILL to that init
    // ends every process in the sandbox, setsid descendants included.
    let initPid: number | null = null;
    const sandboxInit = () => {
      if (deps.sandbox.kind === "bwrap" && initPid === null) initPid = sandboxInitPid(pid);
      return initPid;
    };
    const terminate = () => signalGroup("SIGTERM", sandboxInit() ?? pid);
    const kill = () => {
      const init = sandboxInit();
      if (init !== null) signalGroup("SIGKILL", init);
      signalGroup("SIGKILL");
    };

    let stdinOpen = true;
    const closeStdin = () => {
      if (!stdinOpen) return;
      stdinOpen = false;
      try {
        settleQuietly(proc.stdin.end());
      } catch {
        // Already closed by the child's exit.
      }
    };

    // Bun's stdin sink keeps whatever the pipe does not take, without limit, and settles a flush once
    // it has all gone; counting both ends tells how much still waits.
    let handedOver = 0;
    let drained = 0;

    let killTimer: unknown = null;
    let gone = false;
    const exited = proc.exited.then(async (code): Promise<ChildExit> => {
      gone = true;
      stdinOpen = false;
      if (killTimer !== null) timers.clearTimeout(killTimer);
      // Whatever the leader left behind in its group goes with it: no child outlives its session.
      signalGroup("SIGKILL");
      await Promise.race([
        stderr.done,
        new Promise<void>((resolve) => timers.setTimeout(resolve, deps.stderrSettleMs ?? 500)),
      ]);
      const signal = proc.signalCode === null ? null : String(proc.signalCode);
      const exit = { code: signal === null ? code : null, signal, lastStderrLine: stderr.lastLine() };
      logger.info("child exited", { pid, exit_code: exit.code, signal: exit.signal });
      return exit;
    });

    let stopping: Promise<ChildExit> | null = null;
    return {
      pid,
      stdout: proc.stdout,
      exited,
      lastStderrLine: stderr.lastLine,
      write(data) {
        if (!stdinOpen || proc.exitCode !== null || proc.signalCode !== null) return false;
        try {
          settleQuietly(proc.stdin.write(data));
          handedOver += Buffer.byteLength(data);
          const upTo = handedOver;
          const flushed = proc.stdin.flush();
          if (flushed instanceof Promise) {
            flushed.then(
              () => void (drained = Math.max(drained, upTo)),
              // The child is gone (EPIPE) and the sink with it: nothing waits any more.
              () => void (drained = handedOver),
            );
          } else {
            drained = upTo;
          }
          return true;
        } catch {
          return false;
        }
      },
      get stdinBacklog() {
        return handedOver - drained;
      },
      stop() {
        if (stopping !== null) return stopping;
        stopping = exited;
        closeStdin();
        if (gone) return exited;
        terminate();
        killTimer = timers.setTimeout(kill, deps.config.stopGraceMs);
        return stopping;
      },
    };
  };
}

// `bun run admin -- <command>`: the operator's command against the broker running on this host, reached through
// the Unix socket in its BROKER_DATA_DIR. Prints a table or a sentence (JSON with --json); the exit code says what happened.
import { dataDirFrom } from "../config.ts";
import { realTimers, type Timers } from "../supervisor/timers.ts";
import { parseAdminArgs, USAGE, type AdminCommand } from "./args.ts";
import { AdminClient, AdminRefusedError, BrokerNotRunningError } from "./client.ts";
import { clientsTable, deleteClientSentence, drainLine, revokeSentence, sessionsTable } from "./format.ts";
import { adminSocketPath, ExitCode } from "./protocol.ts";

export interface AdminIO {
  env: Record<string, string | undefined>;
  out(line: string): void;
  err(line: string): void;
  timers: Timers;
}

export async function runAdmin(argv: string[], io: AdminIO): Promise<ExitCode> {
  const parsed = parseAdminArgs(argv);
  if (!parsed.ok) {
    io.err(`admin: ${parsed.problem}`);
    io.err(USAGE);
    return ExitCode.usage;
  }
  if (parsed.command.kind === "help") {
    io.out(USAGE);
    return ExitCode.ok;
  }
  const client = new AdminClient(adminSocketPath(dataDirFrom(io.env)));
  try {
    return await run(parsed.command, client, io);
  } catch (error) {
    if (error instanceof BrokerNotRunningError) {
      io.err(`admin: ${error.message}; is the broker running, with this BROKER_DATA_DIR, and are you its user?`);
      return ExitCode.brokerNotRunning;
    }
    if (error instanceof AdminRefusedError) {
      io.err(`admin: ${error.message}`);
      return error.status === 404 ? ExitCode.notFound : error.status === 400 ? ExitCode.usage : ExitCode.brokerError;
    }
    throw error;
  }
}

async function run(command: Exclude<AdminCommand, { kind: "help" }>, client: AdminClient, io: AdminIO): Promise<ExitCode> {
  const print = (answer: unknown, text: string) => io.out(command.json ? JSON.stringify(answer) : text);
  switch (command.kind) {
    case "sessions": {
      const answer = await client.sessions(command.user);
      print(answer, sessionsTable(answer.sessions));
      if (!answer.partial) return ExitCode.ok;
      io.err(`admin: ${answer.warning}; this replica's own are listed`);
      return ExitCode.partial;
    }
    case "revoke": {
      const answer = await client.revoke(command.target);
      print(answer, revokeSentence(answer));
      return ExitCode.ok;
    }
    case "clients": {
      const answer = await client.clients();
      print(answer, clientsTable(answer.clients));
      return ExitCode.ok;
    }
    case "delete-client": {
      const answer = await client.deleteClient(command.clientId);
      print(answer, deleteClientSentence(answer));
      return ExitCode.ok;
    }
    case "drain":
      return drain(client, command.timeoutS, command.json, io);
  }
}

/** Follows the drain until no child is left, or until the timeout (the broker drains on either way). */
async function drain(client: AdminClient, timeoutS: number | undefined, json: boolean, io: AdminIO): Promise<ExitCode> {
  const abort = new AbortController();
  const timer = timeoutS === undefined ? null : io.timers.setTimeout(() => abort.abort(), timeoutS * 1000);
  let left: number | null = null;
  try {
    for await (const progress of client.drain(abort.signal)) {
      left = progress.children;
      io.out(json ? JSON.stringify(progress) : drainLine(progress));
      if (progress.done) return ExitCode.ok;
    }
    io.err("admin: the broker hung up before its children were gone");
    return ExitCode.brokerError;
  } catch (error) {
    if (!abort.signal.aborted) {
      io.err(`admin: the broker hung up before its children were gone (${error instanceof Error ? error.message : String(error)})`);
      return ExitCode.brokerError;
    }
    io.err(`admin: after ${timeoutS} s, children left: ${left ?? "unknown"}; the broker goes on draining`);
    return ExitCode.drainTimedOut;
  } finally {
    if (timer !== null) io.timers.clearTimeout(timer);
  }
}

if (import.meta.main) {
  const code = await runAdmin(process.argv.slice(2), {
    env: process.env,
    out: (line) => console.log(line),
    err: (line) => console.error(line),
    timers: realTimers,
  });
  process.exit(code);
}

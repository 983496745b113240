// The admin command's command line, as a pure function from arguments to one typed command or a usage problem.
import type { RevokeTarget } from "./protocol.ts";

export type AdminCommand =
  | { kind: "help" }
  | { kind: "sessions"; user?: string; json: boolean }
  | { kind: "revoke"; target: RevokeTarget; json: boolean }
  | { kind: "clients"; json: boolean }
  | { kind: "delete-client"; clientId: string; json: boolean }
  | { kind: "drain"; timeoutS?: number; json: boolean };

export type ParsedArgs = { ok: true; command: AdminCommand } | { ok: false; problem: string };

export const USAGE = `usage: bun run admin -- <command> [--json]

  sessions [--user LOGIN]                      live legacy sessions and principal children
  revoke (--user LOGIN | --client ID | --grant ID)
                                               revoke the grants, ending their sessions and children
  clients [--delete ID]                        registered clients; --delete revokes its grants, then removes it
  drain [--timeout SECONDS]                    start no new session or modern call here; wait until the children are gone

exit codes: 0 ok, 1 nothing matched, 2 usage, 3 broker not running, 4 drain timed out, 5 broker error,
            6 sessions listed this replica's only (Redis unreachable)`;

/** Options each command takes, and whether they carry a value. */
const OPTIONS: Record<Exclude<AdminCommand["kind"], "help" | "delete-client">, Record<string, boolean>> = {
  sessions: { "--user": true, "--json": false },
  revoke: { "--user": true, "--client": true, "--grant": true, "--json": false },
  clients: { "--delete": true, "--json": false },
  drain: { "--timeout": true, "--json": false },
};

export function parseAdminArgs(argv: string[]): ParsedArgs {
  const [name, ...rest] = argv;
  if (name === undefined || name === "help" || name === "--help" || name === "-h") return { ok: true, command: { kind: "help" } };
  if (!(name in OPTIONS)) return { ok: false, problem: `unknown command ${JSON.stringify(name)}` };
  const allowed = OPTIONS[name as keyof typeof OPTIONS];
  const given = new Map<string, string>();
  for (let i = 0; i < rest.length; i++) {
    const option = rest[i]!;
    if (!(option in allowed)) return { ok: false, problem: `${name} takes no ${JSON.stringify(option)}` };
    if (given.has(option)) return { ok: false, problem: `${option} given twice` };
    if (!allowed[option]) {
      given.set(option, "");
      continue;
    }
    const value = rest[++i];
    if (value === undefined || value === "" || value.startsWith("--")) return { ok: false, problem: `${option} needs a value` };
    given.set(option, value);
  }
  const json = given.has("--json");
  switch (name) {
    case "sessions":
      return { ok: true, command: { kind: "sessions", user: given.get("--user"), json } };
    case "clients": {
      const clientId = given.get("--delete");
      return { ok: true, command: clientId === undefined ? { kind: "clients", json } : { kind: "delete-client", clientId, json } };
    }
    case "revoke": {
      const targets = (["user", "client", "grant"] as const).filter((key) => given.has(`--${key}`));
      if (targets.length !== 1) return { ok: false, problem: "revoke takes exactly one of --user, --client, --grant" };
      const key = targets[0]!;
      return { ok: true, command: { kind: "revoke", target: { [key]: given.get(`--${key}`)! } as RevokeTarget, json } };
    }
    default: {
      const raw = given.get("--timeout");
      if (raw === undefined) return { ok: true, command: { kind: "drain", json } };
      const timeoutS = Number(raw);
      if (!/^\d+$/.test(raw) || timeoutS < 1) return { ok: false, problem: "--timeout is a whole number of seconds, at least 1" };
      return { ok: true, command: { kind: "drain", timeoutS, json } };
    }
  }
}

// What the admin command and the running broker say to each other over the broker's Unix socket: the
// socket's place, each request's path and body, each answer's shape, and the command's exit codes.
import { join } from "node:path";
import type { ChildEra } from "../modern/child-era.ts";
import type { ClientSummary } from "../store/admin-queries.ts";

export type { ClientSummary } from "../store/admin-queries.ts";

/** The socket's name in BROKER_DATA_DIR (a directory only the broker's user may enter). */
export const ADMIN_SOCKET_NAME = "admin.sock";

export function adminSocketPath(dataDir: string): string {
  return join(dataDir, ADMIN_SOCKET_NAME);
}

/** A legacy session, or a principal's (grant's) child serving modern callers. */
export interface SessionRow {
  era: "legacy" | "modern";
  /** The Mcp-Session-Id (legacy) or the grant id (modern: one child per grant). */
  id: string;
  user: string;
  forgejoUserId: number;
  clientId: string;
  clientName: string;
  grantId: string;
  /** A principal child's only: the era the child itself speaks (a 2025 one is initialized once by the broker). */
  childEra?: ChildEra;
  /** Null for another replica's session whose directory entry does not say when it started. */
  ageS: number | null;
  /**
   * Null for another replica's legacy session: only its owner knows. Another replica's principal child: as of
   * its owner's last refresh of the principal directory (at most the liveness refresh interval, 5 s, old).
   */
  idleS: number | null;
  /** Which broker runs the child: this one's name, or another replica's URL (from the Redis directories). */
  replica: string;
  /** Null (as is rssBytes) for another replica's legacy session. */
  pid: number | null;
  /** Of the child and everything it started (the sandbox and the MCP server); null when /proc cannot say. Another replica's principal child: as of the last refresh. */
  rssBytes: number | null;
  /** "retiring": a principal's child that ends its calls and exits (its user's token was refreshed, or it was stopped). */
  state: "serving" | "retiring";
}

export interface SessionsAnswer {
  sessions: SessionRow[];
  /** True when Redis did not answer: only this replica's own sessions and children are listed (exit code 6). */
  partial: boolean;
  /** Why the listing is partial, as the command prints it on stderr. */
  warning?: string;
}

/** Exactly one of them: a Forgejo login, a client id or a grant id. */
export type RevokeTarget = { user: string } | { client: string } | { grant: string };

export interface RevokeAnswer {
  revokedGrants: string[];
  /** Live legacy sessions and principal children of those grants, ended by the revocation. */
  endedSessions: number;
}

export interface ClientsAnswer {
  clients: ClientSummary[];
}

export interface DeleteClientAnswer {
  clientId: string;
  revokedGrants: string[];
  endedSessions: number;
}

/** One line of the drain's answer (JSON lines): sent at once, then whenever the count changes, the last with done. */
export interface DrainProgress {
  children: number;
  done: boolean;
}

/** Every refusal: a status (400 usage, 404 not found) and what to tell the operator. */
export interface ErrorAnswer {
  error: string;
}

export const ADMIN_ROUTES = {
  sessions: "/sessions",
  revoke: "/revoke",
  clients: "/clients",
  drain: "/drain",
} as const;

/** The admin command's exit codes (docs/operations.md lists them). */
export const ExitCode = {
  ok: 0,
  notFound: 1,
  usage: 2,
  brokerNotRunning: 3,
  drainTimedOut: 4,
  brokerError: 5,
  /** `sessions` listed this replica's own only: Redis did not answer, so the other replicas' are missing. */
  partial: 6,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

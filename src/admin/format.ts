// The admin command's plain output: aligned tables and short sentences, as pure functions of the broker's answers.
import type { ClientSummary, DeleteClientAnswer, DrainProgress, RevokeAnswer, SessionRow } from "./protocol.ts";

/** Columns padded to their widest cell, two spaces apart; the last column is not padded. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
  return [header, ...rows].map((row) => row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!))).join("  ")).join("\n");
}

/** 59s, 12m03s, 5h00m, 3d04h. */
export function duration(totalS: number): string {
  const s = Math.floor(totalS);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86_400)}d${String(Math.floor((s % 86_400) / 3600)).padStart(2, "0")}h`;
}

/** Memory in MiB with one decimal; "-" when unknown. */
export function mebibytes(bytes: number | null): string {
  return bytes === null ? "-" : `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function when(epochMs: number | null): string {
  return epochMs === null ? "never" : new Date(epochMs).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** What a cell shows where another replica's session does not say. */
const UNKNOWN = "—";

export function sessionsTable(rows: SessionRow[]): string {
  if (rows.length === 0) return "no live sessions";
  return table(
    ["ERA", "USER", "CLIENT", "AGE", "IDLE", "REPLICA", "PID", "RSS", "STATE", "ID"],
    rows.map((r) => [r.era, r.user, r.clientName || r.clientId, r.ageS === null ? UNKNOWN : duration(r.ageS), r.idleS === null ? UNKNOWN : duration(r.idleS), r.replica, r.pid === null ? UNKNOWN : String(r.pid), r.pid === null ? UNKNOWN : mebibytes(r.rssBytes), r.state, r.id]),
  );
}

export function clientsTable(clients: ClientSummary[]): string {
  if (clients.length === 0) return "no registered clients";
  return table(
    ["CLIENT ID", "NAME", "AUTH", "GRANTS", "LAST TOKEN", "REGISTERED"],
    clients.map((c) => [c.clientId, c.name, c.tokenEndpointAuthMethod, String(c.activeGrants), when(c.lastTokenIssuedAt), when(c.createdAt)]),
  );
}

export function revokeSentence(answer: RevokeAnswer): string {
  return `revoked ${plural(answer.revokedGrants.length, "grant")}, ending ${plural(answer.endedSessions, "live session")}: ${answer.revokedGrants.join(", ")}`;
}

export function deleteClientSentence(answer: DeleteClientAnswer): string {
  return `deleted client ${answer.clientId}; revoked ${plural(answer.revokedGrants.length, "grant")}, ending ${plural(answer.endedSessions, "live session")}`;
}

export function drainLine(progress: DrainProgress): string {
  return progress.done ? "drained: no children left" : `draining: ${plural(progress.children, "child", "children")} left`;
}

function plural(count: number, one: string, many = `${one}s`): string {
  return `${count} ${count === 1 ? one : many}`;
}

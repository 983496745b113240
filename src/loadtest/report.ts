// Renders run results as the plain two-column table printed at the end of a run;
// figures only, so the same text reads well in a terminal, a CI log or a pasted issue.

import type { ChurnResult, ErrorCount, LoadResult, Stop } from "./run.ts";

const ms = (value: number | null) => (value === null ? "—" : `${value.toFixed(3)} ms`);
const rate = (value: number | null) => (value === null ? "—" : value.toFixed(1));

function table(rows: [string, string][]): string {
  const width = Math.max(...rows.map(([label]) => label.length)) + 2;
  return rows.map(([label, value]) => label.padEnd(width) + value).join("\n");
}

function errorLines(errors: ErrorCount[]): string {
  if (errors.length === 0) return "errors: none";
  const lines = errors.map((e) => `  ${`${e.kind} ${e.detail}`.padEnd(24)}${String(e.count).padStart(8)}  e.g. ${e.example}`);
  return ["errors by kind:", ...lines].join("\n");
}

function stopLine(stop: Stop): string | null {
  switch (stop.reason) {
    case "completed":
      return null;
    case "interrupted":
      return "interrupted: the figures cover what was measured before Ctrl-C";
    case "unauthorized":
      return `stopped: ${stop.url} refused the token`;
    case "unreachable":
      return `stopped: cannot reach ${stop.url}`;
  }
}

export function formatLoad(result: LoadResult): string {
  const { sessions, calls } = result;
  const rows: [string, string][] = [
    ["sessions opened", `${sessions.opened} / ${sessions.requested}`],
    ["sessions/s", rate(sessions.perSecond)],
    ["set-up p50", ms(sessions.setupMs.p50)],
    ["set-up p99", ms(sessions.setupMs.p99)],
    ["calls ok", `${calls.ok} / ${calls.requested}`],
    ["calls/s", rate(calls.perSecond)],
    ["call p50", ms(calls.latencyMs.p50)],
    ["call p99", ms(calls.latencyMs.p99)],
    ["call p99.9", ms(calls.latencyMs.p999)],
  ];
  const head = `load: ${sessions.requested} sessions × ${calls.perSession} calls of ${result.tool} at ${result.url}` +
    (result.protocolVersion === null ? "" : ` (protocol ${result.protocolVersion})`);
  return [head, table(rows), errorLines(result.errors), stopLine(result.stop)].filter((line) => line !== null).join("\n");
}

export function formatChurn(result: ChurnResult): string {
  const { cycles } = result;
  const rows: [string, string][] = [
    ["cycles ok", `${cycles.ok} / ${cycles.requested}`],
    ["cycles/s", rate(cycles.perSecond)],
    ["cycle p50", ms(cycles.latencyMs.p50)],
    ["cycle p99", ms(cycles.latencyMs.p99)],
    ["DELETEs", String(cycles.deletes)],
  ];
  const head = `churn: initialize → ${result.tool} → DELETE at ${result.url}`;
  return [head, table(rows), errorLines(result.errors), stopLine(result.stop)].filter((line) => line !== null).join("\n");
}

// Parses and validates the loadtest command line into options, or one clear complaint;
// reading the token file is left to the caller so this stays a pure function.

import { parseArgs } from "node:util";
import { DEFAULT_ARGS, DEFAULT_TIMEOUT_MS, DEFAULT_TOOL } from "./run.ts";
import { ERAS, type Era } from "./session.ts";

export const USAGE = `usage: bun run loadtest -- --url <mcp url> [options]

  --url URL           the Streamable HTTP MCP endpoint (required)
  --token TOKEN       sent as Authorization: Bearer TOKEN
  --token-file FILE   read the bearer token from FILE (keeps it out of ps and shell history)
  --era ERA           legacy (default): each session initializes and keeps its Mcp-Session-Id;
                      modern: MCP 2026-07-28 callers, each set up by server/discover and then
                      sending self-describing requests (the _meta envelope and the MCP-Protocol-Version,
                      Mcp-Method and Mcp-Name headers) with the same URL and token
  --sessions S        concurrent sessions (modern: callers) to open (default 1)
  --calls R           sequential tools/calls in each session (default 100; 0 measures set-up only)
  --tool NAME         the tool to call (default ${DEFAULT_TOOL})
  --args JSON         its arguments (default '${JSON.stringify(DEFAULT_ARGS)}')
  --churn N           also run N sequential initialize → call → DELETE cycles;
                      alone (without --sessions or --calls) it runs only the churn
  --timeout-ms MS     per request (default ${DEFAULT_TIMEOUT_MS})
  --json FILE         write the full result as JSON to FILE
  --help              show this text

exit status: 0 all succeeded, 1 some requests failed, 2 bad usage, unreachable URL or
refused token, 130 interrupted (what was measured so far is printed)`;

/** 800 MB of samples: beyond this a typo (an extra zero) would exhaust memory before the first call. */
const MAX_SAMPLES = 100_000_000;

export interface CliOptions {
  url: string;
  token?: string;
  tokenFile?: string;
  era: Era;
  /** Null when only the churn runs. */
  load: { sessions: number; calls: number } | null;
  churn: number | null;
  tool: string;
  args: unknown;
  timeoutMs: number;
  jsonFile?: string;
}

export type ParsedArgs = { kind: "run"; options: CliOptions } | { kind: "help" } | { kind: "error"; message: string };

export function parseCliArgs(argv: string[]): ParsedArgs {
  // `bun run loadtest -- --url …` may hand the separator through.
  const args = argv[0] === "--" ? argv.slice(1) : argv;
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        url: { type: "string" },
        token: { type: "string" },
        "token-file": { type: "string" },
        era: { type: "string" },
        sessions: { type: "string" },
        calls: { type: "string" },
        tool: { type: "string" },
        args: { type: "string" },
        churn: { type: "string" },
        "timeout-ms": { type: "string" },
        json: { type: "string" },
        help: { type: "boolean" },
      },
    }));
  } catch (error) {
    return { kind: "error", message: (error as Error).message };
  }
  if (values.help) return { kind: "help" };

  const problems: string[] = [];
  const count = (name: string, raw: string | undefined, fallback: number, min: number): number => {
    if (raw === undefined) return fallback;
    if (!/^\d+$/.test(raw) || Number(raw) < min || !Number.isSafeInteger(Number(raw))) {
      problems.push(`--${name} must be a whole number ≥ ${min}, got ${JSON.stringify(raw)}`);
      return fallback;
    }
    return Number(raw);
  };

  const url = values.url;
  if (url === undefined) problems.push("--url is required");
  else if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) {
    problems.push(`--url must be an http or https URL, got ${JSON.stringify(url)}`);
  }
  if (values.token !== undefined && values["token-file"] !== undefined) {
    problems.push("give --token or --token-file, not both");
  }
  const era = (values.era ?? "legacy") as Era;
  if (!ERAS.includes(era)) problems.push(`--era must be ${ERAS.join(" or ")}, got ${JSON.stringify(values.era)}`);
  const sessions = count("sessions", values.sessions, 1, 1);
  const calls = count("calls", values.calls, 100, 0);
  const churn = values.churn === undefined ? null : count("churn", values.churn, 1, 1);
  const timeoutMs = count("timeout-ms", values["timeout-ms"], DEFAULT_TIMEOUT_MS, 1);
  let toolArgs: unknown = DEFAULT_ARGS;
  if (values.args !== undefined) {
    try {
      toolArgs = JSON.parse(values.args);
    } catch {
      problems.push(`--args is not JSON: ${values.args}`);
    }
    if (toolArgs === null || typeof toolArgs !== "object" || Array.isArray(toolArgs)) {
      problems.push("--args must be a JSON object, like '{\"text\":\"hi\"}'");
    }
  }
  if (churn !== null && churn > MAX_SAMPLES) problems.push(`--churn is at most ${MAX_SAMPLES}`);
  if (sessions * calls > MAX_SAMPLES) {
    problems.push(`--sessions × --calls is ${sessions * calls}; at most ${MAX_SAMPLES} (every latency is kept, 8 bytes each)`);
  }
  if (problems.length > 0) return { kind: "error", message: problems.join("\n") };

  const churnOnly = churn !== null && values.sessions === undefined && values.calls === undefined;
  return {
    kind: "run",
    options: {
      url: url!,
      token: values.token,
      tokenFile: values["token-file"],
      era,
      load: churnOnly ? null : { sessions, calls },
      churn,
      tool: values.tool ?? DEFAULT_TOOL,
      args: toolArgs,
      timeoutMs,
      jsonFile: values.json,
    },
  };
}

// forgejo-mcp-broker/loadtest: the load generator's core as a function, for a test or a script that wants
// the figures (`bun run loadtest -- --json`'s "load") as a value; it prints only when asked.
import { formatLoad } from "./report.ts";
import { runLoad as runLoadWith, type LoadOptions, type LoadResult } from "./run.ts";

export type { ErrorCount, LoadResult, Stop } from "./run.ts";
export type { LatencySummary } from "./stats.ts";
export type { Era } from "./session.ts";

export interface RunLoadOptions extends Omit<LoadOptions, "live"> {
  /** Writes the command's final table when done: true to stdout, or to the function given. */
  print?: boolean | ((text: string) => void);
  /** The fetch the sessions use; the global one by default. */
  fetch?: typeof fetch;
}

/**
 * Opens `sessions` MCP sessions on `url` (with `token` as bearer) and makes `calls` tool calls on each, all at
 * once; resolves with what was measured, also when it stopped early (result.stop says why).
 */
export async function runLoad(options: RunLoadOptions): Promise<LoadResult> {
  const { print, fetch: fetchWith = fetch, ...load } = options;
  const result = await runLoadWith(load, { fetch: fetchWith, now: () => performance.now() });
  if (print === true) process.stdout.write(formatLoad(result) + "\n");
  else if (print) print(formatLoad(result) + "\n");
  return result;
}

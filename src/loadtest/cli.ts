// The `bun run loadtest` command: flags → load and/or churn run → progress line, final table,
// optional JSON file, and an exit status that scripts can act on (see USAGE).

import { parseCliArgs, USAGE, type CliOptions } from "./args.ts";
import { churnLine, loadLine, startProgress } from "./progress.ts";
import { formatChurn, formatLoad } from "./report.ts";
import { newLiveCounters, runChurn, runLoad, type ChurnResult, type LoadResult, type Stop } from "./run.ts";

export interface CliDeps {
  fetch: typeof fetch;
  now: () => number;
  stdout: { write(text: string): void; isTTY: boolean };
  stderr: { write(text: string): void };
  readFile(path: string): Promise<string>;
  writeFile(path: string, text: string): Promise<void>;
  /** Aborted on Ctrl-C. */
  signal: AbortSignal;
  /** How many requests this runtime's fetch keeps in flight at once (Bun: 256 unless BUN_CONFIG_MAX_HTTP_REQUESTS). */
  maxConcurrentRequests: number;
}

/** What --json writes: the options (without the token) and each phase's full result. */
export interface CliReport {
  options: Omit<CliOptions, "token" | "tokenFile"> & { authenticated: boolean };
  load: LoadResult | null;
  churn: ChurnResult | null;
}

export async function main(argv: string[], deps: CliDeps): Promise<number> {
  const parsed = parseCliArgs(argv);
  if (parsed.kind === "help") {
    deps.stdout.write(USAGE + "\n");
    return 0;
  }
  if (parsed.kind === "error") {
    deps.stderr.write(`loadtest: ${parsed.message}\n\n${USAGE}\n`);
    return 2;
  }
  const options = parsed.options;
  if (options.load !== null && options.load.sessions > deps.maxConcurrentRequests) {
    // Beyond the cap, calls would queue inside the generator and the latencies would measure that queue.
    const { sessions } = options.load;
    deps.stderr.write(
      `loadtest: --sessions ${sessions} is more than the ${deps.maxConcurrentRequests} requests Bun's fetch sends at once;\n` +
        `  run it as BUN_CONFIG_MAX_HTTP_REQUESTS=${sessions} bun run loadtest -- …\n`,
    );
    return 2;
  }

  let token = options.token;
  if (options.tokenFile !== undefined) {
    try {
      token = (await deps.readFile(options.tokenFile)).trim();
    } catch (error) {
      deps.stderr.write(`loadtest: cannot read --token-file ${options.tokenFile}: ${(error as Error).message}\n`);
      return 2;
    }
    if (token === "") {
      deps.stderr.write(`loadtest: --token-file ${options.tokenFile} is empty\n`);
      return 2;
    }
  }

  const runDeps = { fetch: deps.fetch, now: deps.now };
  const common = { url: options.url, token, era: options.era, tool: options.tool, args: options.args, timeoutMs: options.timeoutMs, signal: deps.signal };
  const report: CliReport = {
    options: {
      url: options.url,
      authenticated: token !== undefined,
      era: options.era,
      load: options.load,
      churn: options.churn,
      tool: options.tool,
      args: options.args,
      timeoutMs: options.timeoutMs,
      jsonFile: options.jsonFile,
    },
    load: null,
    churn: null,
  };
  const progress = (render: (rate: number) => string, done: () => number) =>
    deps.stdout.isTTY ? startProgress(render, done, deps.stdout, deps.now) : () => {};

  let stop: Stop = { reason: "completed" };
  if (options.load !== null) {
    const { sessions, calls } = options.load;
    const live = newLiveCounters();
    const stopProgress = progress((rate) => loadLine(live, sessions, sessions * calls, rate), () => live.callsDone);
    report.load = await runLoad({ ...common, sessions, calls, live }, runDeps);
    stopProgress();
    stop = report.load.stop;
    if (stop.reason === "completed" || stop.reason === "interrupted") deps.stdout.write(formatLoad(report.load) + "\n");
  }
  if (options.churn !== null && stop.reason === "completed") {
    const cycles = options.churn;
    const live = newLiveCounters();
    const stopProgress = progress((rate) => churnLine(live, cycles, rate), () => live.cyclesDone);
    report.churn = await runChurn({ ...common, cycles, live }, runDeps);
    stopProgress();
    stop = report.churn.stop;
    if (stop.reason === "completed" || stop.reason === "interrupted") {
      deps.stdout.write((report.load === null ? "" : "\n") + formatChurn(report.churn) + "\n");
    }
  }

  if (options.jsonFile !== undefined) {
    try {
      await deps.writeFile(options.jsonFile, JSON.stringify(report, null, 2) + "\n");
    } catch (error) {
      deps.stderr.write(`loadtest: cannot write --json ${options.jsonFile}: ${(error as Error).message}\n`);
      return 2;
    }
  }

  switch (stop.reason) {
    case "unauthorized":
      deps.stderr.write(
        `loadtest: ${stop.url} refused the token (${stop.message})` +
          (token === undefined ? "; no token was given: pass --token or --token-file" : "") +
          `\n  WWW-Authenticate: ${stop.wwwAuthenticate ?? "(none sent)"}\n`,
      );
      return 2;
    case "unreachable":
      deps.stderr.write(`loadtest: cannot reach ${stop.url}: ${stop.cause}\n`);
      return 2;
    case "interrupted":
      return 130;
    case "completed": {
      const errors = (report.load?.errors.length ?? 0) + (report.churn?.errors.length ?? 0);
      return errors > 0 ? 1 : 0;
    }
  }
}

if (import.meta.main) {
  const controller = new AbortController();
  process.on("SIGINT", () => {
    // A second Ctrl-C does not wait for the sessions to be closed.
    if (controller.signal.aborted) process.exit(130);
    controller.abort();
  });
  const code = await main(Bun.argv.slice(2), {
    fetch,
    now: () => performance.now(),
    stdout: { write: (text) => void process.stdout.write(text), isTTY: process.stdout.isTTY === true },
    stderr: { write: (text) => void process.stderr.write(text) },
    readFile: (path) => Bun.file(path).text(),
    writeFile: async (path, text) => void (await Bun.write(path, text)),
    signal: controller.signal,
    maxConcurrentRequests: Number(process.env.BUN_CONFIG_MAX_HTTP_REQUESTS) || 256,
  });
  // Idle keep-alive sockets must not hold the process open.
  process.exit(code);
}

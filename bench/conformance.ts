// `bun run bench/conformance.ts`: the MCP conformance suite's server scenarios run through the broker as
// one signed-in user would — one access token, no DELETE between scenarios — with a summary of the score,
// each failure, and how many times the broker answered 429. Everything it starts is stopped at the end.
// `--spec-version 2026-07-28` runs that revision's required scenarios on its stateless wire instead.
//
// Behind the broker: test/fixtures/conformance-server.ts, the suite's reference server on stdio. In front:
// a loopback proxy that adds the bearer header (the conformance CLI cannot send one) and is the broker's
// BROKER_PUBLIC_URL, as a reverse proxy would be.
import { existsSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { startTestBroker, type TestBroker } from "../test/helpers/broker.ts";
import { obtainTokens } from "../src/testing/oauth-client.ts";
import { startBearerProxy, type BearerProxy } from "./lib/bearer-proxy.ts";
import { REPO_ROOT } from "./lib/gateways.ts";
import { describeDescendants } from "./lib/proc.ts";

const USAGE = `usage: bun run bench/conformance.ts [options]

  --conformance-bin PATH  the conformance CLI (dist/index.js of an install of
                          @modelcontextprotocol/conformance); default: this checkout's pinned one,
                          0.1.16, or 0.2.0-alpha.12 (conformance-2026) with --spec-version
  --suite NAME            all (default: the 32 scenarios \`conformance list --server\` shows), active
                          (the CLI's own default: all but the 2 it marks pending) or pending
  --spec-version V        run the server scenarios revision V requires, at V's wire (the CLI's
                          \`--requirements V\`, 0.2.0-alpha.12 and later; 2026-07-28: 37 scenarios,
                          stateless requests the broker serves on its modern path); with --scenario:
                          that scenario at V's wire. Replaces --suite
  --scenario NAME         run this one scenario instead of a suite
  --expected-failures F   the CLI's baseline (a YAML list of scenario[:check-id] per subcommand): its
                          exit status is then 0 only when exactly those fail (the report shows it);
                          bench/conformance-2026-expected.yaml is the one for --spec-version 2026-07-28
  --timeout-s N           stop the suite after N seconds (default 900)
  --output-dir DIR        keep the suite's checks.json per scenario and its output there
  --verbose               print the suite's own output as it runs
  --help

BROKER_* variables in the environment reach the broker (e.g. BROKER_MAX_SESSIONS_PER_USER), except
BROKER_PUBLIC_URL, BROKER_PORT, BROKER_DATA_DIR and BROKER_CHILD_COMMAND, which the harness sets.
Exit status: 0 when the broker answered no 429 and nothing it started was left running (and, with
--expected-failures, the CLI found the baseline exact); 1 otherwise; 2 when the harness could not run.
Scenarios failing for other reasons are reported, not fatal.`;

const HARNESS_OWNED = new Set(["BROKER_PUBLIC_URL", "BROKER_PORT", "BROKER_DATA_DIR", "BROKER_CHILD_COMMAND"]);
const FIXTURE = join(REPO_ROOT, "test/fixtures/conformance-server.ts");
const SCENARIO_LINE = /^=== Running scenario: (.+) ===$/;
const RESULT_DIR = /^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/;
/** `conformance list --server --requirements V` ends with the scenarios V runs but never scores, grouped by reason. */
const NOT_SCORED_HEADING = /^Run and reported, but never scored/;
const NOT_SCORED_REASON = /^\s+(\S[^(]*?) \(\d+\):$/;
const NOT_SCORED_SERVER = /^\s+- (\S+) \[server\]$/;

interface Check {
  id: string;
  name: string;
  status: "SUCCESS" | "FAILURE" | "WARNING" | "INFO" | string;
  errorMessage?: string;
}

interface ScenarioOutcome {
  name: string;
  /** Why the revision's requirements leave it out of the score (extension, pending, …); undefined: scored. */
  notScored?: string;
  /** null: the suite wrote no checks.json for it (it crashed or was stopped; its output says why). */
  checks: Check[] | null;
  answers429: number;
}

const log = (line: string) => process.stderr.write(line + "\n");

function fail(message: string): never {
  log(`conformance: ${message}\n\n${USAGE}`);
  process.exit(2);
}

let args: ReturnType<typeof parse>;
function parse() {
  return parseArgs({
    args: Bun.argv.slice(2),
    options: {
      "conformance-bin": { type: "string" },
      suite: { type: "string", default: "all" },
      scenario: { type: "string" },
      "spec-version": { type: "string" },
      "expected-failures": { type: "string" },
      "timeout-s": { type: "string", default: "900" },
      "output-dir": { type: "string" },
      verbose: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
    allowPositionals: false,
  });
}
try {
  args = parse();
} catch (error) {
  fail(error instanceof Error ? error.message : String(error));
}
if (args.values.help) {
  console.log(USAGE);
  process.exit(0);
}
const timeoutS = Number(args.values["timeout-s"]);
if (!Number.isInteger(timeoutS) || timeoutS < 1) fail(`--timeout-s must be a whole number of seconds ≥ 1, not ${args.values["timeout-s"]}`);
// Both pinned versions are installed (0.2 under the alias conformance-2026) and both call their bin
// `conformance`, so which one node_modules/.bin names is npm's choice: name each by its package.
const pinned = args.values["spec-version"] === undefined ? "node_modules/@modelcontextprotocol/conformance/dist/index.js" : "node_modules/conformance-2026/dist/index.js";
const bin = resolve(args.values["conformance-bin"] ?? join(REPO_ROOT, pinned));
if (!existsSync(bin)) fail(`no conformance CLI at ${bin}: run npm ci (package.json pins 0.1.16 and, as conformance-2026, 0.2.0-alpha.12) or pass --conformance-bin`);
/** The CLI's package.json, two levels above its dist/index.js: the version goes into the report. */
const suiteVersion = (() => {
  try {
    return JSON.parse(readFileSync(join(dirname(realpathSync(bin)), "../package.json"), "utf8")).version as string;
  } catch {
    return "?";
  }
})();

const resultsDir = args.values["output-dir"] ? resolve(args.values["output-dir"]) : mkdtempSync(join(tmpdir(), "fmb-conformance-"));
mkdirSync(resultsDir, { recursive: true });

let currentScenario = "(sign-in)";
let proxy: BearerProxy | undefined;
let broker: TestBroker | undefined;
let cli: Bun.Subprocess<"ignore", "pipe", "pipe"> | undefined;
let stopped: Promise<void> | undefined;

/** Stops what this run started, in the order that lets each part end cleanly: suite, broker (its children, Forgejo), proxy. */
function stopEverything(): Promise<void> {
  return (stopped ??= (async () => {
    if (cli && cli.exitCode === null) {
      cli.kill("SIGKILL");
      await cli.exited;
    }
    await broker?.stop();
    await proxy?.stop();
    if (!args.values["output-dir"]) rmSync(resultsDir, { recursive: true, force: true });
  })());
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    log(`conformance: ${signal}, stopping`);
    void stopEverything().then(() => process.exit(130));
  });
}

/** Reads the suite's stdout line by line: follows which scenario runs (for the proxy's labels) and keeps the text. */
async function followOutput(stream: ReadableStream<Uint8Array>, into: string[]): Promise<void> {
  let pending = "";
  const decoder = new TextDecoder();
  for await (const bytes of stream) {
    const chunk = decoder.decode(bytes, { stream: true });
    if (args.values.verbose) process.stderr.write(chunk);
    pending += chunk;
    const lines = pending.split("\n");
    pending = lines.pop() ?? "";
    for (const line of lines) {
      // The CLI colours its output; the scenario marker itself is plain.
      const plain = line.replace(/\x1b\[[0-9;]*m/g, "");
      into.push(plain);
      const marker = SCENARIO_LINE.exec(plain.trim());
      if (marker) currentScenario = marker[1]!;
    }
  }
  if (pending !== "") into.push(pending);
}

/** The server scenarios `specVersion` runs but does not score, with the CLI's reason for each (extension, pending, …). */
function readNotScored(specVersion: string): Map<string, string> {
  const listed = Bun.spawnSync([process.execPath, bin, "list", "--server", "--requirements", specVersion], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  if (listed.exitCode !== 0) throw new Error(`conformance list --requirements ${specVersion} failed: ${listed.stderr.toString().trim()}`);
  const lines = listed.stdout.toString().split("\n");
  const reasons = new Map<string, string>();
  const heading = lines.findIndex((line) => NOT_SCORED_HEADING.test(line));
  if (heading === -1) return reasons;
  let reason: string | undefined;
  for (const line of lines.slice(heading + 1)) {
    reason = NOT_SCORED_REASON.exec(line)?.[1] ?? reason;
    const name = NOT_SCORED_SERVER.exec(line)?.[1];
    if (name !== undefined && reason !== undefined) reasons.set(name, reason);
  }
  return reasons;
}

/** The entries the CLI lists under `heading` (its baseline verdict), one indented line each, up to the next blank line. */
function listedUnder(lines: string[], heading: string): string[] {
  const start = lines.findIndex((line) => line.startsWith(heading));
  if (start === -1) return [];
  const end = lines.findIndex((line, index) => index > start && line.trim() === "");
  return lines.slice(start + 1, end === -1 ? undefined : end).map((line) => line.trim().replace(/^[~✗✓]\s*/, ""));
}

/** The checks.json the suite wrote for each scenario, by scenario name. */
function readResults(dir: string): Map<string, Check[]> {
  const results = new Map<string, Check[]>();
  for (const entry of readdirSync(dir)) {
    const name = RESULT_DIR.exec(entry)?.[1];
    const file = join(dir, entry, "checks.json");
    if (name !== undefined && existsSync(file)) results.set(name, JSON.parse(readFileSync(file, "utf8")) as Check[]);
  }
  return results;
}

/** Which scenarios the CLI runs, and at which revision's wire. */
function scenarioArgs(): string[] {
  const specVersion = args.values["spec-version"];
  const baseline = args.values["expected-failures"] ? ["--expected-failures", resolve(args.values["expected-failures"])] : [];
  if (args.values.scenario) return ["--scenario", args.values.scenario, ...(specVersion ? ["--spec-version", specVersion] : []), ...baseline];
  return [...(specVersion ? ["--requirements", specVersion] : ["--suite", args.values.suite!]), ...baseline];
}
const selection = args.values.scenario ?? (args.values["spec-version"] ? `required by ${args.values["spec-version"]}` : `suite ${args.values.suite}`);

const started = performance.now();
let outcomes: ScenarioOutcome[] = [];
let brokerLines: Record<string, unknown>[] = [];
let suiteExit: number | null = null;
let timedOut = false;
let suiteSeconds = 0;
/** The end of the CLI's own output, shown when a scenario left no result (the CLI could not start, or was stopped). */
let suiteTail = "";
/** With --expected-failures: what the CLI found against the baseline. */
let baseline: { expected: string[]; unexpected: string[]; stale: string[] } | undefined;
let maxPerUser = 0;
try {
  proxy = startBearerProxy(() => currentScenario);
  const passthrough = Object.fromEntries(
    Object.entries(process.env).filter((entry): entry is [string, string] => entry[0].startsWith("BROKER_") && !HARNESS_OWNED.has(entry[0]) && entry[1] !== undefined),
  );
  broker = await startTestBroker({
    env: {
      ...passthrough,
      BROKER_PUBLIC_URL: proxy.url,
      // Quoted: the command is split into argv like a shell would, and a checkout path may hold spaces.
      BROKER_CHILD_COMMAND: `'${process.execPath}' '${FIXTURE}'`,
    },
  });
  maxPerUser = broker.config.sessions.maxSessionsPerUser;
  proxy.setUpstream(`http://127.0.0.1:${broker.config.port}`);
  const tokens = await obtainTokens(proxy.url);
  proxy.setToken(tokens.accessToken);

  const mcpUrl = `${proxy.url}/mcp`;
  const argv = [process.execPath, bin, "server", "--url", mcpUrl, "--output-dir", resultsDir, ...scenarioArgs()];
  log(`conformance: ${suiteVersion} against ${mcpUrl} (broker on :${broker.config.port}, child ${FIXTURE.slice(REPO_ROOT.length + 1)})`);
  // The CLI needs Node ≥ 22 (fs.globSync); bun runs it as it is.
  const suiteStarted = performance.now();
  cli = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const output: string[] = [];
  const timer = setTimeout(() => {
    timedOut = true;
    cli?.kill("SIGKILL");
  }, timeoutS * 1000);
  const [, , stderrText] = await Promise.all([cli.exited, followOutput(cli.stdout, output), new Response(cli.stderr).text()]);
  clearTimeout(timer);
  suiteSeconds = (performance.now() - suiteStarted) / 1000;
  suiteExit = cli.exitCode;
  const fullOutput = output.join("\n") + (stderrText ? `\n--- stderr ---\n${stderrText}` : "");
  writeFileSync(join(resultsDir, "conformance-output.txt"), fullOutput);
  suiteTail = fullOutput.split("\n").slice(-15).join("\n");

  const ran = output.map((line) => SCENARIO_LINE.exec(line.trim())?.[1]).filter((name): name is string => name !== undefined);
  // A single --scenario prints no marker line.
  if (ran.length === 0 && args.values.scenario) ran.push(args.values.scenario);
  const results = readResults(resultsDir);
  if (args.values["expected-failures"]) {
    baseline = {
      expected: listedUnder(output, "Expected failures (in baseline)"),
      unexpected: listedUnder(output, "Unexpected failures (not in baseline)"),
      stale: listedUnder(output, "Stale baseline entries"),
    };
  }
  const notScored = args.values["spec-version"] ? readNotScored(args.values["spec-version"]) : new Map<string, string>();
  outcomes = ran.map((name) => ({
    name,
    notScored: notScored.get(name),
    checks: results.get(name) ?? null,
    answers429: proxy!.answers.filter((answer) => answer.label === name && answer.status === 429).length,
  }));
  brokerLines = broker.logs.map((line) => JSON.parse(line) as Record<string, unknown>);
} catch (error) {
  log(`conformance: the run failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  await stopEverything();
  process.exit(2);
}
const answers = proxy.answers;
await stopEverything();
const seconds = (performance.now() - started) / 1000;
const leftover = describeDescendants(process.pid);

// ---- the report ----
const failedChecks = (outcome: ScenarioOutcome) => (outcome.checks ?? []).filter((check) => check.status === "FAILURE");
const isPass = (outcome: ScenarioOutcome) => outcome.checks !== null && failedChecks(outcome).length === 0;
const scored = outcomes.filter((outcome) => outcome.notScored === undefined);
const unscored = outcomes.filter((outcome) => outcome.notScored !== undefined);
const passed = scored.filter(isPass);
const failed = [...scored, ...unscored].filter((outcome) => !isPass(outcome));
const mcpRequests = brokerLines.filter((line) => line.msg === "request" && line.path === "/mcp");
const broker429 = mcpRequests.filter((line) => line.status === 429).length;
const deletes = mcpRequests.filter((line) => line.method === "DELETE").length;
const sessionsStarted = brokerLines.filter((line) => line.msg === "session started").length;
const principalChildren = brokerLines.filter((line) => line.msg === "principal child started").length;
const statuses = new Map<number, number>();
for (const answer of answers) statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
const oneLine = (text: string, max = 220) => {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max)}…` : flat;
};

const report = [
  `MCP conformance ${suiteVersion}, server scenarios (${selection}), through the broker (one access token, no DELETE sent by the harness)`,
  `  scenarios passed:   ${passed.length}/${scored.length}${timedOut ? ` (stopped after --timeout-s ${timeoutS})` : ""}; suite exit status ${suiteExit}`,
  ...(unscored.length > 0 ? [`  not scored:         ${unscored.filter(isPass).length}/${unscored.length} passed (run, but outside the revision's requirements)`] : []),
  ...(baseline
    ? [`  baseline:           ${baseline.expected.length} failing as listed; not listed: ${baseline.unexpected.join(", ") || "none"}; listed but passing: ${baseline.stale.join(", ") || "none"}`]
    : []),
  `  429 from the broker: ${broker429} (request log); seen by the client in ${outcomes.filter((o) => o.answers429 > 0).length} scenario(s)`,
  `  sessions started:   ${sessionsStarted} for one user (BROKER_MAX_SESSIONS_PER_USER=${maxPerUser}); DELETEs received: ${deletes}; principal children started: ${principalChildren}`,
  `  /mcp answers:       ${[...statuses].sort(([a], [b]) => a - b).map(([status, count]) => `${status}×${count}`).join(", ")}`,
  `  took ${seconds.toFixed(1)} s, the suite itself ${suiteSeconds.toFixed(1)} s; ${leftover.total === 0 ? "nothing left running" : `LEFT RUNNING: ${leftover.total} process(es): ${leftover.examples.join("; ")}`}`,
];
if (failed.length > 0) {
  report.push("", "failed scenarios:");
  for (const outcome of failed) {
    const tag = (outcome.notScored ? ` [not scored: ${outcome.notScored}]` : "") + (outcome.answers429 > 0 ? ` [${outcome.answers429}× 429]` : "");
    if (outcome.checks === null) {
      report.push(`  ✗ ${outcome.name}${tag}: the suite wrote no result for it (the end of its output is below)`);
      continue;
    }
    const checks = failedChecks(outcome);
    report.push(`  ✗ ${outcome.name}${tag}: ${checks.map((check) => `${check.name}: ${oneLine(check.errorMessage ?? "(no message)")}`).join(" | ")}`);
  }
}
const warned = outcomes.filter((outcome) => (outcome.checks ?? []).some((check) => check.status === "WARNING"));
if (warned.length > 0) {
  report.push("", "warnings (not failures):");
  for (const outcome of warned) {
    for (const check of outcome.checks!.filter((c) => c.status === "WARNING")) report.push(`  ! ${outcome.name}: ${check.name}: ${oneLine(check.errorMessage ?? "(no message)")}`);
  }
}
if (outcomes.length === 0 || outcomes.some((outcome) => outcome.checks === null)) report.push("", "the end of the suite's output:", suiteTail);
report.push("", `passed: ${passed.map((outcome) => outcome.name).join(", ") || "none"}`);
if (args.values["output-dir"]) report.push(`results: ${resultsDir}`);
console.log(report.join("\n"));

const baselineHeld = baseline === undefined || suiteExit === 0;
process.exit(broker429 === 0 && leftover.total === 0 && !timedOut && outcomes.length > 0 && baselineHeld ? 0 : 1);

// `bun run bench`: direct stdio, the bare relay, this broker (legacy sessions and modern callers) and
// supergateway measured in one run on one machine, with the same child and the same load generator
// (src/loadtest), targets alternating over rounds, medians reported against the issues' target ratios, and a markdown report written to
// bench/results/. Every process it starts is stopped at the end (and on Ctrl-C), and checked.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { startFakeForgejo, type FakeForgejo } from "../src/testing/forgejo-stand-in.ts";
import { MODERN_SCALE_PRINCIPALS, parseBenchArgs, USAGE } from "./lib/args.ts";
import { buildCChild, NoCompiler, TS_CHILD } from "./lib/build.ts";
import type { StdioSession } from "./lib/direct.ts";
import { REPO_ROOT, stopAllGateways, Unavailable, type ChildSpec } from "./lib/gateways.ts";
import { eraOf, measureChurn, measureLoad, measureModernScale, measureScale, startGateway, type MeasureContext } from "./lib/measure.ts";
import { describeDescendants } from "./lib/proc.ts";
import { exportBaseline, startOtlpSink, type Baseline, type OtlpSink } from "./lib/tracing-targets.ts";
import { modernVerdicts, renderMarkdown, verdicts, type BenchData, type Machine } from "./lib/report.ts";

const MAX_REQUESTS = 4096;

// Bun's fetch sends at most 256 requests at once unless BUN_CONFIG_MAX_HTTP_REQUESTS is set when
// the process starts: re-run this script with it set, so the scale point never queues client-side.
if (!process.env.BUN_CONFIG_MAX_HTTP_REQUESTS) {
  const child = Bun.spawn([process.execPath, ...process.argv.slice(1)], {
    stdio: ["inherit", "inherit", "inherit"],
    env: { ...process.env, BUN_CONFIG_MAX_HTTP_REQUESTS: String(MAX_REQUESTS) },
  });
  // Ctrl-C reaches the whole foreground process group: the child handles it; this one just waits.
  process.on("SIGINT", () => {});
  process.on("SIGTERM", () => child.kill("SIGTERM"));
  process.exit(await child.exited);
}

const parsed = parseBenchArgs(Bun.argv.slice(2));
if (parsed.kind === "help") {
  console.log(USAGE);
  process.exit(0);
}
if (parsed.kind === "error") {
  console.error(`bench: ${parsed.message}\n\n${USAGE}`);
  process.exit(2);
}
const options = parsed.options;
const log = (line: string) => process.stderr.write(line + "\n");

function sh(argv: string[]): string {
  try {
    const result = Bun.spawnSync(argv, { stdout: "pipe", stderr: "ignore", cwd: REPO_ROOT });
    return result.exitCode === 0 ? result.stdout.toString().trim() : "?";
  } catch {
    return "?";
  }
}

/** HEAD, and which files under src/ and bench/ differ from it: the broker measured is the working tree. */
function describeCommit(): string {
  const head = sh(["git", "rev-parse", "--short", "HEAD"]);
  // Not through sh(): its trim() would eat the status column of the first line.
  const status = Bun.spawnSync(["git", "status", "--porcelain", "--untracked-files=all", "--", "src", "bench"], { stdout: "pipe", stderr: "ignore", cwd: REPO_ROOT });
  const dirty = (status.exitCode === 0 ? status.stdout.toString() : "")
    .split("\n")
    .map((line) => line.slice(3).trim())
    .filter((path) => path !== "" && !path.startsWith("bench/results/"));
  if (dirty.length === 0) return head;
  return `${head} + uncommitted changes in ${dirty.length} file(s): ${dirty.slice(0, 12).join(", ")}${dirty.length > 12 ? ", …" : ""}`;
}

function loadAverage(): string {
  return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
}

function machine(): Machine {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const meminfo = readFileSync("/proc/meminfo", "utf8");
  const memKb = Number(/MemTotal:\s+(\d+)/.exec(meminfo)?.[1] ?? 0);
  let supergateway = "?";
  try {
    supergateway = JSON.parse(readFileSync(resolve(REPO_ROOT, "node_modules/supergateway/package.json"), "utf8")).version;
  } catch {
    // reported as "?"
  }
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    nproc: Number(sh(["nproc"])) || navigator.hardwareConcurrency,
    memory: `${(memKb / 1024 / 1024).toFixed(1)} GiB`,
    cpu: /model name\s*:\s*(.+)/.exec(cpuinfo)?.[1]?.trim() ?? "?",
    kernel: sh(["uname", "-r"]),
    bun: Bun.version,
    node: sh(["node", "--version"]),
    supergateway,
    commit: describeCommit(),
    loadAverage: loadAverage(),
  };
}

const directSessions = new Set<StdioSession>();
let forgejo: FakeForgejo | undefined;
let baseline: Baseline | undefined;
let otlpSink: OtlpSink | undefined;
let cleaning = false;

async function cleanup(): Promise<void> {
  if (cleaning) return;
  cleaning = true;
  for (const session of directSessions) session.kill();
  await stopAllGateways();
  await forgejo?.stop();
  baseline?.remove();
  otlpSink?.stop();
}

// SIGTERM too: the wrapper above forwards it, and a run stopped that way must not leave gateways behind.
for (const [signal, status] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
  process.on(signal, () => {
    log(`\nbench: ${signal === "SIGINT" ? "interrupted" : "terminated"}; stopping everything it started`);
    void cleanup().then(() => process.exit(status));
  });
}

const started = performance.now();
const data: BenchData = {
  options,
  machine: machine(),
  childDescription: "",
  unavailable: {},
  loads: {},
  churn: {},
  scale: {},
  scaleSkipped: null,
  modernScale: null,
  modernScaleSkipped: null,
  brokerCaps: Math.max(2000, options.scale * 2, options.modernScale * 2),
  loadAverageAtEnd: "",
  wallSeconds: 0,
};

let cChild: ChildSpec | null = null;
const needC = options.child === "c" || options.scale > 0;
if (needC) {
  try {
    cChild = { name: "c", argv: [buildCChild()] };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    if (options.child === "c" || !(error instanceof NoCompiler)) {
      console.error(`bench: ${message}`);
      process.exit(2);
    }
    log(`bench: ${message}`);
    data.scaleSkipped = "no C compiler to build the C child";
  }
} else data.scaleSkipped = options.quick ? "--quick" : "--scale 0";

const tsChild: ChildSpec = { name: "ts", argv: [process.execPath, TS_CHILD] };
const child = options.child === "c" ? cChild! : tsChild;
data.childDescription =
  options.child === "c"
    ? "bench/child/echo.c (compiled, static) for every row"
    : `bench/child/echo.ts run by bun ${Bun.version} for the rows and the churn` + (cChild ? "; bench/child/echo.c (compiled, static) at the scale point" : "");

forgejo = await startFakeForgejo();
if (options.targets.includes("broker-previous")) {
  try {
    baseline = exportBaseline(options.baselineRef);
  } catch (error) {
    data.unavailable["broker-previous"] = error instanceof Error ? error.message : String(error);
  }
}
if (options.targets.includes("broker-otel")) otlpSink = startOtlpSink();
const ctx: MeasureContext = {
  forgejo,
  brokerLogLevel: options.brokerLogLevel,
  brokerFlags: options.brokerFlags,
  brokerWrapper: options.brokerWrapper,
  maxSessions: data.brokerCaps,
  previousEntry: baseline?.entry,
  otlpSinkUrl: otlpSink?.url,
  directSessions,
  directEnv: { PATH: process.env.PATH ?? "/usr/bin:/bin", FORGEJO_URL: forgejo.url, FORGEJO_ACCESS_TOKEN: "bench-token-unused" },
};

// Is each gateway measurable at all? One start, probe and stop; an unavailable target keeps its row
// with the reason and the other targets still run.
for (const target of options.targets) {
  if (target === "direct" || data.unavailable[target] !== undefined) continue;
  try {
    const gateway = await startGateway(target, child, ctx);
    const progress = gateway.progressNotifications;
    await gateway.stop();
    log(`bench: ${target} answers MCP (progress notifications for one call: ${progress})`);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    data.unavailable[target] = reason;
    log(`bench: ${target} unavailable: ${reason}${error instanceof Unavailable ? "" : " (harness error)"}`);
  }
}
const measurable = options.targets.filter((t) => data.unavailable[t] === undefined);

const fmt = (v: number | null | undefined, d = 1) => (v === null || v === undefined ? "—" : v.toFixed(d));
for (let round = 1; round <= options.rounds; round++) {
  // Each round starts one target further on, so none always runs first (an A/A run showed the first ~10% ahead).
  const shift = (round - 1) % measurable.length;
  const order = [...measurable.slice(shift), ...measurable.slice(0, shift)];
  for (const s of options.sessions) {
    for (const target of order) {
      const outcome = await measureLoad(target, child, s, options.calls, options.warmup, ctx);
      ((data.loads[s] ??= {})[target] ??= []).push(outcome);
      if (outcome.ok) {
        const v = outcome.value;
        log(
          `[round ${round}/${options.rounds}] S=${String(s).padEnd(3)} ${target.padEnd(18)} ${fmt(v.callsPerSecond, 0).padStart(7)} calls/s  p50 ${fmt(v.p50Ms, 3)} ms  p99 ${fmt(v.p99Ms, 3)} ms  set-up p50 ${fmt(v.setupP50Ms, 2)} ms  ` +
            `gw ${v.gatewayRssKb === null ? "—" : fmt(v.gatewayRssKb / 1024)} MiB  tree ${fmt(v.treeRssKb / 1024)} MiB  cpu/1k ${fmt(v.cpuPer1k, 3)} s (tree ${fmt(v.treeCpuPer1k, 3)} s)${v.bwrapProcesses ? `  bwrap ${v.bwrapProcesses}` : ""}${v.children === null ? "" : `  children ${v.children}`}  ok ${v.callsOk}/${v.callsRequested}${v.errors.length ? `  errors: ${v.errors[0]}` : ""}`,
        );
      } else log(`[round ${round}/${options.rounds}] S=${s} ${target}: failed: ${outcome.reason}`);
    }
  }
  if (options.churn > 0) {
    // Churn ends sessions; modern callers have none to end.
    for (const target of measurable.filter((t) => eraOf(t) === "legacy")) {
      const outcome = await measureChurn(target, child, options.churn, ctx);
      (data.churn[target] ??= []).push(outcome);
      if (outcome.ok) {
        const v = outcome.value;
        log(
          `[round ${round}/${options.rounds}] churn ${target.padEnd(18)} ${fmt(v.cyclesPerSecond)} cycles/s  cycle p50 ${fmt(v.cycleP50Ms, 2)} ms  ok ${v.ok}/${v.requested}  left after 1 s: ${v.leftAfter1s} (${v.zombiesAfter1s} zombies)${v.errors.length ? `  errors: ${v.errors[0]}` : ""}`,
        );
      } else log(`[round ${round}/${options.rounds}] churn ${target}: failed: ${outcome.reason}`);
    }
  }
}

if (options.scale > 0 && cChild !== null) {
  for (const target of options.scaleTargets) {
    if (data.unavailable[target] !== undefined) continue;
    log(`[scale] ${target}: ${options.scale} sessions…`);
    const outcome = await measureScale(target, cChild, options.scale, ctx);
    data.scale[target] = outcome;
    if (outcome.ok) {
      const v = outcome.value;
      log(`[scale] ${target}: ${v.opened}/${v.sessions} open, ${v.callsOk} answered, set-up p50 ${fmt(v.setupP50Ms, 1)} ms, all open in ${fmt(v.openSeconds, 2)} s${v.errors.length ? `, errors: ${v.errors[0]}` : ""}`);
    } else log(`[scale] ${target}: failed: ${outcome.reason}`);
  }
}

if (options.modernScale === 0) data.modernScaleSkipped = options.quick ? "--quick" : "--modern-scale 0";
else if (!measurable.includes("broker-modern")) data.modernScaleSkipped = data.unavailable["broker-modern"] ? `broker-modern unavailable: ${data.unavailable["broker-modern"]}` : "broker-modern not measured (--targets)";
else {
  log(`[modern scale] ${options.modernScale} callers over ${MODERN_SCALE_PRINCIPALS} tokens…`);
  data.modernScale = await measureModernScale(child, options.modernScale, MODERN_SCALE_PRINCIPALS, ctx);
  const o = data.modernScale;
  if (o.ok) log(`[modern scale] ${o.value.callsOk}/${o.value.callers} answered in ${fmt(o.value.seconds, 2)} s, ${o.value.children} children, ${o.value.bwrapProcesses} bwrap${o.value.errors.length ? `, errors: ${o.value.errors[0]}` : ""}`);
  else log(`[modern scale] failed: ${o.reason}`);
}

if (baseline !== undefined || otlpSink !== undefined) {
  data.tracing = { baselineRef: options.baselineRef, baselineCommit: baseline?.commit ?? null, sinkRequests: otlpSink?.received.requests ?? null, sinkBytes: otlpSink?.received.bytes ?? null };
}
data.wallSeconds = (performance.now() - started) / 1000;
data.loadAverageAtEnd = loadAverage();
await cleanup();

const markdown = renderMarkdown(data);
const out = resolve(REPO_ROOT, options.out);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, markdown + "\n");
writeFileSync(out.replace(/\.md$/, "") + ".json", JSON.stringify(data, null, 2) + "\n");
console.log(markdown);

// Nothing the run started may outlive it: list this process's descendants (zombies included).
await Bun.sleep(200);
const left = describeDescendants(process.pid);
log(`bench: report written to ${options.out} (and .json); processes left behind by the run: ${left.total}${left.total ? ` (${left.examples.join(", ")})` : ""}`);
// A FAIL is a finding, not a harness failure: the exit status only says whether the run was clean.
const failed = [...verdicts(data), ...modernVerdicts(data)].filter((v) => v.verdict === "FAIL").length;
if (failed > 0) log(`bench: ${failed} target(s) FAIL (see the Targets tables)`);
process.exit(left.total > 0 ? 1 : 0);

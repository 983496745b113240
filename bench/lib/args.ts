// The bench command line: rounds, session counts, calls, churn, the scale point, the child, the
// targets; --quick for a check in a few minutes. A pure function, so it can be tested alone.
import { parseArgs } from "node:util";

export const TARGETS = ["direct", "relay", "broker-previous", "broker", "broker-otel", "broker-modern", "broker-unsandboxed", "broker-replicas-1", "broker-replicas-3", "supergateway"] as const;
export type TargetName = (typeof TARGETS)[number];
/** Measured only when --targets names them: the broker of --baseline-ref, the broker tracing to an OTLP sink, and the brokers behind Caddy on PostgreSQL and Redis. */
const ONLY_WHEN_NAMED: readonly TargetName[] = ["broker-previous", "broker-otel", "broker-replicas-1", "broker-replicas-3"];
export const DEFAULT_TARGETS: TargetName[] = TARGETS.filter((t) => !ONLY_WHEN_NAMED.includes(t));
/** The replicated targets: how many broker processes each runs behind Caddy. */
export const REPLICA_TARGETS = { "broker-replicas-1": 1, "broker-replicas-3": 3 } as const satisfies Partial<Record<TargetName, number>>;
/** The scale point's default: the relay and the unsandboxed broker are references for the rows, allowed there only when asked for. */
export const SCALE_TARGETS: TargetName[] = ["direct", "broker", "supergateway"];

export interface BenchOptions {
  rounds: number;
  sessions: number[];
  /** Calls per measurement (one target at one S), split evenly over its S sessions. */
  calls: number;
  /** Untimed calls on one session of a fresh gateway before it is measured. */
  warmup: number;
  churn: number;
  /** Concurrent sessions at the scale point with the C child; 0 skips it. */
  scale: number;
  scaleTargets: TargetName[];
  /** Concurrent MCP 2026-07-28 callers at the modern scale point, spread over MODERN_SCALE_PRINCIPALS tokens; 0 skips it. */
  modernScale: number;
  child: "ts" | "c";
  targets: TargetName[];
  brokerLogLevel: string;
  /** Extra bun flags for the broker process (before src/index.ts), e.g. --cpu-prof. */
  brokerFlags: string[];
  /** A command the broker runs under (a profiler), split on whitespace. */
  brokerWrapper: string[];
  /** The git ref whose src/ the broker-previous target runs. */
  baselineRef: string;
  quick: boolean;
  out: string;
}

/** The modern scale point: its callers are spread over this many grants (one child each). */
export const MODERN_SCALE_PRINCIPALS = 10;

export const USAGE = `usage: bun run bench [-- options]

  --rounds N          rounds; targets alternate A B C D E A B C D E… and medians are reported (default 3)
  --sessions LIST     concurrent sessions per measurement (default 1,16,64)
  --calls N           calls per measurement, split evenly over its sessions (default 10000)
  --warmup N          untimed calls on one session of each fresh gateway first (default 200)
  --churn N           initialize → call → DELETE cycles per target and round (default 50)
  --scale N           concurrent sessions at the scale point, C child, one call each (default 1000; 0 skips)
  --scale-targets L   targets at the scale point (default direct,broker,supergateway; relay, broker-unsandboxed when listed)
  --modern-scale N    concurrent MCP 2026-07-28 callers over ${MODERN_SCALE_PRINCIPALS} tokens (grants) on one broker, one call each, the
                      rows' child (default 1000; 0 skips; needs the broker-modern target)
  --child ts|c        the child for the rows and the churn: the bun one (ts, default) or the C one
  --targets LIST      default direct,relay,broker,broker-modern,broker-unsandboxed,supergateway (relay: the bare Bun relay, bench/relay;
                      broker runs its children in the bubblewrap sandbox, broker-unsandboxed with BROKER_CHILD_SANDBOX=none;
                      broker-modern: the sandboxed broker driven by MCP 2026-07-28 callers on one token, so one child;
                      only when listed: broker-previous, the broker of --baseline-ref, and broker-otel, this broker with
                      OTEL_EXPORTER_OTLP_ENDPOINT set to a sink the harness runs: the tracing cost, off and on; and
                      broker-replicas-1, broker-replicas-3: 1 or 3 broker processes on one PostgreSQL database and one
                      Redis (127.0.0.1:5432 and :6379) behind Caddy with deploy/Caddyfile, measured through Caddy)
  --baseline-ref REF  the git ref broker-previous runs (its src/, exported to a temporary directory; default main)
  --broker-log-level  BROKER_LOG_LEVEL for the broker (default warn: supergateway runs with --logLevel none)
  --broker-flags F    extra bun flags for the broker, e.g. "--cpu-prof --cpu-prof-md --cpu-prof-dir=/tmp/prof"
  --broker-wrapper W  run the broker under command W (a profiler); the figures then describe W's process (valgrind cannot run bun 1.4.5: see bench/README.md)
  --quick             1 round, sessions 1,16, 500 calls, 10 churn cycles, no scale points
  --out FILE          the markdown report (default bench/results/latest.md; --quick: bench/results/quick.md)
  --help`;

export type Parsed = { kind: "run"; options: BenchOptions } | { kind: "help" } | { kind: "error"; message: string };

function positive(name: string, raw: string | undefined, fallback: number, min = 1, max = 1_000_000): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) throw new Error(`--${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

function targetList(name: string, raw: string | undefined, fallback: TargetName[]): TargetName[] {
  if (raw === undefined) return fallback;
  const list = raw.split(",").map((s) => s.trim()).filter(Boolean);
  for (const item of list) if (!(TARGETS as readonly string[]).includes(item)) throw new Error(`--${name}: unknown target ${JSON.stringify(item)} (known: ${TARGETS.join(", ")})`);
  // Keep the canonical order, so the rounds always go direct, relay, broker, supergateway.
  return TARGETS.filter((t) => list.includes(t));
}

export function parseBenchArgs(argv: string[]): Parsed {
  const args = argv.filter((a) => a !== "--");
  try {
    const { values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        rounds: { type: "string" },
        sessions: { type: "string" },
        calls: { type: "string" },
        warmup: { type: "string" },
        churn: { type: "string" },
        scale: { type: "string" },
        "scale-targets": { type: "string" },
        "modern-scale": { type: "string" },
        child: { type: "string" },
        targets: { type: "string" },
        "broker-log-level": { type: "string" },
        "broker-flags": { type: "string" },
        "broker-wrapper": { type: "string" },
        "baseline-ref": { type: "string" },
        quick: { type: "boolean" },
        out: { type: "string" },
        help: { type: "boolean" },
      },
    });
    if (values.help) return { kind: "help" };
    const quick = values.quick === true;
    const sessions = values.sessions === undefined ? (quick ? [1, 16] : [1, 16, 64]) : values.sessions.split(",").map((s) => positive("sessions", s.trim(), 1, 1, 10_000));
    const child = values.child ?? "ts";
    if (child !== "ts" && child !== "c") throw new Error(`--child must be ts or c, got ${JSON.stringify(child)}`);
    const level = values["broker-log-level"] ?? "warn";
    if (!["debug", "info", "warn", "error"].includes(level)) throw new Error(`--broker-log-level must be debug, info, warn or error`);
    return {
      kind: "run",
      options: {
        rounds: positive("rounds", values.rounds, quick ? 1 : 3, 1, 100),
        sessions,
        calls: positive("calls", values.calls, quick ? 500 : 10_000, 1, 10_000_000),
        warmup: positive("warmup", values.warmup, 200, 0),
        churn: positive("churn", values.churn, quick ? 10 : 50, 0, 100_000),
        scale: positive("scale", values.scale, quick ? 0 : 1000, 0, 20_000),
        scaleTargets: targetList("scale-targets", values["scale-targets"], [...SCALE_TARGETS]),
        modernScale: positive("modern-scale", values["modern-scale"], quick ? 0 : 1000, 0, 4000),
        child,
        targets: targetList("targets", values.targets, [...DEFAULT_TARGETS]),
        brokerLogLevel: level,
        brokerFlags: (values["broker-flags"] ?? "").split(/\s+/).filter(Boolean),
        brokerWrapper: (values["broker-wrapper"] ?? "").split(/\s+/).filter(Boolean),
        baselineRef: values["baseline-ref"] ?? "main",
        quick,
        out: values.out ?? (quick ? "bench/results/quick.md" : "bench/results/latest.md"),
      },
    };
  } catch (error) {
    return { kind: "error", message: error instanceof Error ? error.message : String(error) };
  }
}

// The bench's command line: which targets a run measures, in which order, and what the scale
// point takes by default now that the bare relay and the unsandboxed broker are targets.
import { expect, test } from "bun:test";
import { parseBenchArgs, type TargetName } from "../../bench/lib/args.ts";

function targetsOf(argv: string[]): { targets: TargetName[]; scaleTargets: TargetName[] } | string {
  const parsed = parseBenchArgs(argv);
  if (parsed.kind === "error") return parsed.message;
  if (parsed.kind !== "run") throw new Error(`expected a run, got ${parsed.kind}`);
  return { targets: parsed.options.targets, scaleTargets: parsed.options.scaleTargets };
}

const cases: { argv: string[]; targets: TargetName[]; scaleTargets: TargetName[] }[] = [
  { argv: [], targets: ["direct", "relay", "broker", "broker-modern", "broker-unsandboxed", "supergateway"], scaleTargets: ["direct", "broker", "supergateway"] },
  { argv: ["--quick"], targets: ["direct", "relay", "broker", "broker-modern", "broker-unsandboxed", "supergateway"], scaleTargets: ["direct", "broker", "supergateway"] },
  // The two brokers next to each other in every round, whatever order they were named in.
  { argv: ["--targets", "broker-unsandboxed,broker"], targets: ["broker", "broker-unsandboxed"], scaleTargets: ["direct", "broker", "supergateway"] },
  // The legacy and the modern broker alternate within each round, measured with the same child.
  { argv: ["--targets", "broker-modern,broker"], targets: ["broker", "broker-modern"], scaleTargets: ["direct", "broker", "supergateway"] },
  // Any order on the command line, the canonical order in the run.
  { argv: ["--targets", "broker,relay,direct"], targets: ["direct", "relay", "broker"], scaleTargets: ["direct", "broker", "supergateway"] },
  { argv: ["--targets", " relay , ,supergateway"], targets: ["relay", "supergateway"], scaleTargets: ["direct", "broker", "supergateway"] },
  { argv: ["--", "--targets", "relay"], targets: ["relay"], scaleTargets: ["direct", "broker", "supergateway"] },
  // The tracing cost: the previous commit's broker, this one with tracing off and on, next to each other in every round.
  { argv: ["--targets", "broker-otel,broker,broker-previous"], targets: ["broker-previous", "broker", "broker-otel"], scaleTargets: ["direct", "broker", "supergateway"] },
  // One and three replicas behind Caddy: only when named, next to each other in every round.
  { argv: ["--targets", "broker-replicas-3,broker-replicas-1"], targets: ["broker-replicas-1", "broker-replicas-3"], scaleTargets: ["direct", "broker", "supergateway"] },
  // The relay and the unsandboxed broker are allowed at the scale point when asked for.
  { argv: ["--scale-targets", "supergateway,relay"], targets: ["direct", "relay", "broker", "broker-modern", "broker-unsandboxed", "supergateway"], scaleTargets: ["relay", "supergateway"] },
  { argv: ["--scale-targets", "broker-unsandboxed,broker"], targets: ["direct", "relay", "broker", "broker-modern", "broker-unsandboxed", "supergateway"], scaleTargets: ["broker", "broker-unsandboxed"] },
];

for (const { argv, targets, scaleTargets } of cases) {
  test(`targets for ${JSON.stringify(argv)}`, () => {
    expect(targetsOf(argv)).toEqual({ targets, scaleTargets });
  });
}

test.each([
  [["--targets", "relay,nginx"], '--targets: unknown target "nginx" (known: direct, relay, broker-previous, broker, broker-otel, broker-modern, broker-unsandboxed, broker-replicas-1, broker-replicas-3, supergateway)'],
  [["--scale-targets", "Relay"], '--scale-targets: unknown target "Relay" (known: direct, relay, broker-previous, broker, broker-otel, broker-modern, broker-unsandboxed, broker-replicas-1, broker-replicas-3, supergateway)'],
])("rejects %j", (argv, message) => {
  expect(targetsOf(argv)).toBe(message);
});

test("--baseline-ref names the commit broker-previous runs; main by default", () => {
  const of = (argv: string[]) => {
    const parsed = parseBenchArgs(argv);
    if (parsed.kind !== "run") throw new Error(parsed.kind);
    return parsed.options.baselineRef;
  };
  expect(of([])).toBe("main");
  expect(of(["--baseline-ref", "HEAD~3"])).toBe("HEAD~3");
});

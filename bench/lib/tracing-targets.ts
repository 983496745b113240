// What the tracing-cost targets need besides a broker: broker-previous's source, exported from a git ref
// into a temporary directory (the checkout stays as it is), and the OTLP/HTTP sink broker-otel sends its spans to.
import { mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT, Unavailable } from "./gateways.ts";

export interface Baseline {
  /** Its src/index.ts. */
  entry: string;
  /** The commit the ref named, short. */
  commit: string;
  remove(): void;
}

/** `ref`'s src/, its migrations, package.json and the TypeScript and bun settings (so both brokers are transpiled alike) under a temporary directory, with this checkout's node_modules linked in. */
export function exportBaseline(ref: string): Baseline {
  const resolved = Bun.spawnSync(["git", "rev-parse", "--short", "--verify", `${ref}^{commit}`], { cwd: REPO_ROOT, stdout: "pipe", stderr: "pipe" });
  if (resolved.exitCode !== 0) throw new Unavailable(`--baseline-ref ${ref} is not a commit here`);
  const commit = resolved.stdout.toString().trim();
  const dir = mkdtempSync(join(tmpdir(), "fmb-bench-baseline-"));
  const archive = Bun.spawnSync(["sh", "-c", `git archive "$1" src drizzle package.json tsconfig.json bunfig.toml | tar -x -C "$2"`, "sh", commit, dir], { cwd: REPO_ROOT, stderr: "pipe" });
  if (archive.exitCode !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Unavailable(`could not export ${ref}: ${archive.stderr.toString().trim()}`);
  }
  symlinkSync(join(REPO_ROOT, "node_modules"), join(dir, "node_modules"));
  return { entry: join(dir, "src/index.ts"), commit, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface OtlpSink {
  url: string;
  /** Export requests and bytes received: proof that broker-otel traced. */
  readonly received: { requests: number; bytes: number };
  stop(): void;
}

/** Accepts every POST /v1/traces and keeps only their count and size. */
export function startOtlpSink(): OtlpSink {
  const received = { requests: 0, bytes: 0 };
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: async (request) => {
      received.requests++;
      received.bytes += (await request.arrayBuffer()).byteLength;
      return Response.json({});
    },
  });
  return { url: `http://127.0.0.1:${server.port}`, received, stop: () => void server.stop(true) };
}

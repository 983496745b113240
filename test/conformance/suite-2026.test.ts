// The MCP conformance suite's 2026-07-28 server scenarios (0.2.0-alpha.12, pinned as conformance-2026)
// through the broker's modern path with a legacy child: every scenario fails exactly where the
// baseline says (each line there names the part of issue 14 it waits for), with no 429 and nothing left.
import { expect, test } from "bun:test";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..", "..");
const HARNESS = join(ROOT, "bench", "conformance.ts");
const BASELINE = join(ROOT, "bench", "conformance-2026-expected.yaml");

test("the 2026-07-28 server scenarios fail through the broker exactly where the baseline says, with no 429 and nothing left running", async () => {
  const run = Bun.spawn([process.execPath, HARNESS, "--spec-version", "2026-07-28", "--expected-failures", BASELINE, "--timeout-s", "120"], {
    env: { PATH: process.env.PATH ?? "" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [status, stdout, stderr] = await Promise.all([run.exited, new Response(run.stdout).text(), new Response(run.stderr).text()]);
  const report = stdout + stderr;
  expect(report).toMatch(/scenarios passed:\s+\d+\/37;/);
  expect(report).toMatch(/baseline:\s+\d+ failing as listed; not listed: none; listed but passing: none/);
  expect(report).toMatch(/suite exit status 0/);
  expect(report).toMatch(/429 from the broker: 0 /);
  expect(report).toMatch(/nothing left running/);
  expect(status, report).toBe(0);
}, 180_000);

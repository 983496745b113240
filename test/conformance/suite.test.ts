// The MCP conformance suite (@modelcontextprotocol/conformance, server scenarios) through the broker as
// one signed-in user runs it: one token, no DELETE between scenarios, so a session cap that refused
// abandoned sessions would fail every scenario past the twentieth.
import { expect, test } from "bun:test";
import { join } from "node:path";

const HARNESS = join(import.meta.dir, "..", "..", "bench", "conformance.ts");

test("every server scenario passes through the broker at the default caps, with no 429 and nothing left running", async () => {
  const run = Bun.spawn([process.execPath, HARNESS, "--timeout-s", "240"], {
    env: { PATH: process.env.PATH ?? "" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [status, stdout, stderr] = await Promise.all([run.exited, new Response(run.stdout).text(), new Response(run.stderr).text()]);
  const report = stdout + stderr;
  const score = /scenarios passed:\s+(\d+)\/(\d+)/.exec(report);
  expect(score, report).not.toBeNull();
  const [passed, total] = [Number(score![1]), Number(score![2])];
  expect(total, report).toBeGreaterThanOrEqual(32);
  expect(passed, report).toBe(total);
  // More sessions than BROKER_MAX_SESSIONS_PER_USER (20) were opened and none was deleted.
  expect(report).toMatch(/sessions started:\s+(2[1-9]|[3-9]\d|\d{3,}) for one user \(BROKER_MAX_SESSIONS_PER_USER=20\); DELETEs received: 0/);
  expect(report).toMatch(/429 from the broker: 0 /);
  expect(report).toMatch(/nothing left running/);
  expect(status, report).toBe(0);
}, 300_000);

// The loadtest command as an operator meets it: run as a subprocess for exit statuses and
// messages, in-process for the table and the progress line.

import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { main, type CliDeps, type CliReport } from "../../src/loadtest/cli.ts";
import { churnLine, loadLine, startProgress } from "../../src/loadtest/progress.ts";
import { newLiveCounters } from "../../src/loadtest/run.ts";
import { startMcpServer, type TestServer } from "./mcp-server.ts";

const CLI = join(import.meta.dir, "../../src/loadtest/cli.ts");

let server: TestServer | undefined;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

// Bun's default cap on concurrent fetches, whatever the environment running the tests says.
const { BUN_CONFIG_MAX_HTTP_REQUESTS: _, ...defaultEnv } = process.env;

function spawnCli(args: string[], env: Record<string, string | undefined> = defaultEnv) {
  return Bun.spawn([process.execPath, CLI, ...args], { env, stdout: "pipe", stderr: "pipe" });
}

async function runCli(args: string[]) {
  const child = spawnCli(args);
  const [stdout, stderr, code] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  return { stdout, stderr, code };
}

async function closedPortUrl(): Promise<string> {
  const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response() });
  const url = `http://127.0.0.1:${probe.port}/mcp`;
  await probe.stop(true);
  return url;
}

test("a refused token exits 2, says so and shows the WWW-Authenticate challenge", async () => {
  server = startMcpServer({ json: true, token: "right" });
  const { stderr, code } = await runCli(["--url", server.url, "--token", "wrong", "--sessions", "2", "--calls", "3"]);

  expect(code).toBe(2);
  expect(stderr).toContain(`${server.url} refused the token`);
  expect(stderr).toContain('WWW-Authenticate: Bearer resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource"');
});

test("no token at all against a guarded server suggests giving one", async () => {
  server = startMcpServer({ json: true, token: "right" });
  const { stderr, code } = await runCli(["--url", server.url]);

  expect(code).toBe(2);
  expect(stderr).toContain("no token was given: pass --token or --token-file");
});

test("an unreachable URL exits 2 and names the URL and the cause", async () => {
  const url = await closedPortUrl();
  const { stderr, code } = await runCli(["--url", url, "--sessions", "2"]);

  expect(code).toBe(2);
  expect(stderr).toContain(`cannot reach ${url}: `);
  expect(stderr).toMatch(/ECONNREFUSED|ConnectionRefused/);
});

test.each([
  [["--sessions", "3"], "--url is required"],
  [["--url", "ftp://x/mcp"], "--url must be an http or https URL"],
  [["--url", "http://x/mcp", "--sessions", "0"], "--sessions must be a whole number ≥ 1"],
  [["--url", "http://x/mcp", "--calls", "many"], "--calls must be a whole number ≥ 0"],
  [["--url", "http://x/mcp", "--args", "{oops"], "--args is not JSON"],
  [["--url", "http://x/mcp", "--args", "[1]"], "--args must be a JSON object"],
  [["--url", "http://x/mcp", "--token", "a", "--token-file", "f"], "not both"],
  [["--url", "http://x/mcp", "--sesions", "3"], "--sesions"],
  [["--url", "http://x/mcp", "--era", "2026"], '--era must be legacy or modern, got "2026"'],
  [["--url", "http://x/mcp", "--sessions", "1000", "--calls", "1000000"], "at most 100000000"],
])("bad flags %p exit 2 with %p and the usage", async (args, message) => {
  const { stderr, code } = await runCli(args);

  expect(code).toBe(2);
  expect(stderr).toContain(message);
  expect(stderr).toContain("usage: bun run loadtest -- --url <mcp url>");
});

test("--json writes the full result, without the token; --token-file is read", async () => {
  server = startMcpServer({ json: false, token: "s3cret-token" });
  const dir = mkdtempSync(join(tmpdir(), "loadtest-"));
  const tokenFile = join(dir, "token");
  writeFileSync(tokenFile, "s3cret-token\n");
  const jsonFile = join(dir, "out.json");
  const args = ["--", "--url", server.url, "--token-file", tokenFile, "--sessions", "3", "--calls", "5", "--churn", "4"];
  const { stdout, code } = await runCli([...args, "--json", jsonFile]);

  expect(code).toBe(0);
  expect(stdout).toContain("calls ok");
  const text = readFileSync(jsonFile, "utf8");
  expect(text).not.toContain("s3cret-token");
  const report = JSON.parse(text) as CliReport;
  expect(report.options).toMatchObject({ url: server.url, authenticated: true, load: { sessions: 3, calls: 5 }, churn: 4 });
  expect(report.load).toMatchObject({
    stop: { reason: "completed" },
    protocolVersion: "2025-11-25",
    sessions: { requested: 3, opened: 3 },
    calls: { requested: 15, ok: 15, failed: 0 },
    errors: [],
  });
  expect(report.load?.calls.latencyMs).toMatchObject({ count: 15, p50: expect.any(Number), p999: expect.any(Number) });
  expect(report.churn).toMatchObject({ stop: { reason: "completed" }, cycles: { ok: 4, deletes: 4 } });
  expect(server.counts.deletes).toBe(3 + 4);
});

test("--churn alone runs only the churn", async () => {
  server = startMcpServer({ json: true });
  const { stdout, code } = await runCli(["--url", server.url, "--churn", "2"]);

  expect(code).toBe(0);
  expect(stdout).toContain("cycles ok  2 / 2");
  expect(stdout).not.toContain("calls ok");
  expect(server.counts.initialize).toBe(2);
});

test("failed calls make the exit status 1 and are listed by kind", async () => {
  server = startMcpServer({ json: true });
  const { stdout, code } = await runCli(["--url", server.url, "--calls", "3", "--tool", "fail", "--args", "{}"]);

  expect(code).toBe(1);
  expect(stdout).toMatch(/tool isError\s+3/);
});

test("Ctrl-C prints what was measured so far and exits 130", async () => {
  server = startMcpServer({ json: true });
  const child = spawnCli(["--url", server.url, "--sessions", "2", "--calls", "100000"]);
  const stdout = new Response(child.stdout).text();
  while (server.counts.toolCalls < 10) await Bun.sleep(10);
  child.kill("SIGINT");

  expect(await child.exited).toBe(130);
  const text = await stdout;
  expect(text).toContain("interrupted: the figures cover what was measured before Ctrl-C");
  expect(text).toMatch(/calls ok\s+[1-9]\d* \/ 200000/);
  // The sessions were still closed on the way out.
  expect(server.openSessions()).toBe(0);
});

function memoryDeps(isTTY: boolean): CliDeps & { out: string[] } {
  const out: string[] = [];
  return {
    out,
    fetch,
    now: () => performance.now(),
    stdout: { write: (text) => void out.push(text), isTTY },
    stderr: { write: (text) => void out.push(text) },
    readFile: async () => "",
    writeFile: async () => {},
    signal: new AbortController().signal,
    maxConcurrentRequests: 256,
  };
}

test("without a terminal there is no progress line, only the table", async () => {
  server = startMcpServer({ json: true });
  const deps = memoryDeps(false);

  expect(await main(["--url", server.url, "--sessions", "2", "--calls", "3"], deps)).toBe(0);
  const text = deps.out.join("");
  expect(text).not.toContain("\r");
  expect(text).toMatch(/^load: 2 sessions × 3 calls of echo at /);
  expect(text).toMatch(/calls ok\s+6 \/ 6\n/);
});

test("more sessions than fetch sends at once is refused, naming the variable that lifts the cap", async () => {
  const { stderr, code } = await runCli(["--url", "http://127.0.0.1:1/mcp", "--sessions", "300", "--calls", "1"]);

  expect(code).toBe(2);
  expect(stderr).toContain("BUN_CONFIG_MAX_HTTP_REQUESTS=300 bun run loadtest");
});

test("with BUN_CONFIG_MAX_HTTP_REQUESTS raised, 300 sessions open", async () => {
  server = startMcpServer({ json: true });
  const child = spawnCli(["--url", server.url, "--sessions", "300", "--calls", "1"], {
    ...defaultEnv,
    BUN_CONFIG_MAX_HTTP_REQUESTS: "300",
  });
  const stdout = await new Response(child.stdout).text();

  expect(await child.exited).toBe(0);
  expect(stdout).toMatch(/sessions opened\s+300 \/ 300/);
});

test("the progress line shows sessions open, calls done, the rate and errors", () => {
  const live = { ...newLiveCounters(), sessionsOpen: 16, callsDone: 1234, errors: 2, cyclesDone: 7 };

  expect(loadLine(live, 16, 16_000, 5321.4)).toBe("sessions 16/16 open · calls 1234/16000 · 5321 calls/s · errors 2");
  expect(churnLine(live, 50, 88.6)).toBe("churn 7/50 cycles · 89 cycles/s · errors 2");
});

test("the progress line is redrawn in place and erased when the run ends", async () => {
  const writes: string[] = [];
  let done = 0;
  const stop = startProgress((rate) => `done ${done} at ${rate}/s`, () => done, { write: (t) => void writes.push(t) }, () => performance.now(), 1);
  done = 5;
  while (writes.length === 0) await Bun.sleep(2);
  stop();

  expect(writes[0]).toMatch(/^\rdone 5 at [\d.]+\/s\x1b\[K$/);
  expect(writes.at(-1)).toBe("\r\x1b[K");
});

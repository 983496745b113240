// runLoad as the package exports it: the figures of a run as a value, nothing printed unless asked.
import { afterAll, beforeAll, expect, spyOn, test } from "bun:test";
import { runLoad } from "../../src/loadtest/index.ts";
import { signIn, startBroker, startForgejoStandIn, type ForgejoStandIn, type TestingBroker } from "../../src/testing/index.ts";

let forgejo: ForgejoStandIn;
let broker: TestingBroker;
let token: string;

beforeAll(async () => {
  forgejo = await startForgejoStandIn({ users: ["alice"] });
  broker = await startBroker({ forgejo });
  token = (await signIn(broker, { user: "alice" })).accessToken;
});
afterAll(async () => {
  await broker.stop();
  await forgejo.stop();
});

test("runLoad returns the run's figures and writes nothing to stdout", async () => {
  const stdout = spyOn(process.stdout, "write");
  try {
    const result = await runLoad({ url: broker.mcpUrl, token, sessions: 2, calls: 3 });
    expect(result.stop).toEqual({ reason: "completed" });
    expect(result.sessions).toMatchObject({ requested: 2, opened: 2, failed: 0 });
    expect(result.calls).toMatchObject({ requested: 6, ok: 6, failed: 0 });
    expect(result.calls.latencyMs.count).toBe(6);
    expect(stdout).not.toHaveBeenCalled();
  } finally {
    stdout.mockRestore();
  }
}, 30_000);

test("print: a function gets the command's table", async () => {
  const printed: string[] = [];
  const result = await runLoad({ url: broker.mcpUrl, token, sessions: 1, calls: 2, print: (text) => printed.push(text) });
  expect(result.calls.ok).toBe(2);
  expect(printed.join("")).toContain("calls");
}, 30_000);

test("a refused token stops the run with the reason, as the command reports it", async () => {
  const result = await runLoad({ url: broker.mcpUrl, token: "not-a-token", sessions: 1, calls: 1 });
  expect(result.stop.reason).toBe("unauthorized");
}, 30_000);

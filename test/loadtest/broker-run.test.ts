// runLoad in both eras against a real broker with the stand-in child: modern callers on one token share
// one principal child and open no session; legacy sessions each get their own; both answer every call.

import { afterAll, beforeAll, expect, test } from "bun:test";
import { runLoad, type RunDeps } from "../../src/loadtest/run.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, outermost, processesMatching } from "../helpers/mcp.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";

const deps: RunDeps = { fetch, now: () => performance.now() };
const marker = `--loadtest-${crypto.randomUUID()}`;
let t: TestBroker;
let token: string;

beforeAll(async () => {
  t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand(marker) } });
  token = (await obtainTokens(t.config.publicUrl)).accessToken;
});
afterAll(async () => {
  await t.stop();
  expect(await processesMatching(marker)).toEqual([]);
});

test("--era modern: 8 callers × 5 calls on one token, all answered by one principal child, no session opened", async () => {
  const sessionsBefore = t.broker.registry.size;
  const result = await runLoad({ url: t.mcpUrl, token, era: "modern", sessions: 8, calls: 5 }, deps);

  expect(result.stop).toEqual({ reason: "completed" });
  expect(result.errors).toEqual([]);
  expect(result.protocolVersion).toBe("2026-07-28");
  expect(result.sessions).toMatchObject({ requested: 8, opened: 8, failed: 0 });
  expect(result.calls).toMatchObject({ requested: 40, ok: 40, failed: 0 });
  expect(t.broker.principals.size).toBe(1);
  expect(t.broker.registry.size).toBe(sessionsBefore);
  expect(outermost(await processesMatching(marker))).toHaveLength(1);
});

test("--era legacy against the same broker: 3 sessions, each initialized, all calls answered, all closed", async () => {
  const result = await runLoad({ url: t.mcpUrl, token, era: "legacy", sessions: 3, calls: 5 }, deps);

  expect(result.errors).toEqual([]);
  expect(result.protocolVersion).toBe("2025-11-25");
  expect(result.calls).toMatchObject({ requested: 15, ok: 15 });
  expect(t.broker.registry.size).toBe(0);
});

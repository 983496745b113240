// What the principal children tell the metrics and their lifecycle watcher, with fake children and time: each way a
// child ends is counted once under its own reason, even when a retired child is later stopped by the shutdown.
import { describe, expect, test } from "bun:test";
import { createMemoryLogger } from "../../src/log.ts";
import { PrincipalChildren, type PrincipalChildEntry, type PrincipalChildrenDeps } from "../../src/modern/principals.ts";
import type { ChildExitReason } from "../../src/observability/metrics.ts";
import { SessionRegistry } from "../../src/session/registry.ts";
import { recordingMetrics } from "../helpers/recording-metrics.ts";
import { FakeChild, FakeTimers, fakeSessionConfig, initializingChild, settle } from "../bridge/fakes.ts";

const HOUR = 3_600_000;
const ALICE = { grantId: "grant-a", forgejoUserId: 1, clientId: "client" };
const ALICE_ELSEWHERE = { grantId: "grant-b", forgejoUserId: 1, clientId: "other-client" };

function setup(options: { maxSessionsPerUser?: number; expiresInMs?: number; lifecycle?: PrincipalChildrenDeps["lifecycle"] } = {}) {
  const timers = new FakeTimers();
  const children: FakeChild[] = [];
  const { metrics, recorded } = recordingMetrics();
  const config = fakeSessionConfig({ maxSessionsPerUser: options.maxSessionsPerUser ?? 3 });
  const spawn = () => {
    const child = initializingChild();
    children.push(child);
    return child;
  };
  let live = true;
  const upstreamToken = async () => ({ token: "t", expiresAt: timers.now() + (options.expiresInMs ?? 10 * HOUR) });
  const logger = createMemoryLogger();
  const registry = new SessionRegistry({ config, spawn, upstreamToken, logger, timers, reapIntervalMs: 10_000, metrics });
  const principals: PrincipalChildren = new PrincipalChildren({
    config,
    spawn,
    upstreamToken,
    limits: registry.shareLimits(() => principals.capped()),
    grantIsLive: async () => live,
    logger,
    timers,
    reapIntervalMs: 10_000,
    metrics,
    childEra: "legacy",
    childCommand: "fake",
    lifecycle: options.lifecycle,
  });
  return { principals, registry, timers, children, recorded, revoke: () => void (live = false) };
}

describe("a principal's child ending, by reason", () => {
  // At the per-user cap of one: a rotation's successor takes over its predecessor's slot, evicting nobody.
  const cases: { cause: string; end: (s: ReturnType<typeof setup>) => Promise<unknown> | unknown; reason: ChildExitReason; expiresInMs?: number }[] = [
    { cause: "idle for the idle timeout", end: (s) => s.timers.advance(910_000), reason: "idle" },
    { cause: "its process exited by itself", end: (s) => s.children[0]!.exit({ code: 1 }), reason: "crashed" },
    { cause: "every token of its grant revoked", end: (s) => (s.revoke(), s.principals.grantRevoked(ALICE.grantId)), reason: "revoked" },
    { cause: "the user's Forgejo token refreshed", end: (s) => s.principals.userTokenRotated(1), reason: "rotated" },
    // Due 5 minutes before it expires, before the 15-minute idle reap.
    { cause: "its token due for a refresh", end: (s) => s.timers.advance(300_000), reason: "rotated", expiresInMs: 600_000 },
    { cause: "the broker shuts down", end: (s) => s.principals.shutdown(), reason: "shutdown" },
    { cause: "another grant of the user at the per-user cap", end: (s) => s.principals.childFor(ALICE_ELSEWHERE), reason: "evicted" },
  ];
  for (const { cause, end, reason, expiresInMs } of cases) {
    test(`${cause}: one exit reason=${reason}`, async () => {
      const s = setup({ maxSessionsPerUser: 1, expiresInMs });
      await s.principals.childFor(ALICE);
      expect(s.recorded).toEqual(["start:ok"]);
      await end(s);
      await settle();
      expect(s.recorded.filter((line) => line.startsWith("exit:"))).toEqual([`exit:${reason}`]);
      expect(s.recorded.filter((line) => line.startsWith("evicted:"))).toEqual(reason === "evicted" ? ["evicted:user"] : []);
    });
  }

  test("a child retired for a new token while the broker shuts down counts once, as rotated; its successor once, as shutdown", async () => {
    const s = setup();
    await s.principals.childFor(ALICE);
    s.principals.userTokenRotated(1);
    await s.principals.shutdown();
    expect(s.recorded.filter((line) => line.startsWith("start:"))).toEqual(["start:ok", "start:ok"]);
    expect(s.recorded.filter((line) => line.startsWith("exit:")).sort()).toEqual(["exit:rotated", "exit:shutdown"]);
  });
});

describe("the lifecycle watcher (the principal directory)", () => {
  const ends: [string, (s: ReturnType<typeof setup>) => Promise<unknown> | unknown][] = [
    ["reaped, idle for the idle timeout", (s) => s.timers.advance(910_000)],
    ["its process exited by itself", (s) => s.children[0]!.exit({ code: 1 })],
    ["every token of its grant revoked", (s) => (s.revoke(), s.principals.grantRevoked(ALICE.grantId))],
    ["retired for a new token: its successor is told as it serves", (s) => s.principals.userTokenRotated(1)],
    ["the broker shuts down", (s) => s.principals.shutdown()],
  ];
  test.each(ends)("%s: told once the child serves, and once its process has exited", async (_, end) => {
    const told: string[] = [];
    const said = (what: string, entry: PrincipalChildEntry) => `${what} ${entry.child.childPid} ${entry.grantId} ${entry.clientId} ${entry.childEra} ${entry.serving ? "serving" : "not serving"}`;
    const s = setup({ lifecycle: { running: (entry) => told.push(said("running", entry)), exited: (entry) => told.push(said("exited", entry)) } });
    await s.principals.childFor(ALICE);
    const first = s.children[0]!.pid;
    expect(told).toEqual([`running ${first} grant-a client legacy serving`]);
    await end(s);
    await settle();
    const successors = s.principals.list().map((entry) => said("running", entry));
    expect(told).toEqual([`running ${first} grant-a client legacy serving`, ...successors, `exited ${first} grant-a client legacy not serving`]);
  });
});

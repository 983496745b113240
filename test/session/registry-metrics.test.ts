// What the registry tells its metrics, with fake children and time: each way a session ends is counted
// once under its own reason, and child starts and evictions by the cap that made room.
import { describe, expect, test } from "bun:test";
import type { IncomingMessage } from "../../src/bridge/jsonrpc.ts";
import { createMemoryLogger } from "../../src/log.ts";
import type { ChildExitReason } from "../../src/observability/metrics.ts";
import { SessionRegistry, type SessionIdentity } from "../../src/session/registry.ts";
import { recordingMetrics } from "../helpers/recording-metrics.ts";
import { FakeChild, FakeTimers, initializingChild, settle } from "../bridge/fakes.ts";

const alice: SessionIdentity = { grantId: "grant-alice", forgejoUserId: 1, clientId: "claude" };
const initialize: IncomingMessage = (() => {
  const message = { jsonrpc: "2.0", id: 0, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "t", version: "1" } } };
  return { raw: JSON.stringify(message), message };
})();

function setup(options: { maxSessionsPerUser?: number; failStarts?: boolean } = {}) {
  const timers = new FakeTimers();
  const { metrics, recorded } = recordingMetrics();
  const children: FakeChild[] = [];
  let revoked = false;
  const registry = new SessionRegistry({
    config: {
      maxSessions: 10,
      maxSessionsPerUser: options.maxSessionsPerUser ?? 3,
      idleTimeoutMs: 60_000,
      refreshLeadMs: 0,
      requestTimeoutMs: 60_000,
      maxMessageBytes: 1_000_000,
      allowedOrigins: [],
    },
    spawn: () => {
      // A child that never answers initialize exits at once: a failed start.
      const child = options.failStarts ? new FakeChild({ onMessage: (_message, self) => self.exit({ code: 1 }) }) : initializingChild();
      children.push(child);
      return child;
    },
    upstreamToken: async () => ({ token: "upstream", expiresAt: null }),
    grantIsLive: async () => !revoked,
    logger: createMemoryLogger(),
    timers,
    reapIntervalMs: 1000,
    metrics,
  });
  return { registry, timers, recorded, children, revoke: () => void (revoked = true) };
}

describe("the registry's child exits, by reason", () => {
  const cases: { cause: string; end: (s: ReturnType<typeof setup>, id: string) => Promise<unknown> | unknown; reason: ChildExitReason }[] = [
    { cause: "DELETE", end: (s, id) => s.registry.delete(id), reason: "deleted" },
    { cause: "no request for the idle timeout", end: async (s) => (s.timers.advance(61_000), await settle()), reason: "idle" },
    { cause: "Forgejo refused the refresh (endUser)", end: (s) => s.registry.endUser(1), reason: "revoked" },
    { cause: "every token of the grant revoked", end: (s) => (s.revoke(), s.registry.grantRevoked("grant-alice")), reason: "revoked" },
    { cause: "the child exited by itself", end: async (s) => (s.children[0]!.exit({ code: 2 }), await settle()), reason: "crashed" },
    { cause: "the broker shuts down", end: (s) => s.registry.shutdown(), reason: "shutdown" },
    { cause: "the token rotated (a new child under the same session)", end: (s) => s.registry.rotateUser(1, "upstream-2"), reason: "rotated" },
  ];
  for (const { cause, end, reason } of cases) {
    test(`${cause}: one exit reason=${reason}`, async () => {
      const s = setup();
      const { entry } = await s.registry.create(alice, initialize);
      expect(s.recorded).toEqual(["start:ok"]);
      await end(s, entry.id);
      await settle();
      expect(s.recorded.filter((line) => line.startsWith("exit:"))).toEqual([`exit:${reason}`]);
      await s.registry.shutdown();
    });
  }

  test("a session beyond the user's cap: one eviction by the user cap and one exit evicted, besides the new start", async () => {
    const s = setup({ maxSessionsPerUser: 1 });
    await s.registry.create(alice, initialize);
    await s.registry.create(alice, initialize);
    expect(s.recorded).toEqual(["start:ok", "evicted:user", "exit:evicted", "start:ok"]);
    await s.registry.shutdown();
  });

  test("a child that exits before answering initialize counts one failed start and no exit", async () => {
    const s = setup({ failStarts: true });
    await expect(s.registry.create(alice, initialize)).rejects.toThrow();
    expect(s.recorded).toEqual(["start:failed"]);
  });
});

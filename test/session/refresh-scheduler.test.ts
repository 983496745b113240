// The refresh scheduler with fake time: a short-lived token is refreshed once per half its life, never
// sooner than the minimum spacing, and a user's sessions move to new children once per refresh, not in a loop.
import { describe, expect, test } from "bun:test";
import type { IncomingMessage } from "../../src/bridge/jsonrpc.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { RefreshScheduler } from "../../src/session/refresh-scheduler.ts";
import { SessionRegistry, type SessionIdentity } from "../../src/session/registry.ts";
import type { ChildSpec } from "../../src/supervisor/child.ts";
import { FakeTimers, initializingChild, settle } from "../bridge/fakes.ts";

const S = 1000;
const HOUR = 3600 * S;
const LEAD = 300 * S;
const ALICE = 1;

/** A scheduler whose refresh hands out tokens living `lifetimeMs` from the moment it runs; records when it ran. */
function setup(lifetimeMs: number, options: { minIntervalMs?: number } = {}) {
  const timers = new FakeTimers();
  const start = timers.now();
  const refreshedAt: number[] = [];
  const scheduler = new RefreshScheduler({
    timers,
    logger: createMemoryLogger(),
    leadMs: LEAD,
    minIntervalMs: options.minIntervalMs,
    retryMs: 30 * S,
    onDue: async () => {
      refreshedAt.push(timers.now() - start);
      return timers.now() + lifetimeMs;
    },
  });
  /** Moves the clock a second at a time, letting each refresh finish and schedule the next. */
  const runFor = async (ms: number) => {
    for (let passed = 0; passed < ms; passed += S) {
      timers.advance(S);
      await settle();
    }
  };
  return { timers, start, scheduler, refreshedAt, runFor };
}

describe("when a refresh is due", () => {
  test("a 20 s token with the default 300 s lead is refreshed every 10 s, once each time", async () => {
    const { timers, scheduler, refreshedAt, runFor } = setup(20 * S);
    scheduler.watch(ALICE, timers.now() + 20 * S);
    expect(scheduler.dueAt(ALICE)).toBe(timers.now() + 10 * S);
    await runFor(60 * S);
    expect(refreshedAt).toEqual([10, 20, 30, 40, 50, 60].map((s) => s * S));
    scheduler.close();
  });

  test("an hour-long token keeps the full lead", async () => {
    const { timers, scheduler, refreshedAt, runFor } = setup(HOUR);
    scheduler.watch(ALICE, timers.now() + HOUR);
    expect(scheduler.dueAt(ALICE)).toBe(timers.now() + HOUR - LEAD);
    await runFor(HOUR - LEAD);
    expect(refreshedAt).toEqual([HOUR - LEAD]);
    expect(scheduler.dueAt(ALICE)).toBe(timers.now() + HOUR - LEAD);
    scheduler.close();
  });

  test("tokens that expire sooner than the minimum spacing are still refreshed only that often", async () => {
    const { timers, scheduler, refreshedAt, runFor } = setup(S, { minIntervalMs: 5 * S });
    scheduler.watch(ALICE, timers.now() + S);
    await runFor(30 * S);
    expect(refreshedAt).toEqual([5, 10, 15, 20, 25, 30].map((s) => s * S));
    scheduler.close();
  });

  test("a token that comes back already expired is not refreshed again at once", async () => {
    const { timers, scheduler, refreshedAt, runFor } = setup(-10 * S, { minIntervalMs: 5 * S });
    scheduler.watch(ALICE, timers.now() + 20 * S);
    await runFor(20 * S);
    expect(refreshedAt).toEqual([10, 15, 20].map((s) => s * S));
    scheduler.close();
  });

  test("a session reporting a later expiry leaves the refresh where it is; an earlier one brings it forward", async () => {
    const { timers, scheduler } = setup(20 * S);
    scheduler.watch(ALICE, timers.now() + 20 * S);
    scheduler.watch(ALICE, timers.now() + 40 * S);
    expect(scheduler.dueAt(ALICE)).toBe(timers.now() + 10 * S);
    scheduler.watch(ALICE, timers.now() + 12 * S);
    expect(scheduler.dueAt(ALICE)).toBe(timers.now() + 6 * S);
    scheduler.close();
  });
});

describe("through the session registry", () => {
  const initialize: IncomingMessage = (() => {
    const message = {
      jsonrpc: "2.0",
      id: 0,
      method: "initialize",
      params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "test", version: "1" } },
    };
    return { raw: JSON.stringify(message), message };
  })();

  test("with 20 s tokens, each of a user's sessions moves to a new child once per refresh, every 10 s", async () => {
    const timers = new FakeTimers();
    const spawned: ChildSpec[] = [];
    let refreshes = 0;
    const registry = new SessionRegistry({
      config: {
        maxSessions: 10,
        maxSessionsPerUser: 10,
        idleTimeoutMs: HOUR,
        refreshLeadMs: LEAD,
        requestTimeoutMs: 60 * S,
        maxMessageBytes: 1_000_000,
        allowedOrigins: [],
      },
      spawn: (spec) => {
        spawned.push(spec);
        return initializingChild();
      },
      upstreamToken: async () => ({ token: "token-0", expiresAt: timers.now() + 20 * S }),
      refresh: async () => {
        refreshes++;
        return { ok: true, token: `token-${refreshes}`, expiresAt: timers.now() + 20 * S };
      },
      logger: createMemoryLogger(),
      timers,
    });
    const identity: SessionIdentity = { grantId: "grant-alice", forgejoUserId: ALICE, clientId: "client" };
    const sessions = [];
    for (let i = 0; i < 3; i++) sessions.push((await registry.create(identity, initialize)).entry.id);

    for (let second = 0; second < 60; second++) {
      timers.advance(S);
      // Each rotation waits a loop turn per child start: let all three finish within the second.
      for (let i = 0; i < 4; i++) await settle();
    }
    expect(refreshes).toBe(6);
    for (const id of sessions) {
      expect(spawned.filter((spec) => spec.sessionId === id).map((spec) => spec.token)).toEqual(
        ["token-0", "token-1", "token-2", "token-3", "token-4", "token-5", "token-6"],
      );
    }
    await registry.shutdown();
  });
});

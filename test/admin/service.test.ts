// The admin service with a fake registry and principals over an in-memory store, and time moved by hand: what a
// listing says of busy and idle children, and a drain that reports each change of the count until none is left.
import { describe, expect, test } from "bun:test";
import { AdminService } from "../../src/admin/service.ts";
import type { PrincipalChildEntry } from "../../src/modern/principals.ts";
import type { ListedPrincipal } from "../../src/replicas/principal-directory.ts";
import { RedisUnavailableError } from "../../src/replicas/redis-connection.ts";
import type { ListedSession } from "../../src/replicas/session-directory.ts";
import type { LegacySession } from "../../src/session/legacy-session.ts";
import { SqliteAdminQueries } from "../../src/store/admin-queries.ts";
import { SqliteStore } from "../../src/store/sqlite-store.ts";
import { FakeTimers, settle } from "../bridge/fakes.ts";

async function setup(othersLive?: () => Promise<ListedSession[]>, principalsElsewhere?: () => Promise<ListedPrincipal[]>) {
  const timers = new FakeTimers();
  const store = SqliteStore.open(":memory:");
  await store.createClient({ id: "c1", secretHash: null, tokenEndpointAuthMethod: "none", name: "Claude", redirectUris: [], metadata: {}, createdAt: 0 });
  const grant = await store.findOrCreateGrant({ id: "g1", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "", now: 0 });
  await store.findOrCreateGrant({ id: "g2", clientId: "c1", forgejoUserId: 8, forgejoLogin: "bob", scope: "", now: 0 });
  const state = { legacy: [] as LegacySession[], modern: [] as PrincipalChildEntry[], holding: 0, drained: false };
  const service = new AdminService({
    registry: { list: () => state.legacy, drain: () => void (state.drained = true), get childrenHoldingSlots() { return state.holding; } },
    principals: { list: () => state.modern },
    queries: new SqliteAdminQueries(store),
    store,
    timers,
    now: () => timers.now(),
    replica: "here",
    rssOf: (pid) => pid * 1024,
    drainPollMs: 100,
    directory: othersLive === undefined ? undefined : { othersLive },
    principalDirectory: principalsElsewhere === undefined ? undefined : { othersLive: principalsElsewhere },
  });
  return { service, timers, state, grant };
}

const session = (fields: Partial<LegacySession>) =>
  ({ id: "s1", binding: { grantId: "g1", forgejoUserId: 7, clientId: "c1" }, startedAt: 0, lastActivity: 0, inFlight: 0, activeStreams: 0, childPid: 42, ...fields }) as LegacySession;

describe("sessions", () => {
  const cases: [string, Partial<LegacySession>, number][] = [
    ["a legacy session last used 90 s ago is idle 90 s", { lastActivity: 1_000_000 - 90_000 }, 90],
    ["one with a request in flight is idle 0 s", { lastActivity: 1_000_000 - 90_000, inFlight: 1 }, 0],
    ["one with a stream open is idle 0 s", { lastActivity: 1_000_000 - 90_000, activeStreams: 1 }, 0],
  ];
  test.each(cases)("%s", async (_, fields, idleS) => {
    const { service, state } = await setup();
    state.legacy = [session({ startedAt: 1_000_000 - 3_600_000, ...fields })];
    expect((await service.sessions()).sessions).toEqual([
      { era: "legacy", id: "s1", user: "alice", forgejoUserId: 7, clientId: "c1", clientName: "Claude", grantId: "g1", ageS: 3600, idleS, replica: "here", pid: 42, rssBytes: 42 * 1024, state: "serving" },
    ]);
  });

  test("a retiring principal child is listed as such; --user of someone else lists nothing", async () => {
    const { service, state, timers } = await setup();
    const child = { lastActivity: timers.now(), inFlight: 1, listening: 0, childPid: 9 } as PrincipalChildEntry["child"];
    state.modern = [{ grantId: "g1", forgejoUserId: 7, clientId: "c1", childEra: "legacy", child, startedAt: timers.now(), serving: false }];
    expect((await service.sessions("alice")).sessions.map((row) => [row.era, row.state, row.pid])).toEqual([["modern", "retiring", 9]]);
    expect((await service.sessions("bob")).sessions).toEqual([]);
  });
});

describe("sessions with other replicas in the Redis directory", () => {
  const NOW = 1_000_000;
  const remote = (sessionId: string, grantId: string, ownerUrl: string, startedAt?: number): ListedSession => ({
    sessionId,
    entry: { owner: `id-${ownerUrl}`, grantId, initialize: "{}", protocolVersion: "2025-03-26", ...(startedAt === undefined ? {} : { startedAt }) },
    ownerUrl,
  });
  const local = { era: "legacy", id: "s1", user: "alice", forgejoUserId: 7, clientId: "c1", clientName: "Claude", grantId: "g1", ageS: 60, idleS: 60, replica: "here", pid: 42, rssBytes: 42 * 1024, state: "serving" };
  const onB = { era: "legacy", id: "s2", user: "bob", forgejoUserId: 8, clientId: "c1", clientName: "Claude", grantId: "g2", ageS: 120, idleS: null, replica: "http://b", pid: null, rssBytes: null, state: "serving" };
  const onC = { ...onB, id: "s3", user: "alice", forgejoUserId: 7, grantId: "g1", ageS: null, replica: "http://c" };
  // The fake directory lists what the real one does: other replicas' sessions whose owner is alive (a dead owner's are not in it).
  const cases: [string, ListedSession[] | undefined, string | undefined, unknown[]][] = [
    ["without Redis: this replica's sessions only", undefined, undefined, [local]],
    ["no other replica holds a session: this replica's only", [], undefined, [local]],
    ["another live replica's session, with its URL, its age from the entry and the rest unknown", [remote("s2", "g2", "http://b", NOW - 120_000)], undefined, [onB, local]],
    ["an entry without a start time: age unknown too, listed last", [remote("s3", "g1", "http://c"), remote("s2", "g2", "http://b", NOW - 120_000)], undefined, [onB, local, onC]],
    ["--user filters across both", [remote("s3", "g1", "http://c"), remote("s2", "g2", "http://b", NOW - 120_000)], "alice", [local, onC]],
    ["--user of someone only elsewhere", [remote("s2", "g2", "http://b", NOW - 120_000)], "bob", [onB]],
  ];
  test.each(cases)("%s", async (_, others, user, expected) => {
    const { service, state, timers } = await setup(others === undefined ? undefined : async () => others);
    timers.advance(NOW - timers.now());
    state.legacy = [session({ startedAt: NOW - 60_000, lastActivity: NOW - 60_000 })];
    expect((await service.sessions(user)).sessions).toEqual(expected as never);
  });
});

describe("sessions with other replicas' principal children in the Redis directory", () => {
  const NOW = 1_000_000;
  const child = (grantId: string, forgejoUserId: number, fields: Partial<ListedPrincipal["record"]>, ownerUrl = "http://b"): ListedPrincipal => ({
    record: { grantId, forgejoUserId, clientId: "c1", childEra: "legacy", pid: 4242, startedAt: NOW - 300_000, lastActivity: NOW - 30_000, busy: false, rssBytes: 40 << 20, serving: true, ...fields },
    ownerUrl,
  });
  const row = { era: "modern", id: "g2", user: "bob", forgejoUserId: 8, clientId: "c1", clientName: "Claude", grantId: "g2", childEra: "legacy", ageS: 300, idleS: 30, replica: "http://b", pid: 4242, rssBytes: 40 << 20, state: "serving" };
  const cases: [string, ListedPrincipal[], string | undefined, unknown[]][] = [
    ["another replica's child: its owner's URL, pid, memory and idle time as its owner last recorded them", [child("g2", 8, {})], undefined, [row]],
    ["a busy one is idle 0 s; a retiring one says so; a 2026 child says its era", [child("g2", 8, { busy: true, serving: false, childEra: "modern" })], undefined, [{ ...row, idleS: 0, state: "retiring", childEra: "modern" }]],
    ["a clock ahead of this one gives no negative age", [child("g2", 8, { startedAt: NOW + 5_000, lastActivity: NOW + 5_000 })], undefined, [{ ...row, ageS: 0, idleS: 0 }]],
    ["--user filters them", [child("g2", 8, {}), child("g1", 7, { pid: 99 }, "http://c")], "alice", [{ ...row, id: "g1", grantId: "g1", user: "alice", forgejoUserId: 7, pid: 99, replica: "http://c" }]],
  ];
  test.each(cases)("%s", async (_, listed, user, expected) => {
    const { service, timers } = await setup(async () => [], async () => listed);
    timers.advance(NOW - timers.now());
    expect(await service.sessions(user)).toEqual({ sessions: expected as never, partial: false });
  });
});

describe("sessions while Redis does not answer", () => {
  const failures: [string, Error, string][] = [
    ["unreachable", new RedisUnavailableError("Redis (commands) is not connected"), "other replicas not listed: Redis unreachable (Redis (commands) is not connected)"],
    ["losing the connection mid-way", Object.assign(new Error("Connection closed"), { code: "ERR_REDIS_CONNECTION_CLOSED" }), "other replicas not listed: Redis unreachable (Connection closed)"],
    ["answering with an error", new Error("WRONGTYPE Operation against a key holding the wrong kind of value"), "other replicas not listed: Redis failed (WRONGTYPE Operation against a key holding the wrong kind of value)"],
  ];
  test.each(failures)("Redis %s: this replica's own rows, marked partial, with why", async (_, error, warning) => {
    const fail = async (): Promise<never> => {
      throw error;
    };
    for (const [sessions, principals] of [[fail, async () => []], [async () => [], fail]] as const) {
      const { service, state, timers } = await setup(sessions, principals);
      state.legacy = [session({ startedAt: timers.now(), lastActivity: timers.now() })];
      const answer = await service.sessions();
      expect(answer).toEqual({ sessions: [expect.objectContaining({ id: "s1", replica: "here" })], partial: true, warning });
    }
  });
});

test("drain: the count at once, again only when it changes, and done once none is left", async () => {
  const { service, state, timers } = await setup();
  state.holding = 2;
  const progress = service.drain();
  expect((await progress.next()).value).toEqual({ children: 2, done: false });
  expect(state.drained).toBe(true);

  // Nothing changed at the next look: it reports nothing.
  const next = progress.next();
  timers.advance(100);
  await settle();
  expect(timers.pending).toBe(1);
  state.holding = 1;
  timers.advance(100);
  expect((await next).value).toEqual({ children: 1, done: false });

  const last = progress.next();
  state.holding = 0;
  timers.advance(100);
  expect((await last).value).toEqual({ children: 0, done: true });
  expect((await progress.next()).done).toBe(true);
});

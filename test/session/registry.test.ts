// The session registry with injected children, tokens and time: every outcome the /mcp route
// turns into a status code, the caps, idle reaping, child exits, and moving sessions on token rotation.
import { describe, expect, test } from "bun:test";
import type { IncomingMessage } from "../../src/bridge/jsonrpc.ts";
import type { MessageStream, OutboundEvent } from "../../src/bridge/message-stream.ts";
import type { SessionConfig } from "../../src/config.ts";
import { createMemoryLogger } from "../../src/log.ts";
import type { SharedUserSlots, UserSlotVerdict } from "../../src/replicas/user-slots.ts";
import {
  InitializeRejectedError,
  SessionForbiddenError,
  SessionLimitError,
  SessionNotFoundError,
  SessionRevokedError,
  SessionStartError,
  UserSessionLimitError,
} from "../../src/session/errors.ts";
import type { LegacySession } from "../../src/session/legacy-session.ts";
import { SessionRegistry, type SessionIdentity, type SessionLifecycle, type UpstreamRefresher } from "../../src/session/registry.ts";
import { ChildStartError, type ChildSpec } from "../../src/supervisor/child.ts";
import { SpawnPacer } from "../../src/supervisor/spawn-pacer.ts";
import { FAKE_INITIALIZE_RESULT, FakeChild, FakeTimers, fakeSessionConfig, initializingChild, manualTurns, settle, type Json } from "../bridge/fakes.ts";
import { failureRef, loggedUnder } from "../helpers/failure-report.ts";

const HOUR = 3600_000;

const alice: SessionIdentity = { grantId: "grant-alice-claude", forgejoUserId: 1, clientId: "claude" };
const aliceOtherClient: SessionIdentity = { grantId: "grant-alice-vscode", forgejoUserId: 1, clientId: "vscode" };
const bob: SessionIdentity = { grantId: "grant-bob", forgejoUserId: 2, clientId: "claude" };

function msg(message: Json): IncomingMessage {
  return { raw: JSON.stringify(message), message };
}

const initialize = msg({
  jsonrpc: "2.0",
  id: 0,
  method: "initialize",
  params: { protocolVersion: "2025-11-25", capabilities: { elicitation: {} }, clientInfo: { name: "inspector", version: "1" } },
});
const call = (id: number, name: string) => msg({ jsonrpc: "2.0", id, method: "tools/call", params: { name, arguments: {} } });

/** Children answer `echo` at once with the token they were started with, and leave `slow` to the test. */
function toolChild(spec: ChildSpec): FakeChild {
  return initializingChild((message, child) => {
    if (message.method === "tools/call" && (message.params as Json).name === "echo") {
      child.send({ jsonrpc: "2.0", id: message.id, result: { content: [{ type: "text", text: spec.token }] } });
    }
  });
}

function setup(
  config: Partial<SessionConfig> = {},
  options: {
    refresh?: UpstreamRefresher;
    makeChild?: (spec: ChildSpec) => FakeChild;
    spawnPacer?: SpawnPacer;
    grantIsLive?: (grantId: string) => Promise<boolean>;
    lifecycle?: SessionLifecycle;
    userSlots?: SharedUserSlots;
  } = {},
) {
  const timers = new FakeTimers();
  const logger = createMemoryLogger();
  const children: FakeChild[] = [];
  const spawned: ChildSpec[] = [];
  const tokens = new Map<number, { token: string; expiresAt: number | null }>();
  let makeChild = options.makeChild ?? toolChild;
  const registry = new SessionRegistry({
    config: fakeSessionConfig(config),
    spawn: (spec) => {
      spawned.push(spec);
      const child = makeChild(spec);
      children.push(child);
      return child;
    },
    upstreamToken: async (user) => tokens.get(user) ?? { token: `token-of-${user}`, expiresAt: timers.now() + HOUR },
    refresh: options.refresh,
    spawnPacer: options.spawnPacer,
    grantIsLive: options.grantIsLive,
    lifecycle: options.lifecycle,
    userSlots: options.userSlots,
    logger,
    timers,
    reapIntervalMs: 10_000,
    refreshRetryMs: 30_000,
  });
  return {
    registry,
    timers,
    logger,
    children,
    spawned,
    tokens,
    setChild: (make: (spec: ChildSpec) => FakeChild) => void (makeChild = make),
  };
}

/** Answers initialize only when the test calls the function it pushes onto `held`. */
function initializingChildHeldBy(held: (() => void)[]): FakeChild {
  return new FakeChild({
    onMessage: (message, child) => {
      if (message.method === "initialize") held.push(() => child.send({ jsonrpc: "2.0", id: message.id, result: FAKE_INITIALIZE_RESULT }));
    },
  });
}

async function all(stream: MessageStream): Promise<OutboundEvent[]> {
  const out: OutboundEvent[] = [];
  for await (const event of stream) out.push(event);
  return out;
}

const textOf = (events: OutboundEvent[]) =>
  ((events.at(-1)!.message.result as { content: { text: string }[] }).content[0]!.text);

describe("create", () => {
  test("starts a child with the user's token and returns a 192-bit hex id with the InitializeResult", async () => {
    const { registry, spawned } = setup();
    const { entry, events } = await registry.create(alice, initialize);
    expect(entry.id).toMatch(/^[0-9a-f]{48}$/);
    expect(spawned).toEqual([{ sessionId: entry.id, token: "token-of-1" }]);
    expect(events.map((e) => e.kind)).toEqual(["response"]);
    expect((events[0]!.message.result as Json).serverInfo).toEqual({ name: "fake", version: "1" });
    expect(registry.size).toBe(1);
  });

  test("a child that cannot start gives SessionStartError and no session", async () => {
    const { registry, setChild } = setup();
    setChild(() => {
      throw new ChildStartError('cannot start the MCP server: "forgejo-mcp" was not found');
    });
    const error = await registry.create(alice, initialize).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SessionStartError);
    expect((error as SessionStartError).message).toBe('cannot start the MCP server: "forgejo-mcp" was not found');
    expect(registry.size).toBe(0);
  });

  test("a child that exits before answering initialize: the error keeps its last stderr line apart from the message, and no session", async () => {
    const { registry, setChild } = setup();
    setChild(
      () =>
        new FakeChild({
          onMessage: (_message, child) => {
            child.stderr = "Error: GET https://forgejo.test/api/v1/version: 401 Unauthorized";
            child.exit({ code: 1 });
          },
        }),
    );
    const error = (await registry.create(alice, initialize).catch((e: unknown) => e)) as SessionStartError;
    expect(error).toBeInstanceOf(SessionStartError);
    expect(error.message).toBe("the MCP server exited before answering initialize");
    expect(error.lastStderrLine).toBe("Error: GET https://forgejo.test/api/v1/version: 401 Unauthorized");
    expect(error.status).toBe(502);
    expect(registry.size).toBe(0);
    expect(registry.sessionsOf(1)).toEqual([]);
  });

  test("a child that never answers initialize is stopped after the initialize timeout", async () => {
    const { registry, setChild, timers, children } = setup();
    setChild(() => new FakeChild());
    const pending = registry.create(alice, initialize).catch((e: unknown) => e);
    await settle();
    timers.advance(30_000);
    const error = (await pending) as SessionStartError;
    expect(error.message).toBe("the MCP server did not answer initialize within 30 s");
    expect(children[0]!.stopCalls).toBe(1);
    expect(registry.size).toBe(0);
  });

  test("a child that answers initialize with an error passes that error on, without a session", async () => {
    const { registry, setChild } = setup();
    setChild(
      () =>
        new FakeChild({
          onMessage: (message, child) =>
            child.send({ jsonrpc: "2.0", id: message.id, error: { code: -32602, message: "Unsupported protocol version" } }),
        }),
    );
    const error = (await registry.create(alice, initialize).catch((e: unknown) => e)) as InitializeRejectedError;
    expect(error).toBeInstanceOf(InitializeRejectedError);
    expect(error.events.map((e) => e.data)).toEqual(['{"jsonrpc":"2.0","id":0,"error":{"code":-32602,"message":"Unsupported protocol version"}}']);
    expect(registry.size).toBe(0);
  });
  test("after a revocation a grant's sessions end only once no token of it is left, and no other grant's", async () => {
    const revoked = new Set<string>();
    const { registry, children, logger } = setup({}, { grantIsLive: async (grantId) => !revoked.has(grantId) });
    const [first, second, other] = [await registry.create(alice, initialize), await registry.create(alice, initialize), await registry.create(bob, initialize)];

    await registry.grantRevoked(alice.grantId);
    expect(registry.size).toBe(3);

    revoked.add(alice.grantId);
    await registry.grantRevoked(alice.grantId);
    expect(() => registry.get(first.entry.id, alice)).toThrow(SessionNotFoundError);
    expect(() => registry.get(second.entry.id, alice)).toThrow(SessionNotFoundError);
    expect(registry.get(other.entry.id, bob)).toBe(other.entry);
    expect(children.map((child) => child.stopCalls)).toEqual([1, 1, 0]);
    expect(logger.lines.filter((line) => line.includes('"reason":"every token of its sign-in was revoked"'))).toHaveLength(2);
  });

  test("a start whose sign-in is revoked before its child answers stops that child and is refused (401), with no session", async () => {
    const revoked = new Set<string>();
    const { registry, setChild, children } = setup({}, { grantIsLive: async (grantId) => !revoked.has(grantId) });
    const held: (() => void)[] = [];
    setChild(() => initializingChildHeldBy(held));
    const pending = registry.create(alice, initialize).catch((e: unknown) => e);
    await settle();
    expect(children).toHaveLength(1);

    revoked.add(alice.grantId);
    held.shift()!();
    const error = (await pending) as SessionRevokedError;
    expect(error).toBeInstanceOf(SessionRevokedError);
    expect(error.status).toBe(401);
    expect(children[0]!.stopCalls).toBe(1);
    expect(registry.size).toBe(0);
    expect(registry.hasGrant(alice.grantId)).toBe(false);

    setChild(toolChild);
    const other = await registry.create(bob, initialize);
    expect(registry.get(other.entry.id, bob)).toBe(other.entry);
  });
});

describe("pacing child starts", () => {
  /** A pacer whose turns the test hands out. */
  function manualPacer() {
    const turns = manualTurns();
    return { pacer: new SpawnPacer(turns.nextTurn), give: () => turns.give() };
  }

  test("concurrent creates start one child per turn, and a session is returned as soon as its own child answers", async () => {
    const { pacer, give } = manualPacer();
    const { registry, spawned } = setup({}, { spawnPacer: pacer });
    const done: string[] = [];
    const first = registry.create(alice, initialize).then((created) => {
      done.push("alice");
      return created;
    });
    const second = registry.create(bob, initialize).then((created) => {
      done.push("bob");
      return created;
    });

    await settle();
    expect(spawned).toEqual([]);

    give();
    await settle();
    expect(spawned.map((spec) => spec.token)).toEqual(["token-of-1"]);
    expect(done).toEqual(["alice"]);

    give();
    await settle();
    expect(spawned.map((spec) => spec.token)).toEqual(["token-of-1", "token-of-2"]);
    expect(done).toEqual(["alice", "bob"]);
    expect((await first).entry.binding).toEqual(alice);
    expect((await second).entry.binding).toEqual(bob);
  });

  test("a start still waiting for its turn when shutdown begins spawns nothing and is refused", async () => {
    const { pacer, give } = manualPacer();
    const { registry, spawned } = setup({}, { spawnPacer: pacer });
    const pending = registry.create(alice, initialize).catch((e: unknown) => e);
    await settle();
    await registry.shutdown();

    give();
    const error = await pending;
    expect(error).toBeInstanceOf(SessionLimitError);
    expect((error as SessionLimitError).message).toBe("the broker is shutting down");
    expect(spawned).toEqual([]);
    expect(registry.size).toBe(0);
  });

  test("moving a session to a refreshed token waits for a turn as well", async () => {
    const { pacer, give } = manualPacer();
    const { registry, spawned } = setup({}, { spawnPacer: pacer });
    const created = registry.create(alice, initialize);
    await settle();
    give();
    const { entry } = await created;

    const moved = registry.rotateUser(1, "token-of-1-refreshed");
    await settle();
    expect(spawned).toHaveLength(1);

    give();
    expect(await moved).toEqual({ moved: 1, failed: 0 });
    expect(spawned.at(-1)).toEqual({ sessionId: entry.id, token: "token-of-1-refreshed" });
  });
});

describe("caps", () => {
  /** A session the table sets up: whose, and how it was last used (or a call still in flight). */
  interface Existing {
    who: SessionIdentity;
    /** "request": a request named it (registry.get); "message": only its session saw traffic; "busy": a call in flight. */
    use: "request" | "message" | "busy";
  }
  interface EvictionCase {
    name: string;
    config: Partial<SessionConfig>;
    /** In the order they were last used, oldest first. */
    existing: Existing[];
    newcomer: SessionIdentity;
    /** Index into `existing` of the session ended to make room, and the cap counted; or the refusal. */
    outcome: { evicted: number; cap: "user" | "global" } | { refused: 429 | 503; retryAfterS: number };
  }

  const idle = (who: SessionIdentity): Existing => ({ who, use: "request" });
  const busy = (who: SessionIdentity): Existing => ({ who, use: "busy" });

  const cases: EvictionCase[] = [
    {
      name: "at the per-user cap the user's least recently used session goes, not another user's older one",
      config: { maxSessionsPerUser: 3 },
      existing: [idle(bob), idle(alice), idle(aliceOtherClient), idle(alice)],
      newcomer: alice,
      outcome: { evicted: 1, cap: "user" },
    },
    {
      name: "a session with a call in flight is passed over, however long ago it was used",
      config: { maxSessionsPerUser: 3 },
      existing: [busy(alice), busy(alice), idle(alice)],
      newcomer: alice,
      outcome: { evicted: 2, cap: "user" },
    },
    {
      name: "traffic its session saw (a stream, a notification) counts as use, not only requests naming the session",
      config: { maxSessionsPerUser: 2 },
      existing: [idle(alice), { who: alice, use: "message" }],
      newcomer: alice,
      outcome: { evicted: 0, cap: "user" },
    },
    {
      name: "at the broker-wide cap anyone's least recently used idle session goes",
      config: { maxSessions: 3, maxSessionsPerUser: 3 },
      existing: [busy(alice), idle(bob), idle(alice)],
      newcomer: alice,
      outcome: { evicted: 1, cap: "global" },
    },
    {
      name: "at both caps the user's own session goes, counted once, at the per-user cap",
      config: { maxSessions: 3, maxSessionsPerUser: 2 },
      existing: [idle(bob), idle(alice), idle(alice)],
      newcomer: alice,
      outcome: { evicted: 1, cap: "user" },
    },
    {
      name: "every one of the user's sessions busy: 429, though another user's are idle; a slot frees at the first call's timeout",
      config: { maxSessionsPerUser: 2, requestTimeoutMs: 120_000 },
      existing: [busy(alice), idle(bob), busy(alice)],
      newcomer: alice,
      // The first call went out 3 s before the refusal (one second per step of the table).
      outcome: { refused: 429, retryAfterS: 117 },
    },
    {
      name: "every session of the broker busy: 503, with the seconds until the first call times out",
      config: { maxSessions: 3, maxSessionsPerUser: 3, requestTimeoutMs: 60_000 },
      existing: [busy(bob), busy(alice), busy(bob)],
      newcomer: alice,
      outcome: { refused: 503, retryAfterS: 57 },
    },
  ];

  for (const { name, config, existing, newcomer, outcome } of cases) {
    test(name, async () => {
      const { registry, timers, children, logger } = setup(config);
      // Created newest first, so that the order of creation never agrees with the order of use.
      const entries: LegacySession[] = new Array(existing.length);
      for (let i = existing.length - 1; i >= 0; i--) entries[i] = (await registry.create(existing[i]!.who, initialize)).entry;
      // Used one second apart, oldest first, after all were created.
      for (const [i, { who, use }] of existing.entries()) {
        timers.advance(1000);
        const entry = entries[i]!;
        if (use === "request") registry.get(entry.id, who);
        else if (use === "message") entry.send(msg({ jsonrpc: "2.0", method: "notifications/roots/list_changed" }), "notification");
        else entry.request(call(100 + i, "slow"));
      }
      timers.advance(1000);

      const created = await registry.create(newcomer, initialize).catch((e: unknown) => e);
      if ("refused" in outcome) {
        const error = created as UserSessionLimitError | SessionLimitError;
        expect(error).toBeInstanceOf(outcome.refused === 429 ? UserSessionLimitError : SessionLimitError);
        expect([error.status, error.retryAfterS]).toEqual([outcome.refused, outcome.retryAfterS]);
        expect(error.message).toContain(`each has a request in flight; one frees within ${outcome.retryAfterS} s at the latest`);
        expect(registry.size).toBe(existing.length);
        expect(registry.evictions).toEqual({ user: 0, global: 0 });
        return;
      }
      expect((created as { entry: { id: string } }).entry.id).toMatch(/^[0-9a-f]{48}$/);
      const gone = entries[outcome.evicted]!;
      expect(() => registry.get(gone.id, existing[outcome.evicted]!.who)).toThrow(SessionNotFoundError);
      for (const [i, entry] of entries.entries()) if (i !== outcome.evicted) expect(registry.get(entry.id, existing[i]!.who)).toBe(entry);
      expect(entries.map((entry) => entry.closed !== null)).toEqual(existing.map((_, i) => i === outcome.evicted));
      expect(children.map((child) => child.stopCalls).sort()).toEqual([...existing.map((_, i) => (i === outcome.evicted ? 1 : 0)), 0].sort());
      expect(registry.evictions).toEqual({ user: outcome.cap === "user" ? 1 : 0, global: outcome.cap === "global" ? 1 : 0 });
      const ended = logger.lines.filter((line) => line.includes('"msg":"session ended"')).map((line) => JSON.parse(line) as Json);
      expect(ended).toEqual([expect.objectContaining({ session: gone.id, cap: outcome.cap, forgejo_user_id: gone.binding.forgejoUserId })]);
      expect(String(ended[0]!.reason)).toStartWith("evicted: a new session needed a slot at ");
    });
  }

  test("an evicted session's open GET stream is ended, its id answers 404, and the new session serves", async () => {
    const { registry, timers } = setup({ maxSessionsPerUser: 1 });
    const { entry: old } = await registry.create(alice, initialize);
    const standalone = old.openStandalone();
    timers.advance(1000);
    const { entry: fresh } = await registry.create(alice, initialize);
    expect(await all(standalone)).toEqual([]);
    expect(standalone.isOpen).toBe(false);
    expect(() => registry.get(old.id, alice)).toThrow(SessionNotFoundError);
    expect(textOf(await all(registry.get(fresh.id, alice).request(call(1, "echo"))))).toBe("token-of-1");
  });

  test("a refusal's Retry-After counts down to the first call's timeout, and once that call is over a new session gets its slot", async () => {
    const { registry, timers, children } = setup({ maxSessionsPerUser: 2, requestTimeoutMs: 300_000 });
    const [first, second] = [(await registry.create(alice, initialize)).entry, (await registry.create(alice, initialize)).entry];
    const firstCall = first.request(call(1, "slow"));
    timers.advance(100_000);
    second.request(call(2, "slow"));
    const early = (await registry.create(alice, initialize).catch((e: unknown) => e)) as UserSessionLimitError;
    expect(early.retryAfterS).toBe(200);
    timers.advance(150_500);
    const later = (await registry.create(alice, initialize).catch((e: unknown) => e)) as UserSessionLimitError;
    expect(later.retryAfterS).toBe(50);

    children[0]!.send({ jsonrpc: "2.0", id: 1, result: { content: [] } });
    await all(firstCall);
    const { entry } = await registry.create(alice, initialize);
    expect(registry.sessionsOf(1).sort()).toEqual([second.id, entry.id].sort());
    expect(registry.evictions).toEqual({ user: 1, global: 0 });
  });

  test("sessions still starting count against the cap and are never evicted; the refusal waits on their initialize", async () => {
    const held: (() => void)[] = [];
    const { registry, timers } = setup({ maxSessionsPerUser: 1 }, { makeChild: () => initializingChildHeldBy(held) });
    const starting = registry.create(alice, initialize);
    await settle();
    timers.advance(10_000);
    const refused = (await registry.create(alice, initialize).catch((e: unknown) => e)) as UserSessionLimitError;
    expect(refused).toBeInstanceOf(UserSessionLimitError);
    expect(refused.retryAfterS).toBe(20);
    held.shift()!();
    await expect(starting).resolves.toBeDefined();
  });

  test("concurrent creates at the cap each evict a different session and wait for its child to exit: never more children than the cap", async () => {
    let alive = 0;
    let mostAlive = 0;
    const { registry, children } = setup(
      { maxSessionsPerUser: 3 },
      {
        makeChild: () => {
          const child = initializingChild(() => {}, { slowStop: true });
          mostAlive = Math.max(mostAlive, ++alive);
          void child.exited.then(() => alive--);
          return child;
        },
      },
    );
    for (let i = 0; i < 3; i++) await registry.create(alice, initialize);

    const exited = new Set<FakeChild>();
    let racing: unknown[] | null = null;
    const all = Promise.all(Array.from({ length: 5 }, () => registry.create(alice, initialize).catch((e: unknown) => e)));
    void all.then((outcomes) => (racing = outcomes));
    // Children exit one at a time, each only once asked to, while the creates run.
    for (let round = 0; round < 50 && racing === null; round++) {
      await settle();
      const asked = children.find((child) => child.stopCalls > 0 && !exited.has(child));
      if (asked === undefined) continue;
      exited.add(asked);
      asked.exit({ code: null, signal: "SIGTERM" });
    }
    const outcomes = racing as unknown as unknown[];
    expect(outcomes).not.toBeNull();
    const opened = outcomes.filter((o) => !(o instanceof Error)) as { entry: { id: string } }[];
    expect(outcomes.filter((o) => o instanceof Error && !(o instanceof UserSessionLimitError))).toEqual([]);
    expect(opened.length).toBeGreaterThanOrEqual(3);
    expect(registry.sessionsOf(1)).toHaveLength(3);
    for (const id of registry.sessionsOf(1)) expect(opened.map((o) => o.entry.id)).toContain(id);
    // No session was ended twice, and every child but the three live ones was.
    expect(children.every((child) => child.stopCalls <= 1)).toBe(true);
    expect(children.filter((child) => child.stopCalls === 1)).toHaveLength(children.length - 3);
    expect(registry.evictions).toEqual({ user: children.length - 3, global: 0 });
    expect(mostAlive).toBe(3);
  });
});

describe("get", () => {
  test("unknown and malformed ids are not found (404)", async () => {
    const { registry } = setup();
    await registry.create(alice, initialize);
    expect(() => registry.get("0".repeat(48), alice)).toThrow(SessionNotFoundError);
    expect(() => registry.get("not-a-session", alice)).toThrow(SessionNotFoundError);
  });

  test("another grant, even the same Forgejo user's other client, is forbidden (403)", async () => {
    const { registry } = setup();
    const { entry } = await registry.create(alice, initialize);
    expect(() => registry.get(entry.id, bob)).toThrow(SessionForbiddenError);
    expect(() => registry.get(entry.id, aliceOtherClient)).toThrow(SessionForbiddenError);
    expect(registry.get(entry.id, { ...alice }).id).toBe(entry.id);
  });

  test("after delete the id is not found, and the child was stopped", async () => {
    const { registry, children } = setup();
    const { entry } = await registry.create(alice, initialize);
    expect(registry.delete(entry.id)).toBe(true);
    expect(children[0]!.stopCalls).toBe(1);
    expect(() => registry.get(entry.id, alice)).toThrow(SessionNotFoundError);
    expect(registry.delete(entry.id)).toBe(false);
  });
});

describe("the session lifecycle (the replicas' directory)", () => {
  function recorded() {
    const told: string[] = [];
    const lifecycle: SessionLifecycle = {
      started: (id, session) => void told.push(`started ${id} ${session.grantId} ${session.protocolVersion} ${session.initialize}`),
      ended: (id) => void told.push(`ended ${id}`),
      left: (id) => void told.push(`left ${id}`),
    };
    return { told, lifecycle };
  }

  test("a started session is told with its grant, the client's initialize as sent and the negotiated version; a refused start is not", async () => {
    const { told, lifecycle } = recorded();
    const { registry, setChild } = setup({}, { lifecycle });
    const { entry } = await registry.create(alice, initialize);
    expect(told).toEqual([`started ${entry.id} grant-alice-claude 2025-11-25 ${initialize.raw}`]);
    setChild(() => new FakeChild({ onMessage: (message, child) => child.send({ jsonrpc: "2.0", id: message.id, error: { code: -32602, message: "no" } }) }));
    await expect(registry.create(bob, initialize)).rejects.toBeInstanceOf(InitializeRejectedError);
    expect(told).toHaveLength(1);
  });

  test("a restored session runs under its old id with the stored initialize, then notifications/initialized, for the given user", async () => {
    const { told, lifecycle } = recorded();
    const { registry, children, spawned } = setup({}, { lifecycle });
    const id = "e".repeat(48);
    const entry = await registry.restore(id, bob, initialize);
    expect(entry.id).toBe(id);
    expect(spawned).toEqual([{ sessionId: id, token: "token-of-2" }]);
    expect(children[0]!.messages.map((message) => message.method)).toEqual(["initialize", "notifications/initialized"]);
    expect(registry.get(id, bob)).toBe(entry);
    expect(told).toEqual([`started ${id} grant-bob 2025-11-25 ${initialize.raw}`]);
  });

  test("a start is over only once the directory has recorded it: the client's next request may reach another replica", async () => {
    let recorded!: () => void;
    const lifecycle: SessionLifecycle = { started: () => new Promise<void>((resolve) => (recorded = resolve)), ended: () => {}, left: () => {} };
    const { registry } = setup({}, { lifecycle });
    let created = false;
    const creating = registry.create(alice, initialize).then((session) => ((created = true), session));
    await settle();
    expect(created).toBe(false);
    recorded();
    expect((await creating).entry.id).toMatch(/^[0-9a-f]{48}$/);
  });

  test("callsSettled waits for the calls in flight of every session, for a stop to let them complete", async () => {
    const { registry, children } = setup();
    const [first, second] = [(await registry.create(alice, initialize)).entry, (await registry.create(bob, initialize)).entry];
    await registry.callsSettled();
    const calls = [all(first.request(call(1, "slow"))), all(second.request(call(2, "slow")))];
    let settled = false;
    void registry.callsSettled().then(() => (settled = true));
    children[0]!.send({ jsonrpc: "2.0", id: 1, result: { content: [] } });
    await settle();
    expect(settled).toBe(false);
    children[1]!.send({ jsonrpc: "2.0", id: 2, result: { content: [] } });
    await Promise.all(calls);
    await settle();
    expect(settled).toBe(true);
  });

  test("a deleted session and one whose child died have ended; a shutdown leaves its sessions for a restore elsewhere", async () => {
    const { told, lifecycle } = recorded();
    const { registry, children } = setup({}, { lifecycle });
    const deleted = (await registry.create(alice, initialize)).entry.id;
    const crashed = (await registry.create(alice, initialize)).entry.id;
    const kept = (await registry.create(bob, initialize)).entry.id;
    told.length = 0;
    registry.delete(deleted);
    children[1]!.exit({ code: 1 });
    await settle();
    expect(told).toEqual([`ended ${deleted}`, `ended ${crashed}`]);
    await registry.shutdown();
    expect(told).toEqual([`ended ${deleted}`, `ended ${crashed}`, `left ${kept}`]);
  });
});

describe("the per-user count across replicas", () => {
  /** Other replicas holding `elsewhere[user]` of each user's slots; what this replica last said it holds, by user. */
  function sharedSlots(elsewhere: Record<number, number> = {}) {
    const holding = new Map<number, number>();
    const userSlots: SharedUserSlots = {
      take: async (user, count, cap): Promise<UserSlotVerdict> => {
        const others = elsewhere[user] ?? 0;
        if (others + count > cap) return { taken: false, elsewhere: others };
        holding.set(user, count);
        return { taken: true };
      },
      update: (user, count) => void holding.set(user, count),
    };
    return { holding, userSlots };
  }

  test("over the cap only with the other replicas' sessions: this replica's idle one makes room; none idle, 429 naming the others", async () => {
    const { userSlots } = sharedSlots({ 1: 2 });
    const { registry } = setup({ maxSessionsPerUser: 3 }, { userSlots });
    const { entry: first } = await registry.create(alice, initialize);
    expect(registry.sessionsOf(1)).toEqual([first.id]);
    const { entry: second } = await registry.create(alice, initialize);
    expect(registry.sessionsOf(1)).toEqual([second.id]);
    expect(registry.evictions).toEqual({ user: 1, global: 0 });
    second.request(call(1, "slow"));
    const refused = registry.create(alice, initialize);
    await expect(refused).rejects.toBeInstanceOf(UserSessionLimitError);
    await expect(refused).rejects.toThrow("you have 3 open sessions, the most allowed, 2 of them on other replicas of this broker, and none here can be ended to make room");
  });

  test("Redis not answering: the start goes ahead under this replica's own count, and that is logged", async () => {
    const userSlots: SharedUserSlots = { take: async () => Promise.reject(new Error("Redis is down")), update: () => {} };
    const { registry, logger } = setup({ maxSessionsPerUser: 1 }, { userSlots });
    await registry.create(alice, initialize);
    await registry.create(bob, initialize);
    expect(registry.size).toBe(2);
    expect(logger.lines.filter((line) => line.includes("the per-user cap counts this replica's only"))).toHaveLength(2);
  });

  test("whichever way a session ends (delete, crash, reap, eviction, revocation), the others are told the user's count once its child has exited", async () => {
    const { holding, userSlots } = sharedSlots();
    let live = true;
    const { registry, children, timers } = setup({ maxSessionsPerUser: 3, idleTimeoutMs: 60_000 }, { userSlots, grantIsLive: async (grantId) => live || grantId !== alice.grantId });
    const created = [];
    for (let i = 0; i < 3; i++) created.push((await registry.create(alice, initialize)).entry);
    expect(holding.get(1)).toBe(3);
    const counted = async () => {
      await settle();
      return holding.get(1);
    };
    registry.delete(created[0]!.id);
    expect(await counted()).toBe(2);
    children[1]!.exit({ code: 1 });
    expect(await counted()).toBe(1);
    // At the cap again, the next start evicts the oldest idle one: still 3 with it, and the count settles on 3.
    created.push((await registry.create(alice, initialize)).entry, (await registry.create(alice, initialize)).entry);
    expect(await counted()).toBe(3);
    created.push((await registry.create(alice, initialize)).entry);
    expect(registry.evictions.user).toBe(1);
    expect(await counted()).toBe(3);
    live = false;
    await registry.grantRevoked(alice.grantId);
    expect(await counted()).toBe(0);
    await registry.create(bob, initialize);
    timers.advance(70_000);
    expect(await counted()).toBe(0);
    expect(holding.get(2)).toBe(0);
  });
});

describe("children of deleted sessions", () => {
  const slowToStop = () => initializingChild(() => {}, { slowStop: true });

  test("delete returns at once; while the child is exiting it holds its slot, and a new session waits for it instead of being refused", async () => {
    const { registry, children } = setup({ maxSessions: 1 }, { makeChild: slowToStop });
    const { entry } = await registry.create(alice, initialize);
    expect(registry.delete(entry.id)).toBe(true);
    expect(children[0]!.stopCalls).toBe(1);
    let opened = false;
    const next = registry.create(bob, initialize).then((created) => ((opened = true), created));
    await settle();
    expect([opened, children.length]).toEqual([false, 1]);
    children[0]!.exit({ code: null, signal: "SIGTERM" });
    expect((await next).entry.id).not.toBe(entry.id);
    expect(children.length).toBe(2);
  });

  test("the per-user cap counts the user's exiting children the same way", async () => {
    const { registry, children } = setup({ maxSessionsPerUser: 1 }, { makeChild: slowToStop });
    const { entry } = await registry.create(alice, initialize);
    registry.delete(entry.id);
    let opened = false;
    const next = registry.create(alice, initialize).then((created) => ((opened = true), created));
    await registry.create(bob, initialize);
    expect(opened).toBe(false);
    children[0]!.exit({ code: null, signal: "SIGTERM" });
    await expect(next).resolves.toBeDefined();
  });

  test("a slot still held once the exiting children are gone is refused as before", async () => {
    const { registry, children } = setup({ maxSessions: 2 }, { makeChild: slowToStop });
    const { entry } = await registry.create(alice, initialize);
    const { entry: busy } = await registry.create(bob, initialize);
    busy.request(call(1, "slow"));
    registry.delete(entry.id);
    const pending = registry.create(alice, initialize).catch((e: unknown) => e);
    const third = registry.create(bob, initialize).catch((e: unknown) => e);
    children[0]!.exit({ code: null, signal: "SIGTERM" });
    const outcomes = await Promise.all([pending, third]);
    expect(outcomes.filter((o) => o instanceof SessionLimitError)).toHaveLength(1);
    expect(registry.size).toBe(2);
  });

  test("shutdown waits until the children of deleted sessions have exited", async () => {
    const { registry, children } = setup({}, { makeChild: slowToStop });
    const { entry } = await registry.create(alice, initialize);
    registry.delete(entry.id);
    let done = false;
    const shutdown = registry.shutdown().then(() => (done = true));
    await settle();
    expect(done).toBe(false);
    children[0]!.exit({ code: null, signal: "SIGTERM" });
    await shutdown;
    expect(done).toBe(true);
  });
});

describe("idle reaping", () => {
  test("a session with no request and no stream for the idle timeout is stopped and dropped", async () => {
    const { registry, timers, children } = setup({ idleTimeoutMs: 60_000 });
    const { entry } = await registry.create(alice, initialize);
    timers.advance(50_000);
    registry.get(entry.id, alice);
    timers.advance(50_000);
    await settle();
    expect(registry.size).toBe(1);
    timers.advance(20_000);
    await settle();
    expect(registry.size).toBe(0);
    expect(children[0]!.stopCalls).toBe(1);
    expect(() => registry.get(entry.id, alice)).toThrow(SessionNotFoundError);
  });

  test("an open standalone stream keeps a quiet session alive; the clock starts when it closes", async () => {
    const { registry, timers } = setup({ idleTimeoutMs: 60_000 });
    const { entry } = await registry.create(alice, initialize);
    const stream = entry.openStandalone();
    timers.advance(600_000);
    await settle();
    expect(registry.size).toBe(1);
    stream.close();
    timers.advance(50_000);
    await settle();
    expect(registry.size).toBe(1);
    timers.advance(20_000);
    await settle();
    expect(registry.size).toBe(0);
  });

  test("a long call in flight keeps the session alive", async () => {
    const { registry, timers } = setup({ idleTimeoutMs: 60_000 });
    const { entry } = await registry.create(alice, initialize);
    entry.request(call(1, "slow"));
    timers.advance(200_000);
    await settle();
    expect(registry.size).toBe(1);
  });
});

describe("children exiting", () => {
  test("a child that exits on its own drops its session: waiting calls fail at once, later requests get 404", async () => {
    const { registry, children, logger } = setup();
    const { entry } = await registry.create(alice, initialize);
    const waiting = entry.request(call(1, "slow"));
    children[0]!.stderr = "fatal error: out of memory";
    children[0]!.exit({ code: 2 });
    const events = await all(waiting);
    const error = events[0]!.message.error as { code: number; message: string };
    expect(error.code).toBe(-32000);
    const ref = failureRef(error.message, "the MCP server exited");
    expect(ref).not.toBeNull();
    expect(loggedUnder(logger.lines, ref!)).toEqual([expect.objectContaining({ session: entry.id, last_stderr_line: "fatal error: out of memory" })]);
    await settle();
    expect(() => registry.get(entry.id, alice)).toThrow(SessionNotFoundError);
    expect(registry.sessionsOf(1)).toEqual([]);
  });

  test("shutdown stops every child, waits for them, and refuses new sessions", async () => {
    const { registry, children } = setup();
    await registry.create(alice, initialize);
    await registry.create(bob, initialize);
    await registry.shutdown();
    expect(children.map((child) => child.stopCalls)).toEqual([1, 1]);
    expect(registry.size).toBe(0);
    await expect(registry.create(alice, initialize)).rejects.toThrow(SessionLimitError);
  });
});

describe("upstream token rotation", () => {
  // Long enough that the sessions in these tests are not reaped while the token ages.
  const busy = { idleTimeoutMs: 2 * HOUR };

  test("moves each of the user's sessions to a child with the new token under the same id, losing no call in flight", async () => {
    const { registry, children, spawned } = setup();
    const { entry } = await registry.create(alice, initialize);
    entry.send(msg({ jsonrpc: "2.0", method: "notifications/initialized" }), "notification");
    const inFlight = entry.request(call(1, "slow"));
    const before = children[0]!;

    expect(await registry.rotateUser(1, "token-of-1-refreshed")).toEqual({ moved: 1, failed: 0 });
    expect(spawned.at(-1)).toEqual({ sessionId: entry.id, token: "token-of-1-refreshed" });
    expect(registry.get(entry.id, alice)).toBe(entry);

    const after = await all(entry.request(call(2, "echo")));
    expect(textOf(after)).toBe("token-of-1-refreshed");
    expect(before.stopCalls).toBe(0);
    before.send({ jsonrpc: "2.0", id: 1, result: { content: [{ type: "text", text: "finished on the old child" }] } });
    expect(textOf(await all(inFlight))).toBe("finished on the old child");
    expect(before.stopCalls).toBe(1);
    expect(registry.size).toBe(1);
  });

  test("endUser ends that user's sessions only", async () => {
    const { registry } = setup();
    const a1 = await registry.create(alice, initialize);
    await registry.create(aliceOtherClient, initialize);
    const b = await registry.create(bob, initialize);
    await registry.endUser(1);
    expect(registry.sessionsOf(1)).toEqual([]);
    expect(() => registry.get(a1.entry.id, alice)).toThrow(SessionNotFoundError);
    expect(registry.get(b.entry.id, bob).id).toBe(b.entry.id);
  });

  test("the scheduler refreshes refreshLeadMs before expiry, rotates, and schedules the next refresh", async () => {
    let refreshes = 0;
    const { registry, timers, spawned } = setup(
      busy,
      {
        refresh: async () => {
          refreshes++;
          return { ok: true, token: `refreshed-${refreshes}`, expiresAt: timers.now() + 300_000 + HOUR };
        },
      },
    );
    const created = timers.now();
    const { entry } = await registry.create(alice, initialize);
    expect(registry.refreshDueAt(1)).toBe(created + HOUR - 300_000);
    timers.advance(HOUR - 300_000 - 1);
    await settle();
    expect(refreshes).toBe(0);
    timers.advance(1);
    await settle();
    expect(refreshes).toBe(1);
    expect(spawned.at(-1)).toEqual({ sessionId: entry.id, token: "refreshed-1" });
    expect(registry.refreshDueAt(1)).toBe(timers.now() + HOUR);
  });

  test("a refused refresh ends the user's sessions (the credential's loss revokes their grants elsewhere)", async () => {
    const { registry, timers } = setup(busy, { refresh: async () => ({ ok: false, refused: true, reason: "invalid_grant" }) });
    await registry.create(alice, initialize);
    const b = await registry.create(bob, initialize);
    timers.advance(HOUR);
    await settle();
    expect(registry.sessionsOf(1)).toEqual([]);
    expect(registry.size).toBe(0);
    expect(() => registry.get(b.entry.id, bob)).toThrow(SessionNotFoundError);
  });

  test("a transient refresh failure is retried", async () => {
    let attempts = 0;
    const { registry, timers } = setup(
      busy,
      {
        refresh: async () => {
          attempts++;
          return attempts === 1
            ? { ok: false, refused: false, reason: "connect ECONNREFUSED" }
            : { ok: true, token: "refreshed", expiresAt: timers.now() + HOUR };
        },
      },
    );
    await registry.create(alice, initialize);
    timers.advance(HOUR - 300_000);
    await settle();
    expect(attempts).toBe(1);
    timers.advance(30_000);
    await settle();
    expect(attempts).toBe(2);
    expect(registry.size).toBe(1);
  });
});

describe("drain", () => {
  test("no new session or other child starts (503 with Retry-After); live sessions serve on; the children holding slots count down to none", async () => {
    const { registry } = setup();
    const { entry } = await registry.create(alice, initialize);
    registry.drain();

    for (const start of [() => registry.create(bob, initialize), () => registry.reserveSlot(bob.forgejoUserId)]) {
      const error = await start().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SessionLimitError);
      expect((error as SessionLimitError).status).toBe(503);
      expect((error as SessionLimitError).retryAfterS).toBe(30);
      expect((error as SessionLimitError).message).toContain("draining");
    }
    expect(registry.get(entry.id, alice)).toBe(entry);
    expect(registry.childrenHoldingSlots).toBe(1);

    registry.delete(entry.id);
    // The ended session's child holds its slot until it has exited.
    expect(registry.childrenHoldingSlots).toBe(1);
    await registry.shutdown();
    expect(registry.childrenHoldingSlots).toBe(0);
  });
});

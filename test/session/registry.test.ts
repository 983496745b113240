// The session registry with injected children, tokens and time: every outcome the /mcp route
// turns into a status code, the caps, idle reaping, child exits, and moving sessions on token rotation.
import { describe, expect, test } from "bun:test";
import type { IncomingMessage } from "../../src/bridge/jsonrpc.ts";
import type { MessageStream, OutboundEvent } from "../../src/bridge/message-stream.ts";
import type { SessionConfig } from "../../src/config.ts";
import { createMemoryLogger } from "../../src/log.ts";
import {
  InitializeRejectedError,
  SessionForbiddenError,
  SessionLimitError,
  SessionNotFoundError,
  SessionRevokedError,
  SessionStartError,
  UserSessionLimitError,
} from "../../src/session/errors.ts";
import { SessionRegistry, type SessionIdentity, type UpstreamRefresher } from "../../src/session/registry.ts";
import { ChildStartError, type ChildSpec } from "../../src/supervisor/child.ts";
import { SpawnPacer } from "../../src/supervisor/spawn-pacer.ts";
import { FAKE_INITIALIZE_RESULT, FakeChild, FakeTimers, initializingChild, manualTurns, settle, type Json } from "../bridge/fakes.ts";

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
    grantIsLive?: (grantId: string) => boolean;
  } = {},
) {
  const timers = new FakeTimers();
  const logger = createMemoryLogger();
  const children: FakeChild[] = [];
  const spawned: ChildSpec[] = [];
  const tokens = new Map<number, { token: string; expiresAt: number | null }>();
  let makeChild = options.makeChild ?? toolChild;
  const registry = new SessionRegistry({
    config: {
      maxSessions: 10,
      maxSessionsPerUser: 3,
      idleTimeoutMs: 900_000,
      refreshLeadMs: 300_000,
      requestTimeoutMs: 300_000,
      maxMessageBytes: 1_000_000,
      allowedOrigins: [],
      ...config,
    },
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

  test("a child that exits before answering initialize gives its last stderr line, and no session", async () => {
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
    expect(error.message).toBe(
      "the MCP server exited before answering initialize: Error: GET https://forgejo.test/api/v1/version: 401 Unauthorized",
    );
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
    const { registry, children, logger } = setup({}, { grantIsLive: (grantId) => !revoked.has(grantId) });
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
    const { registry, setChild, children } = setup({}, { grantIsLive: (grantId) => !revoked.has(grantId) });
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
  test("the broker-wide cap refuses with 503 and a Retry-After, counting sessions still starting", async () => {
    const { registry } = setup({ maxSessions: 2, maxSessionsPerUser: 5 });
    const starting = [registry.create(alice, initialize), registry.create(bob, initialize)];
    const error = (await registry.create(alice, initialize).catch((e: unknown) => e)) as SessionLimitError;
    expect(error).toBeInstanceOf(SessionLimitError);
    expect([error.status, error.retryAfterS]).toEqual([503, 30]);
    const [first] = await Promise.all(starting);
    registry.delete(first!.entry.id);
    await expect(registry.create(alice, initialize)).resolves.toBeDefined();
  });

  test("the per-user cap refuses that user with 429 and a Retry-After, across their clients, but not others", async () => {
    const { registry } = setup({ maxSessionsPerUser: 2 });
    await registry.create(alice, initialize);
    await registry.create(aliceOtherClient, initialize);
    const error = (await registry.create(alice, initialize).catch((e: unknown) => e)) as UserSessionLimitError;
    expect(error).toBeInstanceOf(UserSessionLimitError);
    expect([error.status, error.retryAfterS]).toEqual([429, 30]);
    await expect(registry.create(bob, initialize)).resolves.toBeDefined();
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
    await registry.create(bob, initialize);
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
    const stream = entry.bridge.openStandalone();
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
    entry.bridge.request(call(1, "slow"));
    timers.advance(200_000);
    await settle();
    expect(registry.size).toBe(1);
  });
});

describe("children exiting", () => {
  test("a child that exits on its own drops its session: waiting calls fail at once, later requests get 404", async () => {
    const { registry, children } = setup();
    const { entry } = await registry.create(alice, initialize);
    const waiting = entry.bridge.request(call(1, "slow"));
    children[0]!.stderr = "fatal error: out of memory";
    children[0]!.exit({ code: 2 });
    const events = await all(waiting);
    expect(events[0]!.message.error).toEqual({ code: -32000, message: "the MCP server exited: fatal error: out of memory" });
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
    entry.bridge.send(msg({ jsonrpc: "2.0", method: "notifications/initialized" }), "notification");
    const inFlight = entry.bridge.request(call(1, "slow"));
    const before = children[0]!;

    expect(await registry.rotateUser(1, "token-of-1-refreshed")).toEqual({ moved: 1, failed: 0 });
    expect(spawned.at(-1)).toEqual({ sessionId: entry.id, token: "token-of-1-refreshed" });
    expect(registry.get(entry.id, alice)).toBe(entry);

    const after = await all(entry.bridge.request(call(2, "echo")));
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

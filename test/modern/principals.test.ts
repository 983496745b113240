// The principal children on their own, with fake children and a fake clock: what the child is told at
// start, the idle reap, a crash, a revoked grant, a token due for refresh, and the child's own requests.
import { describe, expect, test } from "bun:test";
import type { IncomingMessage } from "../../src/bridge/jsonrpc.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { ASKED_TOGETHER_MS, MAX_INPUT_REQUESTS } from "../../src/modern/modern-call.ts";
import { PrincipalChildren } from "../../src/modern/principals.ts";
import type { SharedUserSlots } from "../../src/replicas/user-slots.ts";
import { McpRefusal, UserSessionLimitError } from "../../src/session/errors.ts";
import { SessionRegistry } from "../../src/session/registry.ts";
import { rejection } from "../helpers/promises.ts";
import { FAKE_INITIALIZE_RESULT, FakeChild, FakeTimers, fakeSessionConfig, initializingChild, readMessages, settle, type Json } from "../bridge/fakes.ts";

const HOUR = 3_600_000;
const ALICE = { grantId: "grant-a", forgejoUserId: 1, clientId: "client" };

type HeldChild = FakeChild & { answerInitialize(): void };

/** A child that answers initialize only when the test says so: what happens while a child starts. */
function heldChild(answer: (message: Json, child: FakeChild) => void = () => {}): HeldChild {
  let initialize: Json | null = null;
  const child = new FakeChild({
    onMessage: (message, self) => {
      if (message.method === "initialize") initialize = message;
      answer(message, self);
    },
  }) as HeldChild;
  child.answerInitialize = () => child.send({ jsonrpc: "2.0", id: initialize!.id, result: FAKE_INITIALIZE_RESULT });
  return child;
}

function setup(
  options: {
    grantIsLive?: (grantId: string) => Promise<boolean>;
    expiresInMs?: number | null;
    answer?: (message: Json, child: FakeChild) => void;
    maxSessionsPerUser?: number;
    /** Children that exit only when the test says so. */
    slowStop?: boolean;
    continuationDeadlineMs?: number;
    /** Children answer initialize only when the test calls answerInitialize(). */
    holdInitialize?: boolean;
    /** The per-user count across replicas. */
    userSlots?: SharedUserSlots;
  } = {},
) {
  const timers = new FakeTimers();
  const children: HeldChild[] = [];
  const config = fakeSessionConfig({ maxSessionsPerUser: options.maxSessionsPerUser ?? 3 });
  const spawn = () => {
    const child = (options.holdInitialize ? heldChild(options.answer) : initializingChild(options.answer, { slowStop: options.slowStop })) as HeldChild;
    children.push(child);
    return child;
  };
  const upstreamToken = async () => ({ token: "t", expiresAt: options.expiresInMs === null ? null : timers.now() + (options.expiresInMs ?? HOUR) });
  const logger = createMemoryLogger();
  const registry = new SessionRegistry({ config, spawn, upstreamToken, logger, timers, reapIntervalMs: 10_000, userSlots: options.userSlots });
  const principals: PrincipalChildren = new PrincipalChildren({
    config,
    spawn,
    childEra: "legacy",
    childCommand: "fake",
    upstreamToken,
    limits: registry.shareLimits(() => principals.capped()),
    grantIsLive: options.grantIsLive,
    logger,
    timers,
    reapIntervalMs: 10_000,
    continuationDeadlineMs: options.continuationDeadlineMs,
  });
  return { principals, registry, timers, children };
}

const request = (id: number, method = "tools/call", params: Json = { name: "t" }): IncomingMessage => {
  const message = { jsonrpc: "2.0", id, method, params };
  return { raw: JSON.stringify(message), message };
};


describe("a principal's child", () => {
  test("is initialized once as the broker's, declaring what the broker will translate, then told initialized", async () => {
    const { principals, children } = setup();
    await principals.childFor(ALICE);
    await principals.childFor(ALICE);
    expect(children.length).toBe(1);
    const [initialize, initialized] = children[0]!.messages;
    expect(initialize).toMatchObject({ method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: { elicitation: {}, sampling: {}, roots: {} } } });
    expect(initialized).toEqual({ jsonrpc: "2.0", method: "notifications/initialized" });
  });

  test("idle for the idle timeout with nothing in flight: stopped; the next call starts another", async () => {
    const { principals, timers, children } = setup();
    await principals.childFor(ALICE);
    timers.advance(900_000 + 10_000);
    await settle();
    expect(children[0]!.stopCalls).toBe(1);
    expect(principals.size).toBe(0);
    await principals.childFor(ALICE);
    expect(children.length).toBe(2);
  });

  test("a crash: the call in flight gets an error at once, the next call a new child", async () => {
    const { principals, children } = setup();
    const stream = (await principals.childFor(ALICE)).call(request(1));
    children[0]!.exit({ code: 137 });
    expect((await readMessages(stream)).at(-1)).toMatchObject({ id: 1, error: { code: -32000 } });
    await principals.childFor(ALICE);
    expect(children.length).toBe(2);
  });

  test("its grant revoked: the call in flight fails now and the child stops; while a token of the grant lives, it stays", async () => {
    let live = true;
    const { principals, children } = setup({ grantIsLive: async () => live });
    const stream = (await principals.childFor(ALICE)).call(request(1));
    await principals.grantRevoked(ALICE.grantId);
    expect(children[0]!.stopCalls).toBe(0);
    live = false;
    await principals.grantRevoked(ALICE.grantId);
    expect(children[0]!.stopCalls).toBe(1);
    expect((await readMessages(stream)).at(-1)).toMatchObject({ id: 1, error: { code: -32000 } });
  });

  test("its token due for a refresh: the next child starts first, takes the new calls once initialized; the old finishes its call in flight, then stops", async () => {
    const { principals, timers, children } = setup({ expiresInMs: 400_000, holdInitialize: true });
    const starting = principals.childFor(ALICE);
    await settle();
    children[0]!.answerInitialize();
    const child = await starting;
    const stream = child.call(request(1));
    // Due when half its life is left at most (the lead cut to 200 s): before the call's own 300 s timeout.
    timers.advance(200_000);
    await settle();
    expect(children).toHaveLength(2);
    // Until the next child is initialized, the old one serves.
    expect(child.closed).toBeNull();
    expect(await principals.childFor(ALICE)).toBe(child);
    children[1]!.answerInitialize();
    await settle();
    expect(child.closed).not.toBeNull();
    const next = await principals.childFor(ALICE);
    expect(next).not.toBe(child);
    expect(next.childPid).toBe(children[1]!.pid);
    expect(children[0]!.stopCalls).toBe(0);
    children[0]!.send({ jsonrpc: "2.0", id: (children[0]!.messages[2] as { id: string }).id, result: { content: [] } });
    expect(await readMessages(stream)).toEqual([{ jsonrpc: "2.0", id: 1, result: { content: [], resultType: "complete" } }]);
    await settle();
    expect(children[0]!.stopCalls).toBe(1);
  });

  test("rotated, with a next child that cannot start: the old one retires all the same, and the next call starts one", async () => {
    const { principals, children } = setup({ holdInitialize: true });
    const starting = principals.childFor(ALICE);
    await settle();
    children[0]!.answerInitialize();
    const child = await starting;
    principals.userTokenRotated(ALICE.forgejoUserId);
    await settle();
    children[1]!.exit({ code: 1 });
    await settle();
    expect(child.closed).not.toBeNull();
    const next = principals.childFor(ALICE);
    await settle();
    expect(children).toHaveLength(3);
    children[2]!.answerInitialize();
    expect((await next).childPid).toBe(children[2]!.pid);
  });

  test("a token that lives shorter than the refresh lead: the child is replaced after half its life, not at once", async () => {
    const { principals, timers, children } = setup({ expiresInMs: 20_000 });
    const child = await principals.childFor(ALICE);
    timers.advance(9_000);
    await settle();
    expect(children).toHaveLength(1);
    timers.advance(1_000);
    await settle();
    expect(children).toHaveLength(2);
    expect(child.closed).not.toBeNull();
  });

  test("the child's ping is answered by the broker; its elicitation is refused at once", async () => {
    const { principals, children } = setup();
    await principals.childFor(ALICE);
    children[0]!.send({ jsonrpc: "2.0", id: "c1", method: "ping" });
    children[0]!.send({ jsonrpc: "2.0", id: "c2", method: "elicitation/create", params: {} });
    await settle();
    expect(children[0]!.messages.slice(2)).toEqual([
      { jsonrpc: "2.0", id: "c1", result: {} },
      { jsonrpc: "2.0", id: "c2", error: { code: -32003, message: expect.stringContaining("elicitation/create cannot be delivered") } },
    ]);
  });

  test("a log goes only to a call that asked for its level", async () => {
    const { principals, children } = setup();
    const child = await principals.childFor(ALICE);
    const log = { jsonrpc: "2.0", method: "notifications/message", params: { level: "warning", data: "careful" } };
    const answerLast = async (stream: ReturnType<typeof child.call>) => {
      const sent = children[0]!.messages.at(-1) as { id: string };
      children[0]!.send(log);
      await settle();
      children[0]!.send({ jsonrpc: "2.0", id: sent.id, result: {} });
      return (await readMessages(stream)).map((message) => message.method ?? "answer");
    };
    const withLevel = (level: string | undefined) => request(1, "tools/call", { name: "t", _meta: level === undefined ? {} : { "io.modelcontextprotocol/logLevel": level } });
    expect(await answerLast(child.call(withLevel(undefined)))).toEqual(["answer"]);
    expect(await answerLast(child.call(withLevel("error")))).toEqual(["answer"]);
    expect(await answerLast(child.call(withLevel("info")))).toEqual(["notifications/message", "answer"]);
  });
});

describe("one set of caps over sessions and grants' children", () => {
  const INITIALIZE = request(1, "initialize", { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "c", version: "1" } });

  test("at the per-user cap, a new session ends the user's idle grant child, and a grant's first call ends an idle session", async () => {
    const { principals, registry, timers, children } = setup({ maxSessionsPerUser: 1 });
    await principals.childFor(ALICE);
    timers.advance(1000);
    const { entry } = await registry.create(ALICE, INITIALIZE);
    expect(children[0]!.stopCalls).toBe(1);
    expect(principals.size).toBe(0);
    timers.advance(1000);
    await principals.childFor(ALICE);
    expect(children[1]!.stopCalls).toBe(1);
    expect(registry.sessionsOf(ALICE.forgejoUserId)).toEqual([]);
    expect(entry.closed).not.toBeNull();
    expect(registry.evictions).toEqual({ user: 2, global: 0 });
  });

  test("among replicas, a grant's child counts in the user's count from its start until its process has exited", async () => {
    const holding: number[] = [];
    const userSlots: SharedUserSlots = { take: async (_user, count) => (holding.push(count), { taken: true }), update: (_user, count) => void holding.push(count) };
    const { principals, children } = setup({ userSlots });
    await principals.childFor(ALICE);
    expect(holding).toEqual([1, 1]);
    children[0]!.exit({ code: 137 });
    await settle();
    expect(holding.at(-1)).toBe(0);
  });

  test("a grant's child with a call in flight is not ended: the new session is refused with 429", async () => {
    const { principals, registry, children } = setup({ maxSessionsPerUser: 1 });
    (await principals.childFor(ALICE)).call(request(1));
    expect(await rejection(registry.create(ALICE, INITIALIZE))).toBeInstanceOf(UserSessionLimitError);
    expect(children[0]!.stopCalls).toBe(0);
    expect(children.length).toBe(1);
  });

  test("rotated at the cap with a call in flight: the successor takes its slot and serves; the old finishes its call, then stops; nobody is evicted", async () => {
    const { principals, registry, children } = setup({ maxSessionsPerUser: 1 });
    const stream = (await principals.childFor(ALICE)).call(request(1));
    principals.userTokenRotated(ALICE.forgejoUserId);
    await settle();
    expect(children).toHaveLength(2);
    expect((await principals.childFor(ALICE)).childPid).toBe(children[1]!.pid);
    expect(children[0]!.stopCalls).toBe(0);
    // Out of the caps' count, but still a running child for the drain's.
    expect(registry.childrenHoldingSlots).toBe(2);
    children[0]!.send({ jsonrpc: "2.0", id: (children[0]!.messages[2] as { id: string }).id, result: { content: [] } });
    expect((await readMessages(stream)).at(-1)).toMatchObject({ id: 1, result: { resultType: "complete" } });
    await settle();
    expect(children[0]!.stopCalls).toBe(1);
    expect(registry.evictions).toEqual({ user: 0, global: 0 });
  });

  test("rotated at the cap while idle: its successor takes its slot and serves, the old one stops, and nobody is evicted", async () => {
    const { principals, registry, children } = setup({ maxSessionsPerUser: 1 });
    const child = await principals.childFor(ALICE);
    principals.userTokenRotated(ALICE.forgejoUserId);
    await settle();
    expect(children).toHaveLength(2);
    expect(children[0]!.stopCalls).toBe(1);
    const next = await principals.childFor(ALICE);
    expect(next).not.toBe(child);
    expect(next.childPid).toBe(children[1]!.pid);
    expect(registry.evictions).toEqual({ user: 0, global: 0 });
  });

  test("the successor holds the slot it took over: a new session at the cap ends it once idle, not the retiring child", async () => {
    const { principals, registry, children } = setup({ maxSessionsPerUser: 1 });
    const stream = (await principals.childFor(ALICE)).call(request(1));
    principals.userTokenRotated(ALICE.forgejoUserId);
    await settle();
    await registry.create(ALICE, INITIALIZE);
    expect(children[1]!.stopCalls).toBe(1);
    expect(children[0]!.stopCalls).toBe(0);
    expect(registry.evictions).toEqual({ user: 1, global: 0 });
    children[0]!.send({ jsonrpc: "2.0", id: (children[0]!.messages[2] as { id: string }).id, result: { content: [] } });
    expect((await readMessages(stream)).at(-1)).toMatchObject({ id: 1, result: { resultType: "complete" } });
  });

  test("shutdown stops a retired child whose call is still in flight too, and waits for it", async () => {
    const { principals, children } = setup();
    const stream = (await principals.childFor(ALICE)).call(request(1));
    principals.userTokenRotated(ALICE.forgejoUserId);
    expect(children[0]!.stopCalls).toBe(0);
    await principals.shutdown();
    expect(children[0]!.stopCalls).toBe(1);
    expect((await readMessages(stream)).at(-1)).toMatchObject({ id: 1, error: { code: -32000 } });
  });
});

describe("a draining broker (a stop under way: its calls in flight finish, then its children stop)", () => {
  const BOB = { grantId: "grant-b", forgejoUserId: 2, clientId: "client" };
  /** Whether `promise` has resolved by now. */
  const resolvedYet = async (promise: Promise<unknown>) => {
    let resolved = false;
    void promise.then(() => (resolved = true));
    await settle();
    return resolved;
  };

  test("a call in flight when the drain starts completes, and callsSettled waits for it; a new call is refused with 503 and Retry-After, no child starts", async () => {
    const { principals, registry, children } = setup();
    const stream = (await principals.childFor(ALICE)).call(request(1));
    const callId = (children[0]!.messages.at(-1) as { id: string }).id;
    registry.drain();
    const settled = principals.callsSettled();
    expect(await resolvedYet(settled)).toBe(false);

    for (const identity of [ALICE, BOB]) {
      const refused = await rejection(principals.childFor(identity));
      expect(refused).toBeInstanceOf(McpRefusal);
      expect(refused).toMatchObject({ status: 503, headers: { "Retry-After": "30" }, message: expect.stringContaining("draining") });
    }
    expect(children.length).toBe(1);

    children[0]!.send({ jsonrpc: "2.0", id: callId, result: { content: [] } });
    expect(await readMessages(stream)).toEqual([{ jsonrpc: "2.0", id: 1, result: { content: [], resultType: "complete" } }]);
    expect(await resolvedYet(settled)).toBe(true);
    expect(children[0]!.stopCalls).toBe(0);
  });

  test("after the grace, shutdown cuts the call still in flight: its caller gets an error, callsSettled resolves, the child is stopped", async () => {
    const { principals, registry, children } = setup();
    const stream = (await principals.childFor(ALICE)).call(request(1));
    registry.drain();
    const settled = principals.callsSettled();
    expect(await resolvedYet(settled)).toBe(false);
    await principals.shutdown();
    expect((await readMessages(stream)).at(-1)).toMatchObject({ id: 1, error: { code: -32000 } });
    expect(await resolvedYet(settled)).toBe(true);
    expect(children[0]!.stopCalls).toBe(1);
  });
});

describe("a child's elicitation while a modern caller's call is in flight (MRTR)", () => {
  const ELICIT = { jsonrpc: "2.0", id: "e1", method: "elicitation/create", params: { message: "Colour?", requestedSchema: { type: "object" } } };
  const asking = (id: number) => request(id, "tools/call", { name: "ask", _meta: { "io.modelcontextprotocol/clientCapabilities": { elicitation: {} } } });
  const retry = (id: number, state: string, params: Json = {}) =>
    request(id, "tools/call", { name: "ask", inputResponses: { "elicitation-1": { action: "accept", content: { a: "teal" } } }, requestState: state, ...params });

  /** A child with one asking call sent (its id on the child returned) and the child's elicitation sent for it. */
  async function parkedCall(options: Parameters<typeof setup>[0] = {}) {
    const fixture = setup(options);
    const child = await fixture.principals.childFor(ALICE);
    const stream = child.call(asking(1));
    const callId = (fixture.children[0]!.messages.at(-1) as { id: string }).id;
    fixture.children[0]!.send(ELICIT);
    await settle();
    fixture.timers.advance(ASKED_TOGETHER_MS);
    const [interim] = await readMessages(stream);
    return { ...fixture, child, callId, interim: interim as { result: { requestState: string; resultType: string } } };
  }

  test("goes to the caller as input_required; the retry answers the child and carries the call's result", async () => {
    const { principals, children, child, callId, interim } = await parkedCall();
    expect(interim).toMatchObject({ id: 1, result: { resultType: "input_required", inputRequests: { "elicitation-1": { method: "elicitation/create", params: ELICIT.params } } } });
    expect(child.inFlight).toBe(1);
    const resumed = principals.resume(ALICE, retry(2, interim.result.requestState));
    expect(children[0]!.messages.at(-1)).toEqual({ jsonrpc: "2.0", id: "e1", result: { action: "accept", content: { a: "teal" } } });
    children[0]!.send({ jsonrpc: "2.0", id: callId, result: { content: [] } });
    expect(await readMessages(await resumed)).toEqual([{ jsonrpc: "2.0", id: 2, result: { content: [], resultType: "complete" } }]);
  });

  test("two questions that reach the broker in two reads, a few milliseconds apart, still go out in one input_required", async () => {
    const { principals, children, timers } = setup();
    const child = await principals.childFor(ALICE);
    const stream = child.call(asking(1));
    children[0]!.send(ELICIT);
    await settle();
    timers.advance(ASKED_TOGETHER_MS / 2);
    children[0]!.send({ ...ELICIT, id: "e2" });
    await settle();
    timers.advance(ASKED_TOGETHER_MS);
    const [interim] = await readMessages(stream);
    expect(Object.keys((interim as { result: { inputRequests: Json } }).result.inputRequests)).toEqual(["elicitation-1", "elicitation-2"]);
  });

  test(`a call has at most ${MAX_INPUT_REQUESTS} child requests waiting for its caller; one more is refused at once`, async () => {
    const { children, interim } = await parkedCall();
    expect(interim.result.resultType).toBe("input_required");
    for (let i = 2; i <= MAX_INPUT_REQUESTS + 1; i++) children[0]!.send({ ...ELICIT, id: `e${i}` });
    await settle();
    const refusals = children[0]!.messages.filter((message) => "error" in message);
    expect(refusals).toEqual([{ jsonrpc: "2.0", id: `e${MAX_INPUT_REQUESTS + 1}`, error: { code: -32003, message: expect.stringContaining("already wait") } }]);
  });

  test("with two calls in flight the broker cannot tell whose it is: refused, both calls go on", async () => {
    const { principals, children } = setup();
    const child = await principals.childFor(ALICE);
    child.call(asking(1));
    child.call(asking(2));
    children[0]!.send(ELICIT);
    await settle();
    expect(children[0]!.messages.at(-1)).toMatchObject({ id: "e1", error: { code: -32003, message: expect.stringContaining("2 calls are in flight on this server, 2 running") } });
    expect(child.inFlight).toBe(2);
  });

  test("a call waiting for a retry that never comes does not stop the next caller from being asked", async () => {
    const { child, children, timers } = await parkedCall();
    const next = child.call(asking(3));
    children[0]!.send({ ...ELICIT, id: "e2" });
    await settle();
    timers.advance(ASKED_TOGETHER_MS);
    const [interim] = await readMessages(next);
    expect(interim).toMatchObject({ id: 3, result: { resultType: "input_required", inputRequests: { "elicitation-1": { method: "elicitation/create" } } } });
    expect(child.inFlight).toBe(2);
  });

  test("nobody retries before the deadline: the child's request gets an error, the call is cancelled, nothing stays parked", async () => {
    const { principals, children, child, callId, timers } = await parkedCall();
    timers.advance(10 * 60_000);
    expect(children[0]!.messages.slice(-2)).toEqual([
      { jsonrpc: "2.0", id: "e1", error: { code: -32003, message: expect.stringContaining("deadline") } },
      { jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: callId, reason: expect.any(String) } },
    ]);
    expect(child.inFlight).toBe(0);
    expect(principals.continuations.size).toBe(0);
  });

  test("a drain does not wait for a call parked for its caller's retry; that retry, reaching this broker still, resumes it, and the drain waits for it again", async () => {
    const { principals, registry, children, callId, interim } = await parkedCall();
    registry.drain();
    let settled = false;
    await principals.callsSettled();
    const resumed = await principals.resume(ALICE, retry(2, interim.result.requestState));
    void principals.callsSettled().then(() => (settled = true));
    await settle();
    expect(settled).toBe(false);
    children[0]!.send({ jsonrpc: "2.0", id: callId, result: { content: [] } });
    expect(await readMessages(resumed)).toEqual([{ jsonrpc: "2.0", id: 2, result: { content: [], resultType: "complete" } }]);
    await settle();
    expect(settled).toBe(true);
  });

  test("a retry whose params differ is refused with -32602 and nothing reaches the child", async () => {
    const { principals, children, interim } = await parkedCall();
    const before = children[0]!.messages.length;
    const refused = await rejection(principals.resume(ALICE, retry(2, interim.result.requestState, { name: "other" })));
    expect(refused).toMatchObject({ status: 400, code: -32602 });
    expect(children[0]!.messages.length).toBe(before);
  });

  test("a child waiting on its caller's answer is not idle: the reaper leaves it", async () => {
    const { children, timers } = await parkedCall({ continuationDeadlineMs: 3 * HOUR });
    timers.advance(900_000 + 10_000);
    await settle();
    expect(children[0]!.stopCalls).toBe(0);
  });

  const endings: [string, (fixture: Awaited<ReturnType<typeof parkedCall>>) => Promise<void> | void][] = [
    ["the child crashes", ({ children }) => children[0]!.exit({ code: 137 })],
    ["the grant is revoked", ({ principals }) => principals.grantRevoked(ALICE.grantId)],
  ];
  for (const [name, end] of endings) {
    test(`${name} while the call waits: the retry gets the error at once, not a hang`, async () => {
      let live = true;
      const fixture = await parkedCall({ grantIsLive: async () => live });
      live = false;
      await end(fixture);
      expect(await readMessages(await fixture.principals.resume(ALICE, retry(2, fixture.interim.result.requestState)))).toEqual([
        { jsonrpc: "2.0", id: 2, error: { code: -32000, message: expect.any(String) } },
      ]);
    });
  }

  test("while the call waits, the child asks what the caller did not declare (roots): the retry gets -32021 and the child an error", async () => {
    const { principals, children, callId, interim } = await parkedCall();
    children[0]!.send({ jsonrpc: "2.0", id: "r1", method: "roots/list" });
    await settle();
    expect(children[0]!.messages.slice(-3)).toEqual([
      { jsonrpc: "2.0", id: "r1", error: { code: -32003, message: expect.stringContaining("roots") } },
      { jsonrpc: "2.0", id: "e1", error: { code: -32003, message: expect.any(String) } },
      { jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: callId, reason: expect.any(String) } },
    ]);
    expect(await readMessages(await principals.resume(ALICE, retry(2, interim.result.requestState)))).toEqual([
      { jsonrpc: "2.0", id: 2, error: { code: -32021, message: expect.any(String), data: { requiredCapabilities: { roots: {} } } } },
    ]);
  });
});

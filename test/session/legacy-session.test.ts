// A legacy session with in-memory children: what an MCP client would see on its HTTP streams, and what
// the child would see on its stdin, for each routing rule.
import { describe, expect, test } from "bun:test";
import { RotationError } from "../../src/bridge/child-channel.ts";
import type { IncomingMessage } from "../../src/bridge/jsonrpc.ts";
import type { MessageStream, OutboundEvent } from "../../src/bridge/message-stream.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { InvalidEventIdError, MessageTooLargeError, StreamConflictError } from "../../src/session/errors.ts";
import { LegacySession } from "../../src/session/legacy-session.ts";
import type { ChildExit } from "../../src/supervisor/child.ts";
import { FakeChild, FakeTimers, initializingChild, settle, type Json } from "../bridge/fakes.ts";
import { failureRef, loggedUnder } from "../helpers/failure-report.ts";

function setup(options: { child?: FakeChild; maxMessageBytes?: number; replayMaxEvents?: number } = {}) {
  const child = options.child ?? new FakeChild();
  const timers = new FakeTimers();
  const logger = createMemoryLogger();
  const exits: ChildExit[] = [];
  const session = new LegacySession(child, {
    id: "0".repeat(48),
    binding: { grantId: "grant", forgejoUserId: 1, clientId: "client" },
    logger,
    timers,
    requestTimeoutMs: 30_000,
    maxMessageBytes: options.maxMessageBytes ?? 10_000,
    replayMaxEvents: options.replayMaxEvents,
    onChildExit: (exit) => exits.push(exit),
  });
  return { session, child, timers, logger, exits };
}

function msg(message: Json): IncomingMessage {
  return { raw: JSON.stringify(message), message };
}

const call = (id: number | string, name: string, extra: Json = {}) =>
  msg({ jsonrpc: "2.0", id, method: "tools/call", params: { name, arguments: {}, ...extra } });

async function all(stream: MessageStream): Promise<OutboundEvent[]> {
  const out: OutboundEvent[] = [];
  for await (const event of stream) out.push(event);
  return out;
}

describe("requests and responses", () => {
  test("concurrent requests each get their own response, byte for byte as the child wrote it", async () => {
    const { session, child } = setup();
    const first = session.request(call(1, "a"));
    const second = session.request(call("two", "b"));
    expect(child.messages.map((m) => m.id)).toEqual([1, "two"]);
    const raw2 = '{"jsonrpc":"2.0","id":"two","result":{"content":[],"x-vendor":{"kept":true}}}';
    child.emitRaw(raw2 + "\n" + '{"jsonrpc":"2.0","id":1,"result":{"n":1}}\n');
    const [a, b] = await Promise.all([all(first), all(second)]);
    expect(b.map((e) => e.data)).toEqual([raw2]);
    expect(a.map((e) => (e.message.result as Json).n)).toEqual([1]);
    expect(a[0]!.kind).toBe("response");
    expect(session.inFlight).toBe(0);
    expect(session.activeStreams).toBe(0);
  });

  test("a pretty-printed client message reaches the child as one line with every field", () => {
    const { session, child } = setup();
    const message = { jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "echo", arguments: { text: "a\nb" } }, extra: 1 };
    session.request({ raw: JSON.stringify(message, null, 2), message });
    expect(child.written.length).toBe(1);
    expect(JSON.parse(child.written[0]!)).toEqual(message);
  });

  test("a duplicate in-flight id is refused with a JSON-RPC error and not sent to the child", async () => {
    const { session, child } = setup();
    session.request(call(1, "a"));
    const events = await all(session.request(call(1, "b")));
    expect(events.map((e) => e.message)).toEqual([
      { jsonrpc: "2.0", id: 1, error: { code: -32600, message: "request id 1 is already in flight in this session" } },
    ]);
    expect(child.written.length).toBe(1);
  });

  test("the same id is fine again once the first is answered", async () => {
    const { session, child } = setup();
    const first = session.request(call(1, "a"));
    child.send({ jsonrpc: "2.0", id: 1, result: {} });
    await all(first);
    session.request(call(1, "b"));
    expect(child.written.length).toBe(2);
  });

  test("client notifications and responses go to the child", () => {
    const { session, child } = setup();
    session.send(msg({ jsonrpc: "2.0", method: "notifications/initialized" }), "notification");
    expect(child.messages).toEqual([{ jsonrpc: "2.0", method: "notifications/initialized" }]);
  });
});

describe("streams for server messages", () => {
  test("progress goes to the request that owns the token, then the response ends that stream", async () => {
    const { session, child } = setup();
    const slow = session.request(call(1, "slow_count", { _meta: { progressToken: "p1" } }));
    const other = session.request(call(2, "slow_count", { _meta: { progressToken: 99 } }));
    child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: 99, progress: 1 } });
    child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p1", progress: 1, total: 2 } });
    child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p1", progress: 2, total: 2 } });
    child.send({ jsonrpc: "2.0", id: 1, result: { done: true } });
    child.send({ jsonrpc: "2.0", id: 2, result: { done: true } });
    const [a, b] = await Promise.all([all(slow), all(other)]);
    expect(a.map((e) => e.kind)).toEqual(["notification", "notification", "response"]);
    expect(a.map((e) => ((e.message.params as Json | undefined)?.progress ?? "end"))).toEqual([1, 2, "end"]);
    expect(b.map((e) => e.kind)).toEqual(["notification", "response"]);
  });

  test("a server request during the only call in flight goes on that call's stream, and the answer reaches the child", async () => {
    const { session, child } = setup();
    const ask = session.request(call(5, "ask_user"));
    child.send({ jsonrpc: "2.0", id: 0, method: "elicitation/create", params: { message: "Name?", requestedSchema: {} } });
    await settle();
    const first = await ask.next();
    expect(first?.message.method).toBe("elicitation/create");
    session.send(msg({ jsonrpc: "2.0", id: 0, result: { action: "accept", content: { name: "ann" } } }), "response");
    expect(child.messages.at(-1)).toEqual({ jsonrpc: "2.0", id: 0, result: { action: "accept", content: { name: "ann" } } });
    child.send({ jsonrpc: "2.0", id: 5, result: { content: [{ type: "text", text: "ann" }] } });
    expect((await ask.next())?.kind).toBe("response");
    expect(await ask.next()).toBeNull();
  });

  test("server messages go to the standalone stream when it is open", async () => {
    const { session, child } = setup();
    const standalone = session.openStandalone();
    const callStream = session.request(call(1, "a"));
    child.send({ jsonrpc: "2.0", method: "notifications/tools/list_changed" });
    await settle();
    expect((await standalone.next())?.message.method).toBe("notifications/tools/list_changed");
    child.send({ jsonrpc: "2.0", id: 1, result: {} });
    expect((await all(callStream)).length).toBe(1);
  });

  test("with several calls in flight and no standalone stream, server messages wait for one", async () => {
    const { session, child } = setup();
    session.request(call(1, "a"));
    session.request(call(2, "b"));
    child.send({ jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: "hello" } });
    await settle();
    const standalone = session.openStandalone();
    expect((await standalone.next())?.message.params).toEqual({ level: "info", data: "hello" });
  });

  test("a server request while only a JSON-only call is in flight is refused to the child at once; the call gets its answer alone", async () => {
    const { session, child } = setup();
    const ask = session.request(call(5, "ask_user"), { jsonAnswer: true, sse: false });
    child.send({ jsonrpc: "2.0", id: 0, method: "elicitation/create", params: { message: "Name?", requestedSchema: {} } });
    await settle();
    expect(child.messages.at(-1)).toEqual({
      jsonrpc: "2.0",
      id: 0,
      error: {
        code: -32003,
        message: "elicitation/create cannot be delivered: the client has no GET stream open and no request in flight whose stream can carry it",
      },
    });
    child.send({ jsonrpc: "2.0", id: 5, result: { content: [], isError: true } });
    expect((await all(ask)).map((e) => e.kind)).toEqual(["response"]);
    // Nothing was kept for a GET stream either: the child has its answer already.
    const standalone = session.openStandalone();
    child.send({ jsonrpc: "2.0", method: "notifications/tools/list_changed" });
    await settle();
    expect((await standalone.next())?.message.method).toBe("notifications/tools/list_changed");
  });

  test("initialize's stream carries only its answer: a request of the child's before it is refused at once, a notification waits for the GET stream", async () => {
    const { session, child } = setup();
    const init = session.request(msg({ jsonrpc: "2.0", id: 0, method: "initialize", params: {} }));
    child.send({ jsonrpc: "2.0", id: "r", method: "roots/list" });
    child.send({ jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: "starting" } });
    await settle();
    expect(child.messages.at(-1)?.error).toEqual({
      code: -32003,
      message: "roots/list cannot be delivered: the client has no GET stream open and no request in flight whose stream can carry it",
    });
    child.send({ jsonrpc: "2.0", id: 0, result: {} });
    expect((await all(init)).map((e) => e.kind)).toEqual(["response"]);
    expect((await session.openStandalone().next())?.message.params).toEqual({ level: "info", data: "starting" });
  });

  test("a server request goes to the one call that takes SSE, not to a JSON-only one", async () => {
    const { session, child } = setup();
    const json = session.request(call(1, "a"), { jsonAnswer: true, sse: false });
    const sse = session.request(call(2, "b"), { jsonAnswer: true, sse: true });
    child.send({ jsonrpc: "2.0", id: 0, method: "roots/list" });
    await settle();
    expect((await sse.next())?.message.method).toBe("roots/list");
    expect(child.messages.map((m) => m.id)).toEqual([1, 2]);
    child.send({ jsonrpc: "2.0", id: 1, result: {} });
    expect((await all(json)).map((e) => e.kind)).toEqual(["response"]);
  });

  test("a server request with several SSE calls in flight and no standalone stream is refused to the child at once", async () => {
    const { session, child } = setup();
    session.request(call(1, "a"));
    session.request(call(2, "b"));
    child.send({ jsonrpc: "2.0", id: 0, method: "sampling/createMessage", params: {} });
    await settle();
    expect(child.messages.at(-1)?.error).toEqual({
      code: -32003,
      message: "sampling/createMessage cannot be delivered: the client has no GET stream open and 2 requests in flight as SSE, so none is known to be the one this belongs to",
    });
  });

  test("with the standalone stream open, a server request during a JSON-only call goes there", async () => {
    const { session, child } = setup();
    const standalone = session.openStandalone();
    session.request(call(1, "ask_user"), { jsonAnswer: true, sse: false });
    child.send({ jsonrpc: "2.0", id: 0, method: "elicitation/create", params: {} });
    await settle();
    expect((await standalone.next())?.message.method).toBe("elicitation/create");
    expect(child.messages.map((m) => m.id)).toEqual([1]);
  });

  test("progress for a JSON-only call stays off its stream and waits for the standalone stream", async () => {
    const { session, child } = setup();
    const json = session.request(call(1, "slow_count", { _meta: { progressToken: "p" } }), { jsonAnswer: true, sse: false });
    child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p", progress: 1 } });
    child.send({ jsonrpc: "2.0", id: 1, result: {} });
    expect((await all(json)).map((e) => e.kind)).toEqual(["response"]);
    const standalone = session.openStandalone();
    expect((await standalone.next())?.message.method).toBe("notifications/progress");
  });

  test("a second standalone stream is refused while one is open, and allowed once it closes", () => {
    const { session } = setup();
    const first = session.openStandalone();
    expect(() => session.openStandalone()).toThrow(StreamConflictError);
    first.close();
    expect(() => session.openStandalone()).not.toThrow();
  });
});

describe("failures", () => {
  test("a request the child never answers gets a timeout error, the child a cancellation, and the session goes on", async () => {
    const { session, child, timers } = setup();
    const stuck = session.request(call(1, "hang"));
    timers.advance(30_000);
    expect((await all(stuck)).map((e) => e.message.error)).toEqual([{ code: -32001, message: "the MCP server did not answer within 30 s" }]);
    expect(child.messages.at(-1)).toEqual({
      jsonrpc: "2.0",
      method: "notifications/cancelled",
      params: { requestId: 1, reason: "request timed out" },
    });
    const next = session.request(call(2, "echo"));
    child.send({ jsonrpc: "2.0", id: 1, result: "late" });
    child.send({ jsonrpc: "2.0", id: 2, result: "ok" });
    expect((await all(next)).map((e) => e.message.result)).toEqual(["ok"]);
  });

  test("when the child exits, every waiting caller gets an error at once naming the reference its last stderr line is logged under", async () => {
    const { session, child, exits, logger } = setup();
    const a = session.request(call(1, "a"));
    const b = session.request(call(2, "b"));
    child.stderr = "panic: GET http://forgejo.internal:3000/api/v1/user: 401";
    child.exit({ code: 2 });
    await settle();
    const errors = (await Promise.all([all(a), all(b)])).map((events) => events.map((e) => e.message.error as { code: number; message: string }));
    const message = errors[0]![0]!.message;
    const ref = failureRef(message, "the MCP server exited");
    expect(ref).not.toBeNull();
    expect(errors).toEqual([[{ code: -32000, message }], [{ code: -32000, message }]]);
    expect(loggedUnder(logger.lines, ref!)).toEqual([
      expect.objectContaining({ level: "warn", msg: "the MCP server exited", last_stderr_line: "panic: GET http://forgejo.internal:3000/api/v1/user: 401" }),
    ]);
    expect(exits).toEqual([{ code: 2, signal: null, lastStderrLine: "panic: GET http://forgejo.internal:3000/api/v1/user: 401" }]);
    expect(session.closed).toBe(message);
    expect((await all(session.request(call(3, "c"))))[0]!.message.error).toEqual({ code: -32000, message });
  });

  test("a child the broker stops is no failure: nothing is reported", async () => {
    const { session, child, logger } = setup();
    child.stderr = "shutting down";
    await session.close();
    expect(child.stopCalls).toBe(1);
    expect(logger.lines.filter((line) => line.includes('"ref"'))).toEqual([]);
  });

  test("a client that disconnects makes the session cancel its request at the child", async () => {
    const { session, child } = setup();
    const stream = session.request(call(9, "slow_count"));
    stream.close();
    expect(child.messages.at(-1)).toEqual({
      jsonrpc: "2.0",
      method: "notifications/cancelled",
      params: { requestId: 9, reason: "client disconnected" },
    });
    expect(session.inFlight).toBe(0);
    child.send({ jsonrpc: "2.0", id: 9, result: "too late" });
    await settle();
    expect(session.inFlight).toBe(0);
  });

  test("a client's own notifications/cancelled reaches the child and ends the request's stream", async () => {
    const { session, child } = setup();
    const stream = session.request(call(4, "slow_count"));
    session.send(msg({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: 4 } }), "notification");
    expect(child.messages.at(-1)?.method).toBe("notifications/cancelled");
    expect(await all(stream)).toEqual([]);
  });

  test("a client message over the limit is refused and nothing reaches the child", () => {
    const { session, child } = setup({ maxMessageBytes: 200 });
    expect(() => session.request(call(1, "echo", { arguments: { text: "x".repeat(300) } }))).toThrow(MessageTooLargeError);
    expect(child.written).toEqual([]);
  });

  test("a child message over the limit is dropped and logged, and the next one gets through", async () => {
    const { session, child, logger } = setup({ maxMessageBytes: 200 });
    const big = session.request(call(1, "big"));
    child.send({ jsonrpc: "2.0", id: 1, result: { text: "x".repeat(500) } });
    child.send({ jsonrpc: "2.0", id: 1, result: { text: "small" } });
    expect((await all(big)).map((e) => e.message.result)).toEqual([{ text: "small" }]);
    expect(logger.lines.some((line) => line.includes("over the size limit"))).toBe(true);
  });

  test("a line that is not JSON is logged and skipped", async () => {
    const { session, child, logger } = setup();
    const stream = session.request(call(1, "a"));
    child.emitRaw("Starting forgejo-mcp v2 on stdio\n");
    child.send({ jsonrpc: "2.0", id: 1, result: {} });
    expect((await all(stream)).length).toBe(1);
    expect(logger.lines.some((line) => line.includes("not a JSON-RPC message"))).toBe(true);
  });
});

describe("event ids and replay", () => {
  test("each stream's events carry ids naming that stream, and Last-Event-ID replays only what it missed", async () => {
    const { session, child } = setup();
    const stream = session.request(call(1, "slow_count", { _meta: { progressToken: "t" } }));
    session.request(call(2, "other", { _meta: { progressToken: "u" } }));
    for (const progress of [1, 2, 3]) {
      child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "t", progress } });
      child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "u", progress } });
    }
    await settle();
    const seen = await stream.next();
    stream.close();
    const replayed = await all(session.resume(seen!.eventId));
    expect(replayed.map((e) => (e.message.params as Json).progress)).toEqual([2, 3]);
    expect(new Set(replayed.map((e) => e.eventId.split("_")[0]))).toEqual(new Set([seen!.eventId.split("_")[0]]));
  });

  test("an answer that goes out as plain JSON is not kept for replay; one that follows progress on an SSE stream is", async () => {
    const { session, child } = setup();
    const plain = session.request(call(1, "a"), { jsonAnswer: true });
    child.emitRaw('{"jsonrpc":"2.0","id":1,"result":{"n":1}}\n');
    const [answer] = await all(plain);
    expect(answer!.kind).toBe("response");
    const [stream] = answer!.eventId.split("_");
    expect(await all(session.resume(`${stream}_0`))).toEqual([]);

    const streamed = session.request(call(2, "slow_count", { _meta: { progressToken: "t" } }), { jsonAnswer: true });
    child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "t", progress: 1 } });
    child.emitRaw('{"jsonrpc":"2.0","id":2,"result":{"n":2}}\n');
    const events = await all(streamed);
    expect(events.map((e) => e.kind)).toEqual(["notification", "response"]);
    const replayed = await all(session.resume(events[0]!.eventId));
    expect(replayed.map((e) => e.data)).toEqual([events[1]!.data]);
  });

  test("the standalone stream resumes after Last-Event-ID and goes on live", async () => {
    const { session, child } = setup();
    const first = session.openStandalone();
    child.send({ jsonrpc: "2.0", method: "notifications/message", params: { data: 1 } });
    child.send({ jsonrpc: "2.0", method: "notifications/message", params: { data: 2 } });
    await settle();
    const seen = await first.next();
    const resumed = session.resume(seen!.eventId);
    child.send({ jsonrpc: "2.0", method: "notifications/message", params: { data: 3 } });
    await settle();
    expect(((await resumed.next())?.message.params as Json).data).toBe(2);
    expect(((await resumed.next())?.message.params as Json).data).toBe(3);
    expect(first.finished).toBe(true);
  });

  test("an id this session never issued is refused", () => {
    const { session } = setup();
    expect(() => session.resume("nonsense")).toThrow(InvalidEventIdError);
    expect(() => session.resume("7_3")).toThrow(InvalidEventIdError);
  });

  test("the replay buffer is bounded: the oldest events are gone", async () => {
    const { session, child } = setup({ replayMaxEvents: 3 });
    const stream = session.request(call(1, "slow_count", { _meta: { progressToken: "t" } }));
    for (let progress = 1; progress <= 6; progress++) {
      child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "t", progress } });
    }
    await settle();
    const seen = await stream.next();
    stream.close();
    expect((await all(session.resume(seen!.eventId))).map((e) => (e.message.params as Json).progress)).toEqual([4, 5, 6]);
  });
});

describe("moving to a new child", () => {
  const init = msg({ jsonrpc: "2.0", id: 0, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "c", version: "1" } } });
  const initialized = msg({ jsonrpc: "2.0", method: "notifications/initialized" });

  async function initialized_session() {
    const ctx = setup({ child: initializingChild() });
    await all(ctx.session.request(init));
    ctx.session.send(initialized, "notification");
    return ctx;
  }

  test("replays initialize under a broker id, keeps the old child until its call is answered, and sends new calls to the new child", async () => {
    const { session, child: old } = await initialized_session();
    const inFlight = session.request(call(1, "slow"));
    const fresh = initializingChild();
    await session.replaceChild(fresh, 5000);
    expect(fresh.messages.map((m) => m.method)).toEqual(["initialize", "notifications/initialized"]);
    expect(String(fresh.messages[0]!.id)).toStartWith("fmb-rotate-");
    expect(fresh.messages[0]!.params).toEqual(init.message.params);
    expect(old.stopCalls).toBe(0);

    const next = session.request(call(2, "echo"));
    expect(fresh.messages.at(-1)?.id).toBe(2);
    fresh.send({ jsonrpc: "2.0", id: 2, result: "from new" });
    old.send({ jsonrpc: "2.0", id: 1, result: "from old" });
    expect((await all(inFlight)).map((e) => e.message.result)).toEqual(["from old"]);
    expect((await all(next)).map((e) => e.message.result)).toEqual(["from new"]);
    expect(old.stopCalls).toBe(1);
    expect(session.closed).toBeNull();
  });

  test("the old child exiting after the switch does not end the session", async () => {
    const { session, child: old, exits } = await initialized_session();
    await session.replaceChild(initializingChild(), 5000);
    old.exit({ code: 0 });
    await settle();
    expect(exits).toEqual([]);
    expect(session.closed).toBeNull();
  });

  test("a new child that dies during initialize is stopped and the old one keeps serving", async () => {
    const { session, child: old } = await initialized_session();
    const broken = new FakeChild({ onMessage: (_m, child) => ((child.stderr = "401 Unauthorized"), child.exit({ code: 1 })) });
    await expect(session.replaceChild(broken, 5000)).rejects.toThrow(RotationError);
    const next = session.request(call(3, "echo"));
    old.send({ jsonrpc: "2.0", id: 3, result: "still old" });
    expect((await all(next)).map((e) => e.message.result)).toEqual(["still old"]);
  });

  test("server requests from both children with the same id do not clash at the client", async () => {
    const { session, child: old } = await initialized_session();
    const standalone = session.openStandalone();
    // The old child has a call in flight, so it is still draining when the new one asks.
    session.request(call(1, "slow"));
    old.send({ jsonrpc: "2.0", id: 0, method: "roots/list" });
    const fresh = initializingChild();
    await session.replaceChild(fresh, 5000);
    fresh.send({ jsonrpc: "2.0", id: 0, method: "roots/list" });
    await settle();
    const ids = [(await standalone.next())!.message.id, (await standalone.next())!.message.id];
    expect(ids[0]).toBe(0);
    expect(ids[1]).not.toBe(0);
    session.send(msg({ jsonrpc: "2.0", id: ids[1], result: { roots: ["new"] } }), "response");
    session.send(msg({ jsonrpc: "2.0", id: 0, result: { roots: ["old"] } }), "response");
    expect(fresh.messages.at(-1)).toEqual({ jsonrpc: "2.0", id: 0, result: { roots: ["new"] } });
    expect(old.messages.at(-1)).toEqual({ jsonrpc: "2.0", id: 0, result: { roots: ["old"] } });
  });

  test("close fails waiters at once and stops every child", async () => {
    const { session, child, exits } = await initialized_session();
    const waiting = session.request(call(1, "slow"));
    await session.close("the session was deleted");
    expect((await all(waiting))[0]!.message.error).toEqual({ code: -32000, message: "the session was deleted" });
    expect(child.stopCalls).toBe(1);
    expect(exits).toEqual([]);
  });
});

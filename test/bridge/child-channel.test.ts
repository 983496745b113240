// The child channel on its own, with a recording event sink in place of a session: what each call's
// sender is told, what the child reads, and that nothing in it needs a client stream.
import { describe, expect, test } from "bun:test";
import { ChildChannel, RotationError, type ChannelEvents, type ChildRequest } from "../../src/bridge/child-channel.ts";
import type { IncomingMessage } from "../../src/bridge/jsonrpc.ts";
import { createMemoryLogger } from "../../src/log.ts";
import type { ChildExit } from "../../src/supervisor/child.ts";
import { FakeChild, FakeTimers, initializingChild, settle, type Json } from "./fakes.ts";

type Report =
  | { event: "progress" | "answered"; call: string; message: Json }
  | { event: "failed"; call: string; code: number; message: string }
  | { event: "cancelledByClient"; call: string }
  | { event: "childRequest"; method: string; callsOfChild: string[] }
  | { event: "childNotification"; message: Json; callsOfChild: string[] }
  | { event: "childExited"; why: string; exit: ChildExit };

/** A sink that records what it is told; child requests are handed to `onChildRequest` (default: left waiting). */
function setup(options: { child?: FakeChild; onChildRequest?: (request: ChildRequest) => void; multiplexed?: boolean } = {}) {
  const child = options.child ?? new FakeChild();
  const timers = new FakeTimers();
  const reports: Report[] = [];
  const events: ChannelEvents<string> = {
    progress: (call, incoming) => reports.push({ event: "progress", call, message: incoming.message }),
    answered: (call, incoming) => reports.push({ event: "answered", call, message: incoming.message }),
    failed: (call, code, message) => reports.push({ event: "failed", call, code, message }),
    cancelledByClient: (call) => reports.push({ event: "cancelledByClient", call }),
    childRequest: (request, callsOfChild) => {
      reports.push({ event: "childRequest", method: request.method, callsOfChild: callsOfChild() });
      options.onChildRequest?.(request);
    },
    childNotification: (incoming, callsOfChild) => reports.push({ event: "childNotification", message: incoming.message, callsOfChild: callsOfChild() }),
    childExited: (exit, why) => reports.push({ event: "childExited", why, exit }),
  };
  const channel = new ChildChannel(child, { logger: createMemoryLogger(), timers, requestTimeoutMs: 30_000, maxMessageBytes: 10_000, multiplexed: options.multiplexed }, events);
  return { channel, child, timers, reports };
}

function msg(message: Json): IncomingMessage {
  return { raw: JSON.stringify(message), message };
}

const call = (id: number | string, extra: Json = {}) => msg({ jsonrpc: "2.0", id, method: "tools/call", params: { name: "t", arguments: {}, ...extra } });

describe("calls", () => {
  test("each call's progress and answer are reported with what its sender gave, and the call is over", async () => {
    const { channel, child, reports } = setup();
    channel.call(call(1, { _meta: { progressToken: "p" } }), "first");
    channel.call(call(2), "second");
    child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p", progress: 1 } });
    child.send({ jsonrpc: "2.0", id: 2, result: { n: 2 } });
    child.send({ jsonrpc: "2.0", id: 1, result: { n: 1 } });
    await settle();
    expect(reports).toEqual([
      { event: "progress", call: "first", message: { jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p", progress: 1 } } },
      { event: "answered", call: "second", message: { jsonrpc: "2.0", id: 2, result: { n: 2 } } },
      { event: "answered", call: "first", message: { jsonrpc: "2.0", id: 1, result: { n: 1 } } },
    ]);
    expect(channel.inFlight).toBe(0);
  });

  test("an id already in flight fails at once and does not reach the child", () => {
    const { channel, child, reports } = setup();
    channel.call(call(1), "first");
    channel.call(call(1), "again");
    expect(reports).toEqual([{ event: "failed", call: "again", code: -32600, message: "request id 1 is already in flight in this session" }]);
    expect(child.written.length).toBe(1);
  });

  test("a call nobody answers times out: its sender is told, the child gets a cancellation, a late answer is dropped", async () => {
    const { channel, child, timers, reports } = setup();
    channel.call(call(1), "slow");
    expect(channel.earliestRequestDeadline).toBe(timers.now() + 30_000);
    timers.advance(30_000);
    child.send({ jsonrpc: "2.0", id: 1, result: "late" });
    await settle();
    expect(reports).toEqual([{ event: "failed", call: "slow", code: -32001, message: "the MCP server did not answer within 30 s" }]);
    expect(child.messages.at(-1)).toEqual({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: 1, reason: "request timed out" } });
    expect(channel.earliestRequestDeadline).toBeNull();
  });

  test("a call its sender cancels is cancelled at the child and reports nothing more; initialize is never cancelled", async () => {
    const { channel, child, reports } = setup();
    const handle = channel.call(call(1, { _meta: { progressToken: "p" } }), "gone");
    channel.cancel(handle, "client disconnected");
    const init = channel.call(msg({ jsonrpc: "2.0", id: 0, method: "initialize", params: {} }), "init");
    channel.cancel(init, "client disconnected");
    child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p", progress: 1 } });
    child.send({ jsonrpc: "2.0", id: 1, result: "too late" });
    await settle();
    expect(child.messages.map((m) => m.method)).toEqual(["tools/call", "notifications/cancelled", "initialize"]);
    expect(reports).toEqual([]);
    expect(channel.inFlight).toBe(0);
  });

  test("callsSettled resolves at once with no call in flight, else once the last one is over, answered or timed out", async () => {
    const { channel, child, timers } = setup();
    let settled = false;
    await channel.callsSettled();
    channel.call(call(1), "answered");
    channel.call(call(2), "timing out");
    void channel.callsSettled().then(() => (settled = true));
    child.send({ jsonrpc: "2.0", id: 1, result: {} });
    await settle();
    expect(settled).toBe(false);
    timers.advance(30_000);
    await settle();
    expect(settled).toBe(true);
  });

  test("the client's own notifications/cancelled reaches the child as sent and reports the call cancelled", () => {
    const { channel, child, reports } = setup();
    channel.call(call(4), "cancelled");
    const cancel = msg({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: 4, reason: "user" } });
    channel.notify(cancel);
    expect(child.written.at(-1)).toBe(cancel.raw);
    expect(reports).toEqual([{ event: "cancelledByClient", call: "cancelled" }]);
  });
});

describe("the child's own messages", () => {
  test("a request and a notification come with the calls in flight on that child; a forwarded request's answer goes back to it", async () => {
    let asked: ChildRequest | null = null;
    const { channel, child, reports } = setup({ onChildRequest: (request) => (asked = request) });
    channel.call(call(1), "a");
    channel.call(call(2), "b");
    child.send({ jsonrpc: "2.0", id: 0, method: "roots/list" });
    child.send({ jsonrpc: "2.0", method: "notifications/tools/list_changed" });
    await settle();
    expect(reports).toEqual([
      { event: "childRequest", method: "roots/list", callsOfChild: ["a", "b"] },
      { event: "childNotification", message: { jsonrpc: "2.0", method: "notifications/tools/list_changed" }, callsOfChild: ["a", "b"] },
    ]);
    expect(asked!.forward().message).toEqual({ jsonrpc: "2.0", id: 0, method: "roots/list" });
    channel.respond(msg({ jsonrpc: "2.0", id: 0, result: { roots: [] } }));
    expect(child.messages.at(-1)).toEqual({ jsonrpc: "2.0", id: 0, result: { roots: [] } });
  });

  test("a refused request is answered to the child at once, and a later answer from the client is dropped", async () => {
    const { channel, child } = setup({ onChildRequest: (request) => request.refuse(-32003, "nobody to ask") });
    child.send({ jsonrpc: "2.0", id: 7, method: "sampling/createMessage", params: {} });
    await settle();
    expect(child.messages).toEqual([{ jsonrpc: "2.0", id: 7, error: { code: -32003, message: "nobody to ask" } }]);
    channel.respond(msg({ jsonrpc: "2.0", id: 7, result: {} }));
    expect(child.messages.length).toBe(1);
  });
});

describe("rotation and exit", () => {
  const init = msg({ jsonrpc: "2.0", id: 0, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "c", version: "1" } } });

  test("the new child is initialized under a broker id nobody is told about; the old one drains; same-id requests of both are told apart", async () => {
    const forwarded: IncomingMessage[] = [];
    const { channel, child: old, reports } = setup({ child: initializingChild(), onChildRequest: (request) => forwarded.push(request.forward()) });
    channel.call(init, "init");
    await settle();
    channel.notify(msg({ jsonrpc: "2.0", method: "notifications/initialized" }));
    channel.call(call(1), "on old");
    old.send({ jsonrpc: "2.0", id: 0, method: "roots/list" });
    await settle();
    const fresh = initializingChild();
    await channel.replaceChild(fresh, 5000);
    expect(fresh.messages.map((m) => m.method)).toEqual(["initialize", "notifications/initialized"]);
    expect(String(fresh.messages[0]!.id)).toStartWith("fmb-rotate-");
    expect(channel.childPid).toBe(fresh.pid);
    fresh.send({ jsonrpc: "2.0", id: 0, method: "roots/list" });
    await settle();
    expect(forwarded[0]!.message.id).toBe(0);
    expect(forwarded[1]!.message.id).not.toBe(0);
    channel.respond(msg({ jsonrpc: "2.0", id: forwarded[1]!.message.id, result: { from: "client to new" } }));
    expect(fresh.messages.at(-1)).toEqual({ jsonrpc: "2.0", id: 0, result: { from: "client to new" } });
    old.send({ jsonrpc: "2.0", id: 1, result: "from old" });
    await settle();
    expect(reports.flatMap((r) => (r.event === "answered" ? [r.call] : []))).toEqual(["init", "on old"]);
    expect(old.stopCalls).toBe(1);
  });

  test("a new child that fails initialize is stopped, the old one keeps serving", async () => {
    const { channel, child: old } = setup({ child: initializingChild() });
    channel.call(init, "init");
    await settle();
    const broken = new FakeChild({ onMessage: (_m, child) => child.exit({ code: 1 }) });
    await expect(channel.replaceChild(broken, 5000)).rejects.toThrow(RotationError);
    expect(channel.childPid).toBe(old.pid);
    expect(channel.closed).toBeNull();
  });

  test("the current child exiting fails its calls, closes the channel and says why; later calls fail at once", async () => {
    const { channel, child, reports } = setup();
    channel.call(call(1), "waiting");
    child.exit({ code: 2 });
    await settle();
    const why = channel.closed!;
    expect(why).toStartWith("the MCP server exited");
    expect(reports).toEqual([
      { event: "failed", call: "waiting", code: -32000, message: why },
      { event: "childExited", why, exit: { code: 2, signal: null, lastStderrLine: null } },
    ]);
    channel.call(call(2), "late");
    expect(reports.at(-1)).toEqual({ event: "failed", call: "late", code: -32000, message: why });
  });

  test("close fails every call at once, stops the child and is not reported as an exit", async () => {
    const { channel, child, reports } = setup();
    channel.call(call(1), "waiting");
    await channel.close("the session was deleted");
    expect(reports).toEqual([{ event: "failed", call: "waiting", code: -32000, message: "the session was deleted" }]);
    expect(child.stopCalls).toBe(1);
  });
});

describe("many callers on one child (multiplexed)", () => {
  test("two callers with the same id and progress token: the child sees distinct ones, each caller gets its own back", async () => {
    const { channel, child, reports } = setup({ multiplexed: true });
    channel.call(call(1, { _meta: { progressToken: "p" } }), "alice");
    channel.call(call(1, { _meta: { progressToken: "p" } }), "bob");
    const [first, second] = child.messages as { id: string; params: { _meta: { progressToken: string } } }[];
    expect(first!.id).not.toBe(second!.id);
    expect(first!.params._meta.progressToken).not.toBe(second!.params._meta.progressToken);
    child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: second!.params._meta.progressToken, progress: 7 } });
    child.send({ jsonrpc: "2.0", id: second!.id, result: { who: "bob" } });
    child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: first!.params._meta.progressToken, progress: 3 } });
    child.send({ jsonrpc: "2.0", id: first!.id, result: { who: "alice" } });
    await settle();
    expect(reports).toEqual([
      { event: "progress", call: "bob", message: { jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p", progress: 7 } } },
      { event: "answered", call: "bob", message: { jsonrpc: "2.0", id: 1, result: { who: "bob" } } },
      { event: "progress", call: "alice", message: { jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p", progress: 3 } } },
      { event: "answered", call: "alice", message: { jsonrpc: "2.0", id: 1, result: { who: "alice" } } },
    ]);
  });

  test("a caller that goes away: the child is told under the id it knows the call by", () => {
    const { channel, child } = setup({ multiplexed: true });
    const handle = channel.call(call(1), "alice");
    channel.call(call(1), "bob");
    const childId = (child.messages[0] as { id: string }).id;
    channel.cancel(handle, "client disconnected");
    expect(child.messages[2]).toEqual({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: childId, reason: "client disconnected" } });
    expect(channel.inFlight).toBe(1);
  });
});

describe("close", () => {
  test("a sender that closes the channel again while its call is being failed by the close stops the child once", async () => {
    let channel: ChildChannel<string>;
    const child = new FakeChild();
    const reports: string[] = [];
    const sink: ChannelEvents<string> = {
      progress: () => {},
      answered: () => {},
      // What a caller does on hearing its call failed: end what it holds, the channel included.
      failed: (call) => (reports.push(call), void channel.close("closed again from a failed call")),
      cancelledByClient: () => {},
      childRequest: () => {},
      childNotification: () => {},
      childExited: () => {},
    };
    channel = new ChildChannel(child, { logger: createMemoryLogger(), timers: new FakeTimers(), requestTimeoutMs: 30_000, maxMessageBytes: 10_000 }, sink);
    channel.call(call(1), "in flight");
    const first = channel.close("closed");
    expect(reports).toEqual(["in flight"]);
    expect(channel.close("once more")).toBe(first);
    await first;
    expect(child.stopCalls).toBe(1);
    expect(channel.closed).toBe("closed");
  });
});


// A legacy session when one side stops reading: a client that leaves its stream unread, a child that
// leaves its stdin unread. That request or stream ends with an error; the session goes on.
import { describe, expect, test } from "bun:test";
import { STDIN_LIMIT_MESSAGES } from "../../src/bridge/child-link.ts";
import type { IncomingMessage } from "../../src/bridge/jsonrpc.ts";
import { UNREAD_LIMIT_MESSAGES, type MessageStream, type OutboundEvent } from "../../src/bridge/message-stream.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { LegacySession } from "../../src/session/legacy-session.ts";
import { FakeChild, FakeTimers, settle, type Json } from "../bridge/fakes.ts";

const MAX_MESSAGE_BYTES = 2_000;

function setup(options: { replayMaxBytes?: number } = {}) {
  // A child that answers every call at once, so the test can see the session still serves.
  const child = new FakeChild({
    onMessage: (message, self) => {
      if (message.method === "tools/call") self.send({ jsonrpc: "2.0", id: message.id, result: { content: [] } });
    },
  });
  const logger = createMemoryLogger();
  const session = new LegacySession(child, {
    id: "0".repeat(48),
    binding: { grantId: "grant", forgejoUserId: 1, clientId: "client" },
    logger,
    timers: new FakeTimers(),
    requestTimeoutMs: 30_000,
    maxMessageBytes: MAX_MESSAGE_BYTES,
    ...options,
  });
  return { session, child, logger };
}

function msg(message: Json): IncomingMessage {
  return { raw: JSON.stringify(message), message };
}

const call = (id: number, meta: Json = {}) => msg({ jsonrpc: "2.0", id, method: "tools/call", params: { name: "t", arguments: {}, _meta: meta } });

async function all(stream: MessageStream): Promise<OutboundEvent[]> {
  const out: OutboundEvent[] = [];
  for await (const event of stream) out.push(event);
  return out;
}

/** The child sends messages of a quarter of the size limit until more than `bytes` have gone; returns how many. */
function flood(child: FakeChild, message: (pad: string) => Json, bytes: number): number {
  const pad = "x".repeat(MAX_MESSAGE_BYTES / 4);
  let sent = 0;
  for (; sent * (MAX_MESSAGE_BYTES / 4) <= bytes; sent++) child.send(message(pad));
  return sent;
}

describe("a client that stops reading", () => {
  test("its request fails with a JSON-RPC error once the bound is passed, the child is told to cancel, and the session goes on", async () => {
    const { session, child, logger } = setup();
    // Not answered at once: this call only sends progress.
    child.onMessage = null;
    const unread = session.request(call(7, { progressToken: "p" }));
    flood(child, (pad) => ({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p", progress: 1, message: pad } }), UNREAD_LIMIT_MESSAGES * MAX_MESSAGE_BYTES);
    await settle();

    const bound = UNREAD_LIMIT_MESSAGES * MAX_MESSAGE_BYTES;
    const events = await all(unread);
    // What was unread is gone; the client that comes back reads the error.
    expect(events.map((e) => e.data)).toEqual([
      JSON.stringify({ jsonrpc: "2.0", id: 7, error: { code: -32000, message: `the client did not read its event stream: over ${bound} bytes waited unread` } }),
    ]);
    expect(child.messages.at(-1)).toEqual({
      jsonrpc: "2.0",
      method: "notifications/cancelled",
      params: { requestId: 7, reason: `the client did not read its event stream: over ${bound} bytes waited unread` },
    });
    expect(session.inFlight).toBe(0);
    expect(logger.lines.some((line) => line.includes("client stopped reading an event stream"))).toBe(true);

    child.onMessage = (message, self) => self.send({ jsonrpc: "2.0", id: message.id, result: { ok: true } });
    expect((await all(session.request(call(8))))[0]!.message.result).toEqual({ ok: true });
    expect(session.closed).toBeNull();
  });

  test("an answer that arrives over the bound fails the request too, under the request's id", async () => {
    const { session, child } = setup();
    child.onMessage = null;
    const unread = session.request(call(3, { progressToken: "p" }));
    const pad = "x".repeat(MAX_MESSAGE_BYTES - 200);
    for (let i = 0; i < UNREAD_LIMIT_MESSAGES; i++) child.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p", progress: i, message: pad } });
    child.send({ jsonrpc: "2.0", id: 3, result: { content: [{ type: "text", text: pad }] } });
    await settle();
    const events = await all(unread);
    expect(events.map((e) => e.message.id)).toEqual([3]);
    expect((events[0]!.message.error as Json).code).toBe(-32000);
    // The child answered; it is not asked to cancel.
    expect(child.messages.map((m) => m.method)).toEqual(["tools/call"]);
  });

  test("its standalone stream ends; what comes later waits for a new one, and Last-Event-ID resumes", async () => {
    const { session, child } = setup();
    const standalone = session.openStandalone();
    const first = standalone.next();
    child.send({ jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: "read" } });
    const read = (await first)!;
    const sent = flood(child, (pad) => ({ jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: pad } }), UNREAD_LIMIT_MESSAGES * MAX_MESSAGE_BYTES);
    child.send({ jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: "after" } });
    await settle();

    expect(standalone.isOpen).toBe(false);
    expect(await all(standalone)).toEqual([]);
    // The client reconnects where it left off: the flood from the replay buffer, then what came after the stream ended.
    const resumed = session.resume(read.eventId);
    const missed: unknown[] = [];
    for (let i = 0; i <= sent; i++) missed.push((await resumed.next())!.message.params);
    expect(missed).toEqual([...Array.from({ length: sent }, () => ({ level: "info", data: "x".repeat(MAX_MESSAGE_BYTES / 4) })), { level: "info", data: "after" }]);
    expect(resumed.isOpen).toBe(true);
    expect(session.closed).toBeNull();
  });
});

describe("a client with no stream open", () => {
  test("what waits for its standalone stream is bounded in bytes, not only in number: the newest that fit are kept", async () => {
    const bound = 4 * MAX_MESSAGE_BYTES;
    const { session, child } = setup({ replayMaxBytes: bound });
    const sent = flood(child, (pad) => ({ jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: pad } }), 4 * bound);
    await settle();
    const standalone = session.openStandalone();
    // Ending the session ends the stream after what it holds.
    await session.close();
    const kept = await all(standalone);
    expect(kept.reduce((sum, event) => sum + Buffer.byteLength(event.data), 0)).toBeLessThanOrEqual(bound);
    expect(kept.map((event) => Number(event.eventId.split("_")[1]))).toEqual(Array.from({ length: kept.length }, (_, i) => sent - kept.length + 1 + i));
    expect(kept.length).toBeGreaterThan(0);
  });
});

describe("a child that stops reading its stdin", () => {
  test("a request past the bound fails at once with a JSON-RPC error and is not written; once the child reads, requests go through", async () => {
    const { session, child } = setup();
    child.stdinBacklog = STDIN_LIMIT_MESSAGES * MAX_MESSAGE_BYTES;
    const refused = await all(session.request(call(1)));
    expect(refused.map((e) => e.message)).toEqual([
      {
        jsonrpc: "2.0",
        id: 1,
        error: { code: -32000, message: `the MCP server is not reading its input: over ${STDIN_LIMIT_MESSAGES * MAX_MESSAGE_BYTES} bytes wait for it` },
      },
    ]);
    expect(child.written).toEqual([]);
    expect(session.inFlight).toBe(0);

    child.stdinBacklog = 0;
    expect((await all(session.request(call(2))))[0]!.message).toEqual({ jsonrpc: "2.0", id: 2, result: { content: [] } });
    expect(session.closed).toBeNull();
  });

  test("a backlog below the bound still takes a message", async () => {
    const { session, child } = setup();
    child.stdinBacklog = MAX_MESSAGE_BYTES;
    expect((await all(session.request(call(1))))[0]!.message.result).toEqual({ content: [] });
  });
});

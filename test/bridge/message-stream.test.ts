// The bounded queue between the bridge and one HTTP response: what a reader gets, and what happens
// to the events a reader that stopped reading leaves behind.
import { describe, expect, test } from "bun:test";
import { MessageStream, UNREAD_LIMIT_MESSAGES, type OutboundEvent } from "../../src/bridge/message-stream.ts";

const MAX_MESSAGE_BYTES = 1000;

let seq = 0;
function event(bytes: number): OutboundEvent {
  const n = ++seq;
  const data = JSON.stringify({ jsonrpc: "2.0", method: "notifications/message", params: { n, pad: "" } });
  const padded = data.replace('"pad":""', `"pad":"${"x".repeat(Math.max(0, bytes - data.length))}"`);
  return { eventId: `1_${n}`, data: padded, message: JSON.parse(padded), kind: "notification", origin: "child" };
}

function stream() {
  const closes: string[] = [];
  return { stream: new MessageStream(1, (_, reason) => closes.push(reason), MAX_MESSAGE_BYTES), closes };
}

async function drain(source: MessageStream): Promise<OutboundEvent[]> {
  const out: OutboundEvent[] = [];
  for (let next = await source.next(); next !== null; next = await source.next()) out.push(next);
  return out;
}

describe("a message stream", () => {
  test("holds up to its bound unread, in order, for a reader that comes later", async () => {
    const { stream: s } = stream();
    const pushed = Array.from({ length: UNREAD_LIMIT_MESSAGES }, () => event(MAX_MESSAGE_BYTES));
    expect(pushed.map((e) => s.push(e))).toEqual(pushed.map(() => true));
    s.end();
    expect((await drain(s)).map((e) => e.eventId)).toEqual(pushed.map((e) => e.eventId));
  });

  test("a reader that keeps up is never refused, however much passes", async () => {
    const { stream: s } = stream();
    let read = 0;
    for (let i = 0; i < 10 * UNREAD_LIMIT_MESSAGES; i++) {
      const next = s.next();
      expect(s.push(event(MAX_MESSAGE_BYTES))).toBe(true);
      expect(await next).not.toBeNull();
      read++;
    }
    expect(read).toBe(10 * UNREAD_LIMIT_MESSAGES);
  });

  test("past the bound the push is refused and what was unread is dropped", async () => {
    const { stream: s, closes } = stream();
    for (let i = 0; i < UNREAD_LIMIT_MESSAGES; i++) s.push(event(MAX_MESSAGE_BYTES));
    expect(s.push(event(10))).toBe(false);
    // The stream stays open for the bridge's last word: the error now fits.
    const last = event(100);
    expect(s.push(last)).toBe(true);
    s.end();
    expect(await drain(s)).toEqual([last]);
    expect(closes).toEqual([]);
  });

  test("one message larger than the bound still fits when no live one waits, even behind missed ones", async () => {
    const { stream: s } = stream();
    s.pushMissed([event(MAX_MESSAGE_BYTES)]);
    expect(s.push(event(UNREAD_LIMIT_MESSAGES * MAX_MESSAGE_BYTES + 500))).toBe(true);
    expect(s.push(event(10))).toBe(false);
  });

  test("what a reader takes frees room for more", async () => {
    const { stream: s } = stream();
    for (let i = 0; i < UNREAD_LIMIT_MESSAGES; i++) s.push(event(MAX_MESSAGE_BYTES));
    await s.next();
    expect(s.push(event(MAX_MESSAGE_BYTES))).toBe(true);
    expect(s.push(event(MAX_MESSAGE_BYTES))).toBe(false);
  });

  test("what the client missed comes first, all of it, and leaves the whole bound to live events", async () => {
    const { stream: s } = stream();
    const missed = Array.from({ length: 3 * UNREAD_LIMIT_MESSAGES }, () => event(MAX_MESSAGE_BYTES));
    s.pushMissed(missed);
    const live = Array.from({ length: UNREAD_LIMIT_MESSAGES }, () => event(MAX_MESSAGE_BYTES));
    expect(live.map((e) => s.push(e))).toEqual(live.map(() => true));
    s.end();
    expect((await drain(s)).map((e) => e.eventId)).toEqual([...missed, ...live].map((e) => e.eventId));
  });

  test("taking the missed events frees no room that live events did not use", async () => {
    const { stream: s } = stream();
    s.pushMissed([event(MAX_MESSAGE_BYTES), event(MAX_MESSAGE_BYTES)]);
    for (let i = 0; i < UNREAD_LIMIT_MESSAGES; i++) s.push(event(MAX_MESSAGE_BYTES));
    await s.next();
    await s.next();
    expect(s.push(event(10))).toBe(false);
  });

  test("closed by the client: the unread events are dropped and the bridge is told once", async () => {
    const { stream: s, closes } = stream();
    s.push(event(MAX_MESSAGE_BYTES));
    s.close("client disconnected");
    s.close("again");
    expect(await s.next()).toBeNull();
    expect(s.push(event(10))).toBe(true);
    expect(closes).toEqual(["client disconnected"]);
  });
});

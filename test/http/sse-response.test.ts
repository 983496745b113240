// The SSE writer as a client sees its body: events framed with ids, taken from their source only as
// fast as the client reads, and the source told when the client goes.
import { describe, expect, test } from "bun:test";
import type { OutboundEvent } from "../../src/bridge/message-stream.ts";
import { SSE_BUFFER_BYTES, sseResponse, type EventSource } from "../../src/http/sse-response.ts";
import { settle } from "../bridge/fakes.ts";

const EVENT_BYTES = 10_000;

function event(n: number): OutboundEvent {
  const data = JSON.stringify({ jsonrpc: "2.0", method: "notifications/progress", params: { progress: n, pad: "x".repeat(EVENT_BYTES) } });
  return { eventId: `1_${n}`, data, message: JSON.parse(data), kind: "notification", origin: "child" };
}

/** `count` events ready at once, counting how many the writer has taken. */
function countingSource(count: number) {
  let taken = 0;
  const closes: string[] = [];
  const source: EventSource = {
    next: () => Promise.resolve(taken < count ? event(++taken) : null),
    close: (reason) => void closes.push(reason),
  };
  return {
    source,
    closes,
    get taken() {
      return taken;
    },
  };
}

function open(source: EventSource, signal = new AbortController().signal) {
  return sseResponse(source, { heartbeatMs: 60_000, headers: { "Mcp-Session-Id": "s" }, signal });
}

describe("the SSE writer", () => {
  test("takes no more from its source than its buffer holds while the client does not read, then everything once it does", async () => {
    const counting = countingSource(200);
    const response = open(counting.source);
    await settle();
    // The buffer fills, plus the one event that takes it over the mark; the rest stays in the source.
    const bufferedAtMost = Math.ceil(SSE_BUFFER_BYTES / EVENT_BYTES) + 1;
    expect(counting.taken).toBeGreaterThan(0);
    expect(counting.taken).toBeLessThanOrEqual(bufferedAtMost);
    await settle();
    expect(counting.taken).toBeLessThanOrEqual(bufferedAtMost);

    const text = await response.text();
    expect(counting.taken).toBe(200);
    const ids = [...text.matchAll(/^id: (.*)$/gm)].map((match) => match[1]);
    expect(ids).toEqual(Array.from({ length: 200 }, (_, i) => `1_${i + 1}`));
    expect(text).toStartWith(": stream open\n\n");
    expect(counting.closes).toEqual([]);
  });

  test("a client that goes away closes the source, which the writer then stops asking", async () => {
    const counting = countingSource(200);
    const abort = new AbortController();
    const response = open(counting.source, abort.signal);
    const reader = response.body!.getReader();
    await reader.read();
    await reader.cancel();
    expect(counting.closes).toEqual(["client disconnected"]);
    const taken = counting.taken;
    await settle();
    expect(counting.taken).toBe(taken);
  });
});

// Writes a bridge message stream as a text/event-stream response: an opening comment so headers go
// out at once, an id on every event, a comment heartbeat, and the stream closed when the client goes.
import type { OutboundEvent } from "../bridge/message-stream.ts";

/** What an SSE response reads from: a MessageStream, or a fixed list of events. */
export interface EventSource {
  next(): Promise<OutboundEvent | null>;
  /** The client went away: nobody reads the rest. */
  close(reason: string): void;
}

export interface SseOptions {
  heartbeatMs: number;
  headers: Record<string, string>;
  /** Aborted when the client disconnects (Bun's request.signal). */
  signal: AbortSignal;
}

export const SSE_HEADERS = {
  "Content-Type": "text/event-stream",
  "Cache-Control": "no-cache",
  "X-Accel-Buffering": "no",
} as const;

/** One SSE event; a data line per line of text, so a multi-line payload cannot break the framing. */
export function formatEvent(event: OutboundEvent): string {
  const data = event.data
    .split(/\r\n|\r|\n/)
    .map((line) => `data: ${line}`)
    .join("\n");
  return `id: ${event.eventId}\nevent: message\n${data}\n\n`;
}

/** Events already known, then the rest of `source`. */
export function prefixed(first: OutboundEvent[], source: EventSource): EventSource {
  const queue = [...first];
  return {
    next: () => {
      const event = queue.shift();
      return event === undefined ? source.next() : Promise.resolve(event);
    },
    close: (reason) => source.close(reason),
  };
}

/** A source over a fixed list of events (the initialize answer, which arrives whole). */
export function fixedEvents(events: OutboundEvent[]): EventSource {
  return prefixed(events, { next: () => Promise.resolve(null), close: () => {} });
}

export function sseResponse(source: EventSource, options: SseOptions): Response {
  const encoder = new TextEncoder();
  let finished = false;
  let heartbeat: ReturnType<typeof setInterval> | undefined;

  const clientGone = () => {
    if (finished) return;
    finished = true;
    clearInterval(heartbeat);
    source.close("client disconnected");
  };

  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      const write = (text: string) => {
        if (finished) return;
        try {
          controller.enqueue(encoder.encode(text));
        } catch {
          clientGone();
        }
      };
      write(": stream open\n\n");
      heartbeat = setInterval(() => write(": heartbeat\n\n"), options.heartbeatMs);
      options.signal.addEventListener("abort", clientGone, { once: true });
      void (async () => {
        for (let event = await source.next(); event !== null; event = await source.next()) write(formatEvent(event));
        if (finished) return;
        finished = true;
        clearInterval(heartbeat);
        options.signal.removeEventListener("abort", clientGone);
        controller.close();
      })();
    },
    cancel: clientGone,
  });
  return new Response(body, { status: 200, headers: { ...SSE_HEADERS, ...options.headers } });
}

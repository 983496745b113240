// Writes a session's message stream as a text/event-stream response, taking each event only when the
// client has read the last ones: an opening comment, ids, a heartbeat, closed when the client goes.
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

/** Bytes encoded but not yet taken by the socket before the writer stops asking the source for more. */
export const SSE_BUFFER_BYTES = 64 * 1024;

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
  // A modern request's stream has no ids: 2026-07-28 has no resumption.
  const id = event.eventId === "" ? "" : `id: ${event.eventId}\n`;
  return `${id}event: message\n${data}\n\n`;
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
  /** Set in start(), where the controller is known. */
  let write: (text: string) => void = () => {};

  const clientGone = () => {
    if (finished) return;
    finished = true;
    clearInterval(heartbeat);
    source.close("client disconnected");
  };

  // pull runs only while fewer than SSE_BUFFER_BYTES wait for the socket, so what a slow client has
  // not read stays in the source, which is bounded and can tell the session.
  const body = new ReadableStream<Uint8Array>(
    {
      start(controller) {
        write = (text: string) => {
          if (finished) return;
          try {
            controller.enqueue(encoder.encode(text));
          } catch {
            clientGone();
          }
        };
        write(": stream open\n\n");
        // A heartbeat only keeps a quiet stream alive; one that is not being read needs none.
        heartbeat = setInterval(() => {
          if ((controller.desiredSize ?? 0) > 0) write(": heartbeat\n\n");
        }, options.heartbeatMs);
        options.signal.addEventListener("abort", clientGone, { once: true });
      },
      async pull(controller) {
        const event = await source.next();
        if (finished) return;
        if (event !== null) {
          write(formatEvent(event));
          return;
        }
        finished = true;
        clearInterval(heartbeat);
        options.signal.removeEventListener("abort", clientGone);
        controller.close();
      },
      cancel: clientGone,
    },
    new ByteLengthQueuingStrategy({ highWaterMark: SSE_BUFFER_BYTES }),
  );
  return new Response(body, { status: 200, headers: { ...SSE_HEADERS, ...options.headers } });
}

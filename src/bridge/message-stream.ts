// The outbound side of one SSE (or JSON) response: an async queue of events the bridge pushes and
// the HTTP route pulls, which tells the bridge when the client has gone away.
import type { JsonRpcMessage, MessageKind } from "./jsonrpc.ts";

export interface OutboundEvent {
  /** SSE `id:`; see replay.ts for what it encodes. */
  eventId: string;
  /** The message exactly as the child wrote it (one line), or a broker-made error. */
  data: string;
  message: JsonRpcMessage;
  kind: MessageKind;
  /** "broker" when the broker made the message (timeout, exit, duplicate id) rather than the child. */
  origin: "child" | "broker";
}

export class MessageStream implements AsyncIterable<OutboundEvent> {
  private queue: OutboundEvent[] = [];
  private waiter: ((event: OutboundEvent | null) => void) | null = null;
  private ended = false;
  private closed = false;
  private pushed = false;

  constructor(
    readonly streamNo: number,
    private readonly onClose: (stream: MessageStream, reason: string) => void,
  ) {}

  /** True once no more events will come (ended by the bridge, or closed by the client). */
  get finished(): boolean {
    return this.closed || (this.ended && this.queue.length === 0);
  }

  /** The next event, or null when the stream is over. */
  next(): Promise<OutboundEvent | null> {
    const event = this.queue.shift();
    if (event !== undefined) return Promise.resolve(event);
    if (this.ended || this.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  /** The HTTP side is done with this stream: client disconnected, or the route finished. */
  close(reason = "client disconnected"): void {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    this.wake(null);
    this.onClose(this, reason);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<OutboundEvent> {
    try {
      for (let event = await this.next(); event !== null; event = await this.next()) yield event;
    } finally {
      // A consumer that stops iterating early has gone away.
      if (!this.ended) this.close();
    }
  }

  /** Nothing has been pushed yet. */
  get untouched(): boolean {
    return !this.pushed;
  }

  /** Bridge side. */
  push(event: OutboundEvent): void {
    if (this.ended || this.closed) return;
    this.pushed = true;
    if (this.waiter !== null) this.wake(event);
    else this.queue.push(event);
  }

  /** Bridge side: nothing more will be pushed. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.queue.length === 0) this.wake(null);
  }

  get isOpen(): boolean {
    return !this.closed && !this.ended;
  }

  private wake(event: OutboundEvent | null): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.(event);
  }
}

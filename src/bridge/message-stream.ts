// The outbound side of one SSE (or JSON) response: a byte-bounded async queue of events the session
// pushes and the HTTP route pulls, which tells the session when the client has gone away or stopped reading.
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

/** How many messages of the largest size a stream holds unread before it gives up on its client. */
export const UNREAD_LIMIT_MESSAGES = 4;

export class MessageStream implements AsyncIterable<OutboundEvent> {
  private queue: OutboundEvent[] = [];
  /** Bytes of the live events in the queue; the missed ones at its head are not counted. */
  private queuedBytes = 0;
  private missedInQueue = 0;
  private waiter: ((event: OutboundEvent | null) => void) | null = null;
  private ended = false;
  private closed = false;
  private pushed = false;
  /** Unread bytes past which push gives up; a single event always fits when no live one waits. */
  readonly maxUnreadBytes: number;

  constructor(
    readonly streamNo: number,
    private readonly onClose: (stream: MessageStream, reason: string) => void,
    maxMessageBytes: number,
  ) {
    this.maxUnreadBytes = UNREAD_LIMIT_MESSAGES * maxMessageBytes;
  }

  /** True once no more events will come (ended by the session, or closed by the client). */
  get finished(): boolean {
    return this.closed || (this.ended && this.queue.length === 0);
  }

  /** The next event, or null when the stream is over. */
  next(): Promise<OutboundEvent | null> {
    const event = this.queue.shift();
    if (event !== undefined) {
      if (this.missedInQueue > 0) this.missedInQueue--;
      else this.queuedBytes -= Buffer.byteLength(event.data);
      return Promise.resolve(event);
    }
    if (this.ended || this.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  /** The HTTP side is done with this stream: client disconnected, or the route finished. */
  close(reason = "client disconnected"): void {
    if (this.closed) return;
    this.closed = true;
    this.drop();
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

  /**
   * Session side. False when the event would take what the client has not read past maxUnreadBytes:
   * then the unread events (and this one) are dropped, so a client that stops reading holds no more
   * than the bound, and the session ends the stream, with an error if the client can still be told.
   */
  push(event: OutboundEvent): boolean {
    if (this.ended || this.closed) return true;
    this.pushed = true;
    if (this.waiter !== null) {
      this.wake(event);
      return true;
    }
    const bytes = Buffer.byteLength(event.data);
    if (this.queuedBytes > 0 && this.queuedBytes + bytes > this.maxUnreadBytes) {
      this.drop();
      return false;
    }
    this.queue.push(event);
    this.queuedBytes += bytes;
    return true;
  }

  /**
   * Session side, before any push: what the client missed, from the replay buffer or kept while no
   * stream was open. Those buffers bound it already, so it does not count against this stream's bound.
   */
  pushMissed(events: OutboundEvent[]): void {
    if (this.ended || this.closed || events.length === 0) return;
    this.pushed = true;
    this.queue.push(...events);
    this.missedInQueue += events.length;
  }

  /** Session side: nothing more will be pushed. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.queue.length === 0) this.wake(null);
  }

  get isOpen(): boolean {
    return !this.closed && !this.ended;
  }

  private drop(): void {
    this.queue = [];
    this.queuedBytes = 0;
    this.missedInQueue = 0;
  }

  private wake(event: OutboundEvent | null): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.(event);
  }
}

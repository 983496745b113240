// SSE event ids and the bounded per-session replay buffer: an id names its stream and its place,
// so a GET with Last-Event-ID can be given exactly what that one stream missed.

/** Stream 0 is the standalone GET stream; request streams are numbered from 1 in order. */
export const STANDALONE_STREAM = 0;

export interface EventPosition {
  stream: number;
  seq: number;
}

export function formatEventId(position: EventPosition): string {
  return `${position.stream}_${position.seq}`;
}

export function parseEventId(id: string): EventPosition | null {
  const match = /^(\d{1,15})_(\d{1,15})$/.exec(id.trim());
  if (match === null) return null;
  return { stream: Number(match[1]), seq: Number(match[2]) };
}

export interface BufferedEvent extends EventPosition {
  eventId: string;
  data: string;
}

export class ReplayBuffer<E extends BufferedEvent = BufferedEvent> {
  /** Slots before `head` are evicted: emptied at once, compacted away now and then. */
  private events: (E | undefined)[] = [];
  private head = 0;
  private bytes = 0;

  constructor(
    private readonly maxEvents: number,
    private readonly maxBytes: number,
  ) {}

  add(event: E): void {
    const size = Buffer.byteLength(event.data);
    if (size > this.maxBytes) return;
    this.events.push(event);
    this.bytes += size;
    while (this.events.length - this.head > this.maxEvents || this.bytes > this.maxBytes) {
      this.bytes -= Buffer.byteLength(this.events[this.head]!.data);
      // Let go of it now: until the next compaction the slot would still hold the evicted event.
      this.events[this.head] = undefined;
      this.head++;
    }
    // Compact now and then rather than shifting on every eviction.
    if (this.head > 1024 && this.head * 2 > this.events.length) {
      this.events = this.events.slice(this.head);
      this.head = 0;
    }
  }

  /** The events of `after.stream` later than `after`, oldest first. */
  after(after: EventPosition): E[] {
    const out: E[] = [];
    for (let i = this.head; i < this.events.length; i++) {
      const event = this.events[i]!;
      if (event.stream === after.stream && event.seq > after.seq) out.push(event);
    }
    return out;
  }
}

// Newline-delimited framing of a child's stdout: bytes in, complete lines out, with a byte cap
// per line so that one oversized message is dropped and reported instead of exhausting memory.

export interface LineFramerHandlers {
  onLine(line: string): void;
  /** A line went over the cap; its bytes so far are discarded up to the next newline. */
  onOversize(bytes: number): void;
}

const NEWLINE = 0x0a;

export class LineFramer {
  private parts: Uint8Array[] = [];
  private size = 0;
  private discarding = false;
  private readonly decoder = new TextDecoder();

  constructor(
    private readonly maxLineBytes: number,
    private readonly handlers: LineFramerHandlers,
  ) {}

  push(chunk: Uint8Array): void {
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(NEWLINE, start);
      const end = newline === -1 ? chunk.length : newline;
      this.append(chunk.subarray(start, end));
      if (newline === -1) return;
      this.finishLine();
      start = newline + 1;
    }
  }

  /** End of stream: a last line without a newline still counts. */
  end(): void {
    if (this.size > 0 || this.discarding) this.finishLine();
  }

  private append(bytes: Uint8Array): void {
    if (this.discarding || bytes.length === 0) return;
    if (this.size + bytes.length > this.maxLineBytes) {
      this.handlers.onOversize(this.size + bytes.length);
      this.parts = [];
      this.size = 0;
      this.discarding = true;
      return;
    }
    // Copied because the reader may reuse the chunk's buffer.
    this.parts.push(bytes.slice());
    this.size += bytes.length;
  }

  private finishLine(): void {
    if (this.discarding) {
      this.discarding = false;
      return;
    }
    const joined = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.size);
    this.parts = [];
    this.size = 0;
    let line = this.decoder.decode(joined);
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (line.trim() !== "") this.handlers.onLine(line);
  }
}

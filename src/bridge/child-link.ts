// One child's end of the child channel: reads its stdout into parsed messages (skipping what is not
// JSON-RPC, dropping what is too large) and writes single-line messages to its stdin, while it reads them.
import type { Logger } from "../log.ts";
import { maskSecrets } from "../log.ts";
import type { ChildExit, ChildProcess } from "../supervisor/child.ts";
import { LineFramer } from "./framing.ts";
import { parseMessage, toLine, type IncomingMessage, type MessageKind } from "./jsonrpc.ts";

export interface ChildLinkHandlers {
  onMessage(link: ChildLink, incoming: IncomingMessage, kind: MessageKind): void;
  onExit(link: ChildLink, exit: ChildExit): void;
}

/** How many messages of the largest size may wait for a child that does not read its stdin. */
export const STDIN_LIMIT_MESSAGES = 4;

/** "full": the child has left so much of its stdin unread that nothing more is taken. */
export type LinkWrite = "written" | "full" | "closed";

let nextLinkNo = 1;

export class ChildLink {
  /** For logs: which of a session's children (they change on token rotation). */
  readonly linkNo = nextLinkNo++;
  private gone = false;

  constructor(
    readonly child: ChildProcess,
    private readonly logger: Logger,
    private readonly maxMessageBytes: number,
    private readonly handlers: ChildLinkHandlers,
  ) {
    void this.read();
    void child.exited.then((exit) => {
      this.gone = true;
      handlers.onExit(this, exit);
    });
  }

  /** Bytes that may wait for the child to read its stdin; a single message always fits when none waits. */
  get maxStdinBytes(): number {
    return STDIN_LIMIT_MESSAGES * this.maxMessageBytes;
  }

  /** The caller checks the size first. */
  write(raw: string): LinkWrite {
    if (this.gone) return "closed";
    const line = `${toLine(raw)}\n`;
    const backlog = this.child.stdinBacklog;
    if (backlog > 0 && backlog + Buffer.byteLength(line) > this.maxStdinBytes) return "full";
    return this.child.write(line) ? "written" : "closed";
  }

  private async read(): Promise<void> {
    const framer = new LineFramer(this.maxMessageBytes, {
      onLine: (line) => this.line(line),
      onOversize: (bytes) =>
        this.logger.error("child sent a message over the size limit; dropped", {
          bytes_at_least: bytes,
          limit_bytes: this.maxMessageBytes,
          child: this.linkNo,
        }),
    });
    try {
      for await (const chunk of this.child.stdout) framer.push(chunk);
      framer.end();
    } catch (error) {
      this.logger.warn("reading child stdout failed", { error: error instanceof Error ? error.message : String(error) });
    }
  }

  private line(line: string): void {
    const parsed = parseMessage(line);
    if (!parsed.ok) {
      this.logger.warn("child wrote a line that is not a JSON-RPC message; skipped", {
        problem: parsed.problem,
        line: maskSecrets(line.slice(0, 200)),
        child: this.linkNo,
      });
      return;
    }
    this.handlers.onMessage(this, parsed.incoming, parsed.kind);
  }
}

// One child's end of the bridge: reads its stdout into parsed messages (skipping what is not
// JSON-RPC, dropping what is too large) and writes single-line messages to its stdin.
import type { Logger } from "../log.ts";
import { maskSecrets } from "../log.ts";
import type { ChildExit, ChildProcess } from "../supervisor/child.ts";
import { LineFramer } from "./framing.ts";
import { parseMessage, toLine, type IncomingMessage, type MessageKind } from "./jsonrpc.ts";

export interface ChildLinkHandlers {
  onMessage(link: ChildLink, incoming: IncomingMessage, kind: MessageKind): void;
  onExit(link: ChildLink, exit: ChildExit): void;
}

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

  get alive(): boolean {
    return !this.gone;
  }

  /** False when the child can no longer be written to. The caller checks the size first. */
  write(raw: string): boolean {
    if (this.gone) return false;
    return this.child.write(`${toLine(raw)}\n`);
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

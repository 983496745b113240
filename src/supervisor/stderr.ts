// Drains a child's stderr into the broker log line by line, masked and capped, and remembers
// the last line so that a child that dies can be explained to the client without leaking secrets.
import type { Logger } from "../log.ts";

export interface StderrDrainOptions {
  logger: Logger;
  /** Applied to every line before it is logged or kept. */
  mask: (line: string) => string;
  /** Longer lines are cut here (and marked) so one runaway line cannot flood the log; an unfinished line is held up to twice this. */
  maxLineChars: number;
  /** After this many bytes the rest is still read (a full pipe would block the child) but not logged. */
  maxTotalBytes: number;
}

export interface StderrDrain {
  lastLine(): string | null;
  /** Settles when the pipe reaches end of file (every holder of it has exited or closed it). */
  done: Promise<void>;
}

export function drainStderr(stream: ReadableStream<Uint8Array>, options: StderrDrainOptions): StderrDrain {
  const { logger, mask, maxLineChars, maxTotalBytes } = options;
  let last: string | null = null;
  let loggedBytes = 0;
  let capReported = false;
  let partial = "";
  let discardingRestOfLine = false;

  // Masked before it is cut, so a cut never leaves a credential too short for the mask to know it.
  const emit = (raw: string) => {
    let line = mask(raw.endsWith("\r") ? raw.slice(0, -1) : raw);
    if (line.length > maxLineChars) line = `${line.slice(0, maxLineChars)} …[truncated]`;
    if (line.trim() === "") return;
    last = line;
    if (loggedBytes >= maxTotalBytes) {
      if (!capReported) {
        capReported = true;
        logger.warn("child stderr exceeded its log cap; further lines are not logged", { cap_bytes: maxTotalBytes });
      }
      return;
    }
    loggedBytes += Buffer.byteLength(line);
    logger.info("child stderr", { stderr: line });
  };

  const take = (text: string) => {
    let rest = text;
    for (let newline = rest.indexOf("\n"); newline !== -1; newline = rest.indexOf("\n")) {
      const piece = partial + rest.slice(0, newline);
      rest = rest.slice(newline + 1);
      partial = "";
      if (discardingRestOfLine) discardingRestOfLine = false;
      else emit(piece);
    }
    if (discardingRestOfLine) return;
    partial += rest;
    // An unfinished line is given up on only well past the limit: a credential that the read
    // split is then either whole enough to be masked or beyond the cut.
    if (partial.length > 2 * maxLineChars) {
      emit(partial);
      partial = "";
      discardingRestOfLine = true;
    }
  };

  const done = (async () => {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of stream) take(decoder.decode(chunk, { stream: true }));
      take(decoder.decode());
    } catch (error) {
      logger.warn("reading child stderr failed", { error: error instanceof Error ? error.message : String(error) });
    }
    if (partial !== "" && !discardingRestOfLine) emit(partial);
    partial = "";
  })();

  return { lastLine: () => last, done };
}

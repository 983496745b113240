// A spawned process's output read line by line as it comes, so a test awaits the line that says a
// thing happened (a banner, a log line) instead of polling or sleeping; the pipe is drained to its end.

export interface OutputLines {
  /** Every line read so far. */
  readonly lines: string[];
  /** The first line (already read or still to come) that `wanted` accepts, or null once the output has ended without one. */
  waitFor(wanted: (line: string) => boolean): Promise<string | null>;
}

export function outputLines(stream: ReadableStream<Uint8Array>): OutputLines {
  const lines: string[] = [];
  const waiters = new Set<{ wanted: (line: string) => boolean; resolve: (line: string) => void }>();
  const take = (line: string) => {
    lines.push(line);
    for (const waiter of waiters) {
      if (!waiter.wanted(line)) continue;
      waiters.delete(waiter);
      waiter.resolve(line);
    }
  };
  const ended = (async () => {
    const decoder = new TextDecoder();
    let partial = "";
    for await (const chunk of stream) {
      const pieces = (partial + decoder.decode(chunk, { stream: true })).split("\n");
      partial = pieces.pop()!;
      for (const piece of pieces) take(piece);
    }
    partial += decoder.decode();
    if (partial !== "") take(partial);
  })();
  return {
    lines,
    waitFor(wanted) {
      const seen = lines.find(wanted);
      if (seen !== undefined) return Promise.resolve(seen);
      const found = new Promise<string>((resolve) => waiters.add({ wanted, resolve }));
      return Promise.race([found, ended.then(() => lines.find(wanted) ?? null)]);
    },
  };
}

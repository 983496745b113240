// Draining a child's stderr: how the chunks a pipe delivers become log lines — joined, split,
// cut at the line limit however the line arrived, masked, and capped in total.
import { describe, expect, test } from "bun:test";
import { createMemoryLogger } from "../../src/log.ts";
import { drainStderr } from "../../src/supervisor/stderr.ts";

const MARK = " …[truncated]";

function streamOf(chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  });
}

async function drain(chunks: string[], limits: { maxLineChars?: number; maxTotalBytes?: number } = {}) {
  const logger = createMemoryLogger();
  const drained = drainStderr(streamOf(chunks), {
    logger,
    mask: (line) => line.replaceAll("secret", "s***"),
    maxLineChars: limits.maxLineChars ?? 10,
    maxTotalBytes: limits.maxTotalBytes ?? 10_000,
  });
  await drained.done;
  const entries = logger.lines.map((line) => JSON.parse(line) as { level: string; msg: string; stderr?: string });
  return {
    logged: entries.filter((entry) => entry.msg === "child stderr").map((entry) => entry.stderr),
    warnings: entries.filter((entry) => entry.level === "warn").map((entry) => entry.msg),
    last: drained.lastLine(),
  };
}

describe("drainStderr", () => {
  const cases: { name: string; chunks: string[]; logged: string[] }[] = [
    { name: "lines in one read", chunks: ["one\ntwo\n"], logged: ["one", "two"] },
    { name: "a line split over reads", chunks: ["on", "e\ntw", "o\n"], logged: ["one", "two"] },
    { name: "a last line without a newline", chunks: ["one\ntwo"], logged: ["one", "two"] },
    { name: "CRLF endings and blank lines", chunks: ["one\r\n\r\n  \ntwo\r\n"], logged: ["one", "two"] },
    { name: "a long line and its newline in one read", chunks: ["0123456789abcdef\nnext\n"], logged: [`0123456789${MARK}`, "next"] },
    { name: "a long line over several reads, cut once", chunks: ["012345", "6789ab", "cdef", "gh\nnext\n"], logged: [`0123456789${MARK}`, "next"] },
    { name: "a long line assembled from a partial and its end", chunks: ["01234567", "89abcdef\nnext\n"], logged: [`0123456789${MARK}`, "next"] },
    { name: "a long last line without a newline", chunks: ["0123456789abcdef"], logged: [`0123456789${MARK}`] },
    { name: "a line of exactly the limit is not cut", chunks: ["0123456789\n"], logged: ["0123456789"] },
    { name: "an unfinished line is given up on past twice the limit, and its rest skipped", chunks: ["0123456789abcdefghijk", "lmn\nnext\n"], logged: [`0123456789${MARK}`, "next"] },
    { name: "secrets are masked", chunks: ["token secret\n"], logged: ["token s***"] },
    { name: "a secret across the limit is masked before the cut", chunks: ["abcdefsecret\n"], logged: ["abcdefs***"] },
    { name: "a secret split over reads is masked before the cut", chunks: ["abcdefgsec", "ret and more\n"], logged: [`abcdefgs**${MARK}`] },
  ];
  for (const { name, chunks, logged } of cases) {
    test(name, async () => {
      expect((await drain(chunks)).logged).toEqual(logged);
    });
  }

  test("past the total cap lines are read but not logged, the cap is reported once, and the last line is still known", async () => {
    const lines = Array.from({ length: 50 }, (_, i) => `line ${i}\n`);
    const result = await drain([lines.join("")], { maxTotalBytes: 30 });
    expect(result.logged).toEqual(["line 0", "line 1", "line 2", "line 3", "line 4"]);
    expect(result.warnings).toEqual(["child stderr exceeded its log cap; further lines are not logged"]);
    expect(result.last).toBe("line 49");
  });
});

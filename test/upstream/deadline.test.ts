// waitAtMost: the caller's wait ends at the deadline with the caller's error, an earlier outcome
// passes through and cancels the timer, and a late outcome of the work is neither lost nor unhandled.
import { describe, expect, test } from "bun:test";
import { waitAtMost } from "../../src/upstream/deadline.ts";
import { FakeTimers, settle } from "../bridge/fakes.ts";

function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const timedOut = () => new Error("timed out");

/** What the wait ended with, or "pending". */
function outcome<T>(wait: Promise<T>): { current: string } {
  const seen = { current: "pending" };
  wait.then(
    (value) => (seen.current = `value ${String(value)}`),
    (error: Error) => (seen.current = `error ${error.message}`),
  );
  return seen;
}

describe("waitAtMost", () => {
  const cases: { name: string; settleAfterMs: number | null; how: "resolve" | "reject"; expected: string }[] = [
    { name: "an answer before the deadline is the caller's", settleAfterMs: 999, how: "resolve", expected: "value tokens" },
    { name: "a failure before the deadline is the caller's", settleAfterMs: 999, how: "reject", expected: "error refused" },
    { name: "no answer by the deadline: the caller's error", settleAfterMs: null, how: "resolve", expected: "error timed out" },
    { name: "an answer after the deadline does not change what the caller got", settleAfterMs: 1500, how: "resolve", expected: "error timed out" },
    { name: "a failure after the deadline does not change what the caller got", settleAfterMs: 1500, how: "reject", expected: "error timed out" },
  ];
  for (const { name, settleAfterMs, how, expected } of cases) {
    test(name, async () => {
      const timers = new FakeTimers();
      const work = deferred<string>();
      const seen = outcome(waitAtMost(work.promise, 1000, timers, timedOut));
      if (settleAfterMs !== null) {
        timers.advance(settleAfterMs);
        await settle();
        if (how === "resolve") work.resolve("tokens");
        else work.reject(new Error("refused"));
      } else {
        timers.advance(1000);
      }
      await settle();
      expect(seen.current).toBe(expected);
      expect(timers.pending).toBe(0);
    });
  }

  test("the work itself still delivers a late answer to its owner", async () => {
    const timers = new FakeTimers();
    const work = deferred<string>();
    const seen = outcome(waitAtMost(work.promise, 1000, timers, timedOut));
    timers.advance(1000);
    work.resolve("late tokens");
    expect(await work.promise).toBe("late tokens");
    await settle();
    expect(seen.current).toBe("error timed out");
  });
});

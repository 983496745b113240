// Percentiles are exact nearest-rank samples; the recorder summarises what was recorded.

import { describe, expect, test } from "bun:test";
import { LatencyRecorder, percentile } from "../../src/loadtest/stats.ts";

describe("percentile", () => {
  const ten = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  const thousand = Array.from({ length: 1000 }, (_, i) => i + 1);
  test.each([
    ["1..10", ten, 50, 5],
    ["1..10", ten, 99, 10],
    ["1..10", ten, 10, 1],
    ["1..10", ten, 11, 2],
    ["1..10", ten, 0, 1],
    ["1..10", ten, 100, 10],
    ["[42]", [42], 50, 42],
    ["[42]", [42], 99.9, 42],
    ["1..1000", thousand, 50, 500],
    ["1..1000", thousand, 99, 990],
    ["1..1000", thousand, 99.9, 999],
    ["1..1000", thousand, 100, 1000],
  ] as const)("of %s at p%d is %d", (_, sorted, p, expected) => {
    expect(percentile(sorted, p)).toBe(expected);
  });

  test("of no samples is NaN", () => {
    expect(percentile([], 50)).toBeNaN();
  });
});

describe("LatencyRecorder", () => {
  test("summarises unsorted samples and leaves them recordable afterwards", () => {
    const recorder = new LatencyRecorder(4);
    for (const ms of [3, 1, 4, 2]) recorder.record(ms);
    expect(recorder.summary()).toEqual({ count: 4, min: 1, mean: 2.5, p50: 2, p99: 4, p999: 4, max: 4 });
    expect(recorder.count).toBe(4);
  });

  test("an empty recording has no figures", () => {
    expect(new LatencyRecorder(3).summary()).toEqual({
      count: 0,
      min: null,
      mean: null,
      p50: null,
      p99: null,
      p999: null,
      max: null,
    });
  });
});

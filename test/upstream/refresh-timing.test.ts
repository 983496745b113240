// The refresh rule alone: the lead is cut to half the token's lifetime, and no refresh comes sooner
// than the minimum spacing after the token was issued, whatever the expiry says.
import { describe, expect, test } from "bun:test";
import { earliestRefreshAt, refreshDueAt } from "../../src/upstream/refresh-timing.ts";

const S = 1000;
const T0 = 1_700_000_000_000;
const timing = { leadMs: 300 * S, minIntervalMs: 5 * S };

describe("refreshDueAt", () => {
  const cases: { name: string; lifetimeMs: number; leadMs?: number; dueAfterMs: number }[] = [
    { name: "an hour-long token: the full lead", lifetimeMs: 3600 * S, dueAfterMs: 3300 * S },
    { name: "a token living exactly twice the lead: lead and half agree", lifetimeMs: 600 * S, dueAfterMs: 300 * S },
    { name: "a token living less than twice the lead: half its life", lifetimeMs: 400 * S, dueAfterMs: 200 * S },
    { name: "a 20 s token with the default 300 s lead: after about 10 s", lifetimeMs: 20 * S, dueAfterMs: 10 * S },
    { name: "an odd lifetime rounds towards the later refresh", lifetimeMs: 20 * S + 1, dueAfterMs: 10 * S + 1 },
    { name: "a 10 s token: half its life meets the minimum spacing", lifetimeMs: 10 * S, dueAfterMs: 5 * S },
    { name: "a 4 s token: the minimum spacing, after it expired", lifetimeMs: 4 * S, dueAfterMs: 5 * S },
    { name: "a token expired when it came: the minimum spacing", lifetimeMs: 0, dueAfterMs: 5 * S },
    { name: "an expiry before the issuance (a skewed clock): the minimum spacing", lifetimeMs: -60 * S, dueAfterMs: 5 * S },
    { name: "no lead: at expiry", lifetimeMs: 20 * S, leadMs: 0, dueAfterMs: 20 * S },
    { name: "no lead and a short token: still the minimum spacing", lifetimeMs: 2 * S, leadMs: 0, dueAfterMs: 5 * S },
  ];
  test.each(cases)("$name", ({ lifetimeMs, leadMs, dueAfterMs }) => {
    expect(refreshDueAt(T0, T0 + lifetimeMs, { ...timing, leadMs: leadMs ?? timing.leadMs })).toBe(T0 + dueAfterMs);
  });

  test("back-to-back refreshes of 20 s tokens come about 10 s apart, never at once", () => {
    let issuedAt = T0;
    const refreshedAt: number[] = [];
    for (let i = 0; i < 12; i++) {
      issuedAt = refreshDueAt(issuedAt, issuedAt + 20 * S, timing);
      refreshedAt.push(issuedAt - T0);
    }
    expect(refreshedAt).toEqual(Array.from({ length: 12 }, (_, i) => (i + 1) * 10 * S));
  });
});

describe("earliestRefreshAt", () => {
  test("a forced refresh waits the minimum spacing after the last issuance", () => {
    expect(earliestRefreshAt(T0, timing)).toBe(T0 + 5 * S);
    expect(earliestRefreshAt(T0, { ...timing, minIntervalMs: 0 })).toBe(T0);
  });
});

// Streams that end with the access token that opened them, with a hand-moved clock and a token set.
import { describe, expect, test } from "bun:test";
import { StreamTokens } from "../../src/http/stream-tokens.ts";
import { FakeTimers } from "../bridge/fakes.ts";

function setup() {
  const timers = new FakeTimers();
  const live = new Set<string>(["a1", "a2", "b1"]);
  const tokens = new StreamTokens({ timers, isLive: async (hash) => live.has(hash) });
  const ended: [string, string][] = [];
  const watch = (name: string, grantId: string, tokenHash: string, expiresInMs: number) =>
    tokens.watch({ grantId, tokenHash, expiresAt: timers.now() + expiresInMs }, (reason) => ended.push([name, reason]));
  return { timers, live, tokens, ended, watch };
}

describe("StreamTokens", () => {
  test("a stream ends when its token expires, not before, and only once", () => {
    const { timers, ended, watch } = setup();
    watch("s", "a", "a1", 1000);
    timers.advance(999);
    expect(ended).toEqual([]);
    timers.advance(1);
    expect(ended).toEqual([["s", "the access token that opened this stream expired"]]);
    timers.advance(10_000);
    expect(ended).toHaveLength(1);
  });

  test("a revocation ends the streams of the grant whose token is no longer live, not those of its live tokens or of other grants", async () => {
    const { timers, live, tokens, ended, watch } = setup();
    watch("revoked", "a", "a1", 60_000);
    watch("other token", "a", "a2", 60_000);
    watch("other grant", "b", "b1", 60_000);
    live.delete("a1");
    live.delete("b1");
    await tokens.grantRevoked("a");
    expect(ended).toEqual([["revoked", "the access token that opened this stream was revoked"]]);
    // Its expiry timer is gone with it.
    timers.advance(60_000);
    expect(ended.map(([name]) => name)).toEqual(["revoked", "other token", "other grant"]);
  });

  test("a stream that ended on its own is no longer watched", async () => {
    const { timers, live, tokens, ended, watch } = setup();
    const unwatch = watch("s", "a", "a1", 1000);
    unwatch();
    live.clear();
    await tokens.grantRevoked("a");
    timers.advance(1000);
    expect(ended).toEqual([]);
    expect(timers.pending).toBe(0);
  });
});

// The store of calls waiting for their callers' retries: bounded, each abandoned once at its deadline
// unless taken first, and all abandoned when the broker stops.
import { describe, expect, test } from "bun:test";
import { Continuations } from "../../src/modern/continuations.ts";
import { FakeTimers } from "../bridge/fakes.ts";

class Waiting {
  abandoned: string[] = [];
  abandon(reason: string): void {
    this.abandoned.push(reason);
  }
}

function setup(maxEntries = 2) {
  const timers = new FakeTimers();
  return { timers, store: new Continuations<Waiting>({ timers, deadlineMs: 600_000, maxEntries }) };
}

describe("Continuations", () => {
  test("a parked call is found by its id until taken, once", () => {
    const { store, timers } = setup();
    const waiting = new Waiting();
    const parked = store.park(waiting)!;
    expect(parked.deadline).toBe(timers.now() + 600_000);
    expect(store.peek(parked.id)).toBe(waiting);
    expect(store.take(parked.id)).toBe(waiting);
    expect(store.take(parked.id)).toBeNull();
    expect(store.size).toBe(0);
  });

  test("past its deadline it is abandoned once and gone; one taken before is not abandoned", () => {
    const { store, timers } = setup();
    const late = new Waiting();
    const retried = new Waiting();
    const lateId = store.park(late)!.id;
    store.take(store.park(retried)!.id);
    timers.advance(599_999);
    expect(late.abandoned).toEqual([]);
    timers.advance(1);
    expect(late.abandoned).toEqual(["no retry came before the continuation's deadline"]);
    expect(store.peek(lateId)).toBeNull();
    expect(store.size).toBe(0);
    expect(retried.abandoned).toEqual([]);
    expect(timers.pending).toBe(0);
  });

  test("at its bound it parks nothing more until one leaves", () => {
    const { store } = setup(2);
    const first = store.park(new Waiting())!;
    store.park(new Waiting());
    expect(store.park(new Waiting())).toBeNull();
    expect(store.size).toBe(2);
    store.take(first.id);
    expect(store.park(new Waiting())).not.toBeNull();
  });

  test("abandonAll abandons every one and leaves no timer", () => {
    const { store, timers } = setup();
    const calls = [new Waiting(), new Waiting()];
    for (const call of calls) store.park(call);
    store.abandonAll("the broker is shutting down");
    expect(calls.map((call) => call.abandoned)).toEqual([["the broker is shutting down"], ["the broker is shutting down"]]);
    expect(store.size).toBe(0);
    expect(timers.pending).toBe(0);
  });
});

describe("Continuations' MRTR metrics", () => {
  test("each park counts input_required, a park with no room full, a deadline passed expired; a take counts nothing here", () => {
    const timers = new FakeTimers();
    const seen: string[] = [];
    const store = new Continuations<Waiting>({ timers, deadlineMs: 1000, maxEntries: 1, observe: (result) => void seen.push(result) });
    const first = store.park(new Waiting())!;
    expect(store.park(new Waiting())).toBeNull();
    store.take(first.id);
    store.park(new Waiting());
    timers.advance(1000);
    expect(seen).toEqual(["input_required", "full", "input_required", "expired"]);
  });
});

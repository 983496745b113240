// The in-flight caps as a rule: per session and per Forgejo user, a slot given back exactly once,
// and the variables that set them.
import { describe, expect, test } from "bun:test";
import { loadConfig } from "../../src/config.ts";
import { InFlightCounter } from "../../src/http/in-flight.ts";

describe("InFlightCounter", () => {
  test("a session's requests stop at perSession; the user's other sessions go on until perUser", () => {
    const counter = new InFlightCounter({ perSession: 2, perUser: 3 });
    const first = counter.acquire(1, "a");
    expect(first.ok).toBe(true);
    expect(counter.acquire(1, "a").ok).toBe(true);
    expect(counter.acquire(1, "a")).toEqual({ ok: false, scope: "session", limit: 2 });
    expect(counter.acquire(1, "b").ok).toBe(true);
    expect(counter.acquire(1, "c")).toEqual({ ok: false, scope: "user", limit: 3 });
    // A GET stream counts for the user only; another user is not affected.
    expect(counter.acquire(1, null)).toEqual({ ok: false, scope: "user", limit: 3 });
    expect(counter.acquire(2, "z").ok).toBe(true);
    expect(counter.acquire(2, null).ok).toBe(true);
  });

  test("a released slot is free again, and releasing twice frees only one", () => {
    const counter = new InFlightCounter({ perSession: 1, perUser: 2 });
    const held = counter.acquire(1, "a");
    if (!held.ok) throw new Error("expected a slot");
    expect(counter.acquire(1, null).ok).toBe(true);
    held.release();
    held.release();
    expect(counter.acquire(1, "a").ok).toBe(true);
    expect(counter.acquire(1, "b")).toEqual({ ok: false, scope: "user", limit: 2 });
  });
});

describe("BROKER_MAX_IN_FLIGHT and BROKER_MAX_IN_FLIGHT_PER_USER", () => {
  const REQUIRED = { FORGEJO_URL: "https://forgejo.example.com", FORGEJO_CLIENT_ID: "id", FORGEJO_CLIENT_SECRET: "secret" };

  test("default to 32 per session and 64 per user, and are read when set", () => {
    const defaults = loadConfig(REQUIRED);
    expect(defaults.ok && defaults.config.inFlight).toEqual({ perSession: 32, perUser: 64 });
    const set = loadConfig({ ...REQUIRED, BROKER_MAX_IN_FLIGHT: "4", BROKER_MAX_IN_FLIGHT_PER_USER: "6" });
    expect(set.ok && set.config.inFlight).toEqual({ perSession: 4, perUser: 6 });
  });

  test("a value that is not a whole number of at least 1 is one clear problem each", () => {
    const result = loadConfig({ ...REQUIRED, BROKER_MAX_IN_FLIGHT: "0", BROKER_MAX_IN_FLIGHT_PER_USER: "lots" });
    expect(result.ok).toBe(false);
    expect(!result.ok && result.problems).toEqual([
      'BROKER_MAX_IN_FLIGHT: must be a whole number from 1 to 100000, got "0" (example: BROKER_MAX_IN_FLIGHT=32)',
      'BROKER_MAX_IN_FLIGHT_PER_USER: must be a whole number from 1 to 1000000, got "lots" (example: BROKER_MAX_IN_FLIGHT_PER_USER=64)',
    ]);
  });
});

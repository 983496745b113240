// The spawn pacer: callers get their turns in order, one event-loop turn apart, so I/O that is
// ready while a burst of sessions starts is served between the spawns instead of after all of them.
import { describe, expect, test } from "bun:test";
import { SpawnPacer } from "../../src/supervisor/spawn-pacer.ts";
import { manualTurns } from "../bridge/fakes.ts";

const flushMicrotasks = async () => {
  for (let i = 0; i < 10; i++) await Promise.resolve();
};

describe("SpawnPacer", () => {
  test("a burst of callers spawns in arrival order with a loop turn between any two spawns", async () => {
    const pacer = new SpawnPacer();
    const log: string[] = [];
    // Stands for a socket that always has data: it is served once per loop turn.
    let busy = true;
    const serve = () => {
      log.push("io");
      if (busy) setImmediate(serve);
    };
    setImmediate(serve);

    await Promise.all(
      [1, 2, 3, 4].map(async (n) => {
        await pacer.turn();
        log.push(`spawn ${n}`);
      }),
    );
    busy = false;

    expect(log.filter((entry) => entry !== "io")).toEqual(["spawn 1", "spawn 2", "spawn 3", "spawn 4"]);
    for (let i = 1; i < log.length; i++) {
      if (log[i] !== "io") expect(log[i - 1]).toBe("io");
    }
  });

  test("each caller waits for a turn of its own, and the next turn is asked for only after the previous caller ran", async () => {
    const turns = manualTurns();
    const pacer = new SpawnPacer(turns.nextTurn);
    const spawned: string[] = [];
    const a = pacer.turn().then(() => void spawned.push("a"));
    const b = pacer.turn().then(() => void spawned.push("b"));

    await flushMicrotasks();
    expect(spawned).toEqual([]);
    expect(turns.waiting).toBe(1);

    turns.give();
    await a;
    await flushMicrotasks();
    expect(spawned).toEqual(["a"]);
    expect(turns.waiting).toBe(1);

    turns.give();
    await b;
    expect(spawned).toEqual(["a", "b"]);
  });
});

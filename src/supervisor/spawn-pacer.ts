// Child starts, one per event-loop turn. Bun.spawn holds the loop until the new process has exec'd,
// which takes milliseconds once the cores are busy, so a burst of starts run back to back would hold every answer.

/** Resolves on a later turn of the event loop, after pending I/O has had its turn. */
export type NextTurn = () => Promise<void>;

export const nextEventLoopTurn: NextTurn = () => new Promise((resolve) => setImmediate(resolve));

export class SpawnPacer {
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly nextTurn: NextTurn = nextEventLoopTurn) {}

  /**
   * Resolves when the caller may spawn: after every earlier caller's turn and one loop turn later.
   * The caller must spawn synchronously once it resolves; the next turn is only scheduled after that.
   */
  turn(): Promise<void> {
    const mine = this.queue.then(this.nextTurn);
    this.queue = mine;
    return mine;
  }
}

// A task that runs the first time it is asked for and never again: every later call, even one made from
// inside the task while it runs (a handler the task reaches), gets the same promise.

export class Once {
  private done: Promise<void> | null = null;

  run(task: () => Promise<void>): Promise<void> {
    if (this.done === null) {
      // Claimed before the task runs, so a call from inside it finds the claim.
      const { promise, resolve } = Promise.withResolvers<void>();
      this.done = promise;
      resolve(task());
    }
    return this.done;
  }
}

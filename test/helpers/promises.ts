// What the tests share about waiting: the error a promise was meant to reject with (a test fails
// plainly when it resolved instead), and a bounded poll for something that happens in the background.

export async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error("expected a rejection");
}

/** Polls while `stillWaiting` holds, at most `tries` times `everyMs` apart; the test asserts what it waited for afterwards. */
export async function waitWhile(stillWaiting: () => boolean | Promise<boolean>, tries: number, everyMs: number): Promise<void> {
  for (let i = 0; i < tries && (await stillWaiting()); i++) await Bun.sleep(everyMs);
}

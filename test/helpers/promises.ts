// What the tests share about promises: the error a promise was meant to reject with, so a test can
// assert on its class and message, and fails plainly when the promise resolved instead.

export async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error("expected a rejection");
}

// Reads a request body with no declared length up to a bound, and stops reading (cancelling the rest)
// the moment it goes past: a chunked body that never ends costs at most the bound.

/** The whole body, or undefined once it goes past `limit` bytes (the rest is not read). */
export async function readAtMost(body: ReadableStream<Uint8Array>, limit: number): Promise<Uint8Array<ArrayBuffer> | undefined> {
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return Buffer.concat(chunks, size);
    size += value.byteLength;
    if (size > limit) {
      void reader.cancel();
      return undefined;
    }
    chunks.push(value);
  }
}

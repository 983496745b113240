// Reads a text/event-stream reply until the JSON-RPC response with the wanted id arrives;
// comments (heartbeats), empty priming events and other messages on the stream are skipped.

export type JsonRpcMessage = {
  id?: unknown;
  result?: { isError?: unknown; protocolVersion?: unknown; supportedVersions?: unknown };
  error?: { code?: unknown; message?: unknown };
};

// Hoisted so a chunk costs no options object.
const STREAM = { stream: true } as const;

/**
 * Returns the matching response, or null when the stream ends without it. Stops reading at the
 * match and cancels the rest: a server may keep the stream open for later messages.
 * Throws SyntaxError when an event's data is not JSON.
 */
export async function readSseResponse(
  body: ReadableStream<Uint8Array>,
  wantId: number | string,
  decoder: TextDecoder,
): Promise<JsonRpcMessage | null> {
  const reader = body.getReader();
  let buffer = "";
  let data = "";
  let hasData = false;
  // A CR ended the last line: an LF opening the next chunk belongs to it (CRLF split in two).
  let afterCr = false;
  try {
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) return null;
      buffer += decoder.decode(chunk.value, STREAM);
      let start = afterCr && buffer.charCodeAt(0) === 10 ? 1 : 0;
      afterCr = false;
      // Most servers send LF only: once no CR is left in the buffer, stop scanning for one.
      let cr = buffer.indexOf("\r", start);
      for (;;) {
        const lf = buffer.indexOf("\n", start);
        if (cr !== -1 && cr < start) cr = buffer.indexOf("\r", start);
        let end: number;
        let next: number;
        if (cr !== -1 && (lf === -1 || cr < lf)) {
          end = cr;
          if (cr === buffer.length - 1) {
            next = cr + 1;
            afterCr = true;
          } else {
            next = buffer.charCodeAt(cr + 1) === 10 ? cr + 2 : cr + 1;
          }
        } else if (lf !== -1) {
          end = lf;
          next = lf + 1;
        } else {
          break;
        }
        if (end === start) {
          // Blank line: the event is complete.
          if (hasData && data !== "") {
            const message = JSON.parse(data) as JsonRpcMessage;
            if (message.id === wantId && (message.result !== undefined || message.error !== undefined)) {
              return message;
            }
          }
          data = "";
          hasData = false;
        } else if (buffer.startsWith("data", start)) {
          const field = buffer.slice(start, end);
          // "data:x", "data: x" and a bare "data" line are all data fields.
          if (field === "data" || field.charCodeAt(4) === 58) {
            const value = field.length > 5 && field.charCodeAt(5) === 32 ? field.slice(6) : field.slice(5);
            data = hasData ? data + "\n" + value : value;
            hasData = true;
          }
        }
        // Comments (":…"), event:, id: and retry: lines carry nothing this reader needs.
        start = next;
      }
      buffer = start === 0 ? buffer : buffer.slice(start);
    }
  } finally {
    decoder.decode();
    reader.cancel().catch(() => {});
  }
}

// An SSE response read to its end by the test, which never closes it itself: `ended` tells whether
// the server finished it cleanly or the connection broke, so a test can assert who ended a stream.

export interface WatchedStream {
  status: number;
  /** Everything received so far. */
  text(): string;
  /** Resolves once the stream is over: "ended" when the server finished the response, else what broke it. */
  ended: Promise<"ended" | Error>;
  /** Whether `ended` has resolved. */
  readonly isOver: boolean;
}

/** Reads `response`'s body to its end in the background. */
export function watchStream(response: Response): WatchedStream {
  let received = "";
  let over = false;
  const decoder = new TextDecoder();
  const read = async (): Promise<"ended" | Error> => {
    if (response.body === null) return "ended";
    const reader = response.body.getReader();
    try {
      for (;;) {
        const chunk = await reader.read();
        if (chunk.done) return "ended";
        received += decoder.decode(chunk.value, { stream: true });
      }
    } catch (error) {
      return error instanceof Error ? error : new Error(String(error));
    }
  };
  const ended = read().finally(() => (over = true));
  return {
    status: response.status,
    text: () => received,
    ended,
    get isOver() {
      return over;
    },
  };
}

/** Opens a session's standalone GET stream and watches it. */
export async function watchStandaloneStream(url: string, token: string, sessionId: string): Promise<WatchedStream> {
  return watchStream(await fetch(url, { headers: { authorization: `Bearer ${token}`, accept: "text/event-stream", "mcp-session-id": sessionId } }));
}

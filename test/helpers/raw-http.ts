// HTTP/1.1 over a raw socket, for requests fetch will not send: a short or empty Host header, a
// body that is declared but never sent, a chunked body that never ends.
export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

export interface RawConnection {
  write(data: string | Uint8Array): void;
  /** The first response on the connection: complete once its Content-Length is read, or the socket closes. */
  response: Promise<RawResponse>;
  close(): void;
}

export async function openRaw(port: number, hostname = "127.0.0.1"): Promise<RawConnection> {
  const decoder = new TextDecoder();
  let received = "";
  let settle!: (response: RawResponse) => void;
  let fail!: (error: Error) => void;
  const response = new Promise<RawResponse>((resolve, reject) => {
    settle = resolve;
    fail = reject;
  });
  const parsed = (closed: boolean): RawResponse | undefined => {
    const end = received.indexOf("\r\n\r\n");
    if (end === -1) return undefined;
    const [statusLine, ...lines] = received.slice(0, end).split("\r\n");
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const colon = line.indexOf(":");
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const body = received.slice(end + 4);
    const length = headers["content-length"];
    if (!closed && (length === undefined || body.length < Number(length))) return undefined;
    return { status: Number(statusLine!.split(" ")[1]), headers, body: length === undefined ? body : body.slice(0, Number(length)) };
  };
  const socket = await Bun.connect({
    hostname,
    port,
    socket: {
      data(_socket, chunk) {
        received += decoder.decode(chunk);
        const done = parsed(false);
        if (done) settle(done);
      },
      close() {
        const done = parsed(true);
        if (done) settle(done);
        else fail(new Error(`connection closed before a response: ${JSON.stringify(received)}`));
      },
      error(_socket, error) {
        fail(error);
      },
    },
  });
  return { write: (data) => void socket.write(data), response, close: () => socket.end() };
}

/** Sends one complete request and reads its response. */
export async function rawRequest(port: number, request: string): Promise<RawResponse> {
  const connection = await openRaw(port);
  connection.write(request);
  try {
    return await connection.response;
  } finally {
    connection.close();
  }
}

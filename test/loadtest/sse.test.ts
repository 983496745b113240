// The SSE reader finds the wanted response however the stream is chunked and whatever else it carries.

import { describe, expect, test } from "bun:test";
import { readSseResponse } from "../../src/loadtest/sse.ts";

function streamOf(chunks: string[], close = true): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      if (close) controller.close();
    },
  });
}

const read = (chunks: string[], id: number | string = 7, close = true) =>
  readSseResponse(streamOf(chunks, close), id, new TextDecoder());

describe("readSseResponse", () => {
  test("skips comments, priming events, notifications and other ids", async () => {
    const message = await read([
      ": heartbeat\n\n",
      "id: 1\ndata:\n\n",
      'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{}}\n\n',
      'data: {"jsonrpc":"2.0","id":6,"result":{"n":6}}\n\n',
      'id: 2\nevent: message\ndata: {"jsonrpc":"2.0","id":7,"result":{"n":7}}\n\n',
    ]);
    expect(message).toEqual({ jsonrpc: "2.0", id: 7, result: { n: 7 } } as object);
  });

  test("joins an event split anywhere, CRLF included, and multi-line data", async () => {
    const text = 'data: {"jsonrpc":"2.0",\r\ndata: "id":"a",\r\ndata:"error":{"code":-32601,"message":"é"}}\r\n\r\n';
    for (let cut = 1; cut < text.length; cut++) {
      const message = await read([text.slice(0, cut), text.slice(cut)], "a");
      expect(message?.error).toEqual({ code: -32601, message: "é" });
    }
  });

  test("accepts bare CR line endings", async () => {
    const message = await read(['data: {"id":7,"result":{}}\r\r']);
    expect(message?.id).toBe(7);
  });

  test("returns at the response without waiting for the stream to close", async () => {
    const message = await read(['data: {"id":7,"result":{}}\n\n'], 7, false);
    expect(message?.id).toBe(7);
  });

  test("returns null when the stream ends without the response", async () => {
    expect(await read([": only a comment\n\n", 'data: {"id":7,"result":{}}'])).toBeNull();
  });

  test("rejects an event whose data is not JSON", async () => {
    await expect(read(["data: not json\n\n"])).rejects.toBeInstanceOf(SyntaxError);
  });
});

// Line framing of a child's stdout: whatever way the bytes are chunked, whole messages come out,
// and an oversized one is dropped without taking the next one with it.
import { describe, expect, test } from "bun:test";
import { LineFramer } from "../../src/bridge/framing.ts";

function framer(max = 100) {
  const lines: string[] = [];
  const oversize: number[] = [];
  const f = new LineFramer(max, { onLine: (line) => lines.push(line), onOversize: (bytes) => oversize.push(bytes) });
  const push = (text: string) => f.push(new TextEncoder().encode(text));
  return { f, push, lines, oversize };
}

describe("LineFramer", () => {
  test("joins a message split across chunks, including inside a multi-byte character", () => {
    const { f, lines } = framer();
    const bytes = new TextEncoder().encode('{"a":"größe"}\n');
    for (const byte of bytes) f.push(new Uint8Array([byte]));
    expect(lines).toEqual(['{"a":"größe"}']);
  });

  test("splits several messages in one chunk and strips CRLF", () => {
    const { push, lines } = framer();
    push('{"id":1}\r\n{"id":2}\n\n{"id":3}\r\n{"id"');
    push(":4}\n");
    expect(lines).toEqual(['{"id":1}', '{"id":2}', '{"id":3}', '{"id":4}']);
  });

  test("drops a line over the cap, reports it once, and carries on with the next", () => {
    const { push, lines, oversize } = framer(10);
    push('{"x":"01234');
    push("56789abcdef");
    push('"}\n{"ok":1}\n');
    expect(oversize.length).toBe(1);
    expect(lines).toEqual(['{"ok":1}']);
  });

  test("a last line without a newline still counts at end of stream", () => {
    const { f, push, lines } = framer();
    push('{"id":1}');
    f.end();
    expect(lines).toEqual(['{"id":1}']);
  });
});

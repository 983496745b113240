// A keep-alive connection whose streamed answer has ended is closed by the listener's idle timeout
// like any other, seen from a raw socket: the broker lifts that timeout only while an answer lasts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, openSession } from "../helpers/mcp.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

let t: TestBroker;
let token: string;
let session: string;
beforeAll(async () => {
  t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand() }, broker: { idleTimeoutS: 1 } });
  token = (await obtainTokens(t.config.publicUrl)).accessToken;
  session = await openSession(t.mcpUrl, token);
});
afterAll(async () => {
  await t.stop();
});

interface RawExchange {
  /** Everything the server sent. */
  text(): string;
  /** Whether the whole response has arrived (a chunked body's last chunk, or Content-Length bytes). */
  complete(): boolean;
  closedByServer(): boolean;
}

/** One HTTP/1.1 request on a keep-alive socket of its own, which the test never closes. */
async function rawExchange(method: string, headers: Record<string, string>, body = ""): Promise<RawExchange> {
  const url = new URL(t.mcpUrl);
  let received = "";
  let closed = false;
  const head = [`${method} ${url.pathname} HTTP/1.1`, `Host: ${url.host}`, "Connection: keep-alive", `Content-Length: ${Buffer.byteLength(body)}`];
  for (const [name, value] of Object.entries({ authorization: `Bearer ${token}`, "mcp-session-id": session, ...headers })) head.push(`${name}: ${value}`);
  await Bun.connect({
    hostname: url.hostname,
    port: Number(url.port),
    socket: {
      open: (socket) => void socket.write(`${head.join("\r\n")}\r\n\r\n${body}`),
      data: (_socket, data) => void (received += data.toString()),
      close: () => void (closed = true),
    },
  });
  return {
    text: () => received,
    complete: () => {
      const end = received.indexOf("\r\n\r\n");
      if (end < 0) return false;
      const length = /^content-length: (\d+)$/im.exec(received.slice(0, end));
      return length === null ? received.endsWith("\r\n0\r\n\r\n") : Buffer.byteLength(received.slice(end + 4)) >= Number(length[1]);
    },
    closedByServer: () => closed,
  };
}

const json = { "content-type": "application/json" };

describe("the listener's idle timeout after an answer that lifted it", () => {
  test("a request's SSE stream, a JSON answer and a GET stream, each ended: the server closes each idle socket", async () => {
    const streamed = await rawExchange(
      "POST",
      { ...json, accept: "application/json, text/event-stream" },
      JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/call", params: { name: "slow_count", arguments: { n: 2 }, _meta: { progressToken: 1 } } }),
    );
    const answered = await rawExchange("POST", { ...json, accept: "application/json" }, JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }));
    const standalone = await rawExchange("GET", { accept: "text/event-stream" });
    await waitWhile(() => !streamed.complete() || !answered.complete() || !standalone.text().includes(": stream open"), 100, 20);
    expect(streamed.text()).toContain("counted to 2");
    expect(answered.text()).toStartWith("HTTP/1.1 200");
    // The session's end ends its GET stream.
    expect((await fetch(t.mcpUrl, { method: "DELETE", headers: { authorization: `Bearer ${token}`, "mcp-session-id": session } })).status).toBe(204);
    await waitWhile(() => !standalone.complete(), 100, 20);
    expect([streamed.complete(), answered.complete(), standalone.complete()]).toEqual([true, true, true]);

    // Bun checks idle sockets every few seconds: a 1 s timeout closes within about 8.
    await waitWhile(() => !(streamed.closedByServer() && answered.closedByServer() && standalone.closedByServer()), 150, 100);
    expect([streamed.closedByServer(), answered.closedByServer(), standalone.closedByServer()]).toEqual([true, true, true]);
  }, 30_000);
});

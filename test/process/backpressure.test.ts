// The broker in its own process between a child that floods and a client that stops reading: its
// memory stays within its queue bounds, the slow client's request fails, and the session serves on.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UNREAD_LIMIT_MESSAGES } from "../../src/bridge/message-stream.ts";
import { SSE_BUFFER_BYTES } from "../../src/http/sse-response.ts";
import { startFakeForgejo, type FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { startBrokerProcess, type BrokerProcess } from "../helpers/broker-process.ts";
import { openSession, postMcp } from "../helpers/mcp.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

const FLOOD_CHILD = join(import.meta.dir, "..", "fixtures", "flood-child.ts");
/** BROKER_MAX_MESSAGE_BYTES's default, which the queue bounds are counted in. */
const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;
const PROGRESS_BYTES = 64 * 1024;
/** What a reading client is sent to learn what passing a flood costs the broker at all. */
const READ_FLOOD_BYTES = 64 * 1024 * 1024;
/** What the child sends if nobody stops it: far more than any bound, so memory that follows it shows. */
const FLOOD_BYTES = 256 * 1024 * 1024;

let forgejo: FakeForgejo;
let dataDir: string;
const brokers: BrokerProcess[] = [];

beforeAll(async () => {
  forgejo = await startFakeForgejo();
  dataDir = mkdtempSync(join(tmpdir(), "fmb-flood-"));
});

afterAll(async () => {
  await Promise.all(brokers.map((broker) => broker.stop()));
  await forgejo.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

/** A fresh broker whose children flood, a signed-in user and an initialized session on it. */
async function floodBroker() {
  const broker = await startBrokerProcess(forgejo, join(dataDir, String(brokers.length)), {
    BROKER_CHILD_COMMAND: `${process.execPath} ${FLOOD_CHILD}`,
    BROKER_MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES),
  });
  brokers.push(broker);
  const { accessToken } = await obtainTokens(broker.url);
  const session = await openSession(broker.mcpUrl, accessToken);
  const post = (message: unknown) => postMcp(broker.mcpUrl, accessToken, message, { "mcp-session-id": session });
  return { broker, post };
}

const flood = (id: number, totalBytes: number, intervalMs = 0) => ({
  jsonrpc: "2.0",
  id,
  method: "tools/call",
  params: { name: "flood", arguments: { message_bytes: PROGRESS_BYTES, total_bytes: totalBytes, interval_ms: intervalMs }, _meta: { progressToken: `p${id}` } },
});

/** Samples the broker's resident memory every 10 ms; stop() gives the highest seen. */
function watchRss(broker: BrokerProcess) {
  let peak = broker.rssBytes();
  const timer = setInterval(() => (peak = Math.max(peak, broker.rssBytes())), 10);
  return {
    stop: () => {
      clearInterval(timer);
      return Math.max(peak, broker.rssBytes());
    },
  };
}

function lastEventData(body: string): unknown {
  const events = body.split("\n\n").filter((block) => block.includes("\ndata: "));
  return JSON.parse(events.at(-1)!.split("\n").find((line) => line.startsWith("data: "))!.slice("data: ".length));
}

describe("a child that floods a client that does not read", () => {
  test("the broker's memory stays within its bounds, the request fails with an error the client reads later, and the session serves on", async () => {
    // On a broker of its own, paced so the client keeps up: what moving a flood costs, garbage and all.
    const reference = await floodBroker();
    const reading = watchRss(reference.broker);
    const read = await reference.post(flood(1, READ_FLOOD_BYTES, 2));
    expect(lastEventData(await read.text())).toEqual({ jsonrpc: "2.0", id: 1, result: { content: [{ type: "text", text: `sent ${READ_FLOOD_BYTES} bytes` }] } });
    const baseline = reading.stop();
    await reference.broker.stop();

    // As fast as the broker reads the child; the response's headers come with the first progress, its body is not read.
    const { broker, post } = await floodBroker();
    const flooded = watchRss(broker);
    const slow = await post(flood(7, FLOOD_BYTES));
    expect(slow.headers.get("content-type")).toBe("text/event-stream");
    const floodEnd = () => /flood 7: (cancelled after|sent all) (\d+) bytes/.exec(broker.log());
    await waitWhile(() => floodEnd() === null, 2500, 20);
    const peak = flooded.stop();

    // The broker told the child to stop before it had sent everything.
    expect(floodEnd()?.[1]).toBe("cancelled after");
    // Beyond what a read flood costs, the broker held at most the stream's unread events, each as its
    // text and as its parsed message, and the SSE writer's buffer with the one event that went over it.
    const heldAtMost = 2 * UNREAD_LIMIT_MESSAGES * MAX_MESSAGE_BYTES + SSE_BUFFER_BYTES + PROGRESS_BYTES;
    expect(peak).toBeLessThanOrEqual(baseline + heldAtMost);
    expect(broker.log()).toContain('"msg":"client stopped reading an event stream; ended it"');

    // The slow client reads at last: what the sockets held, then the error for its request, and the end.
    const body = await slow.text();
    expect(lastEventData(body)).toEqual({
      jsonrpc: "2.0",
      id: 7,
      error: { code: -32000, message: `the client did not read its event stream: over ${UNREAD_LIMIT_MESSAGES * MAX_MESSAGE_BYTES} bytes waited unread` },
    });

    // The session serves on.
    const echo = await post({ jsonrpc: "2.0", id: 8, method: "tools/call", params: { name: "echo", arguments: { text: "still here" } } });
    expect(await echo.json()).toEqual({ jsonrpc: "2.0", id: 8, result: { content: [{ type: "text", text: "still here" }] } });
  }, 60_000);
});

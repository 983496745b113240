// A principal's 2026-07-28 child on its own, with fake children and a fake clock: the era decided before
// it starts (probe in a sibling, or the operator's word), discover instead of initialize, requests forwarded, its requestState sealed, its listens.
import { describe, expect, test } from "bun:test";
import type { IncomingMessage } from "../../src/bridge/jsonrpc.ts";
import type { ChildEraSetting } from "../../src/config.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { PrincipalChildren } from "../../src/modern/principals.ts";
import { FakeChild, FakeTimers, fakeSessionConfig, readMessages, settle, type Json } from "../bridge/fakes.ts";
import { rejection } from "../helpers/promises.ts";

const ALICE = { grantId: "grant-a", forgejoUserId: 1, clientId: "client" };
const BOB = { grantId: "grant-b", forgejoUserId: 2, clientId: "client" };
const ENVELOPE = { "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": { elicitation: {} } };
const DISCOVERED = { supportedVersions: ["2026-07-28"], capabilities: { tools: {} }, instructions: "hi", resultType: "complete", _meta: { "io.modelcontextprotocol/serverInfo": { name: "native", version: "2" } } };

/** A native 2026-07-28 child: answers server/discover, refuses initialize, and lets the test answer the rest. */
function nativeChild(): FakeChild {
  return new FakeChild({
    onMessage: (message, child) => {
      if (message.method === "server/discover") child.send({ jsonrpc: "2.0", id: message.id, result: DISCOVERED });
      if (message.method === "initialize") child.send({ jsonrpc: "2.0", id: message.id, error: { code: -32601, message: "Method not found" } });
    },
  });
}

function setup(childEra: ChildEraSetting = "modern") {
  const timers = new FakeTimers();
  const children: FakeChild[] = [];
  const config = fakeSessionConfig();
  const spawn = () => {
    const child = nativeChild();
    children.push(child);
    return child;
  };
  const logger = createMemoryLogger();
  const principals = new PrincipalChildren({ config, spawn, childEra, childCommand: "native", upstreamToken: async () => ({ token: "t", expiresAt: null }), logger, timers, reapIntervalMs: 10_000 });
  return { principals, children, timers, logger };
}

const request = (id: number | string, method: string, params: Json = {}): IncomingMessage => {
  const message = { jsonrpc: "2.0", id, method, params: { ...params, _meta: ENVELOPE } };
  return { raw: JSON.stringify(message), message };
};


describe("a 2026-07-28 child of a principal", () => {
  test("auto: a sibling is probed and stopped, then the child is asked server/discover, never initialize; the broker's discover carries its description", async () => {
    const { principals, children } = setup("auto");
    const child = await principals.childFor(ALICE);
    expect(children).toHaveLength(2);
    expect(children[0]!.messages.map((message) => message.method)).toEqual(["server/discover"]);
    expect(children[0]!.stopCalls).toBe(1);
    expect(children[1]!.messages).toEqual([{ jsonrpc: "2.0", id: "fmb-1", method: "server/discover", params: { _meta: expect.objectContaining({ "io.modelcontextprotocol/protocolVersion": "2026-07-28" }) } }]);
    expect(child.discoverResult).toEqual({
      supportedVersions: ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"],
      capabilities: { tools: {} },
      instructions: "hi",
      resultType: "complete",
      ttlMs: 0,
      cacheScope: "private",
      _meta: { "io.modelcontextprotocol/serverInfo": { name: "native", version: "2" } },
    });
    await principals.childFor(BOB);
    expect(children).toHaveLength(3);
  });

  test("a request goes out with its _meta envelope under the broker's id, and its answer back as the child wrote it under the caller's", async () => {
    const { principals, children } = setup();
    const stream = (await principals.childFor(ALICE)).call(request(1, "tools/call", { name: "echo" }));
    const sent = children[0]!.messages.at(-1) as Json & { id: string };
    expect(sent).toEqual({ jsonrpc: "2.0", id: "fmb-2", method: "tools/call", params: { name: "echo", _meta: ENVELOPE } });
    children[0]!.send({ jsonrpc: "2.0", id: sent.id, result: { content: [], resultType: "complete", extra: 1 } });
    expect(await readMessages(stream)).toEqual([{ jsonrpc: "2.0", id: 1, result: { content: [], resultType: "complete", extra: 1 } }]);
  });

  test("its input_required goes out with the child's requestState sealed; the retry gives the child back exactly its own, and another grant's retry is refused", async () => {
    const { principals, children } = setup();
    const stream = (await principals.childFor(ALICE)).call(request(1, "tools/call", { name: "ask" }));
    const sent = children[0]!.messages.at(-1) as { id: string };
    children[0]!.send({ jsonrpc: "2.0", id: sent.id, result: { resultType: "input_required", inputRequests: { k: { method: "elicitation/create", params: {} } }, requestState: "child-state" } });
    const [interim] = (await readMessages(stream)) as [Json & { result: Json & { requestState: string } }];
    const sealed = interim.result.requestState;
    expect(sealed).not.toContain("child-state");
    expect(interim).toEqual({ jsonrpc: "2.0", id: 1, result: { resultType: "input_required", inputRequests: { k: { method: "elicitation/create", params: {} } }, requestState: sealed } });

    const retry = (id: number) => request(id, "tools/call", { name: "ask", inputResponses: { k: { action: "decline" } }, requestState: sealed });
    expect(await rejection(principals.resume(BOB, retry(2)))).toMatchObject({ status: 400, code: -32602 });
    expect(children).toHaveLength(1);
    await principals.resume(ALICE, retry(3));
    expect(children[0]!.messages.at(-1)).toEqual({ jsonrpc: "2.0", id: "fmb-3", method: "tools/call", params: { name: "ask", inputResponses: { k: { action: "decline" } }, requestState: "child-state", _meta: ENVELOPE } });
  });

  test("a request of the child's own is refused, whatever it is", async () => {
    const { principals, children } = setup();
    await principals.childFor(ALICE);
    children[0]!.send({ jsonrpc: "2.0", id: 9, method: "ping" });
    await settle();
    expect(children[0]!.messages.at(-1)).toEqual({ jsonrpc: "2.0", id: 9, error: { code: -32601, message: expect.stringContaining("ping") } });
  });

  test("a listen is forwarded and stays open past the request timeout; its notifications carry the caller's id", async () => {
    const { principals, children, timers } = setup();
    const child = await principals.childFor(ALICE);
    const stream = child.listen(request("l", "subscriptions/listen", { notifications: { toolsListChanged: true } }));
    const sent = children[0]!.messages.at(-1) as { id: string };
    expect(sent).toMatchObject({ id: "fmb-2", method: "subscriptions/listen", params: { notifications: { toolsListChanged: true }, _meta: ENVELOPE } });
    children[0]!.send({ jsonrpc: "2.0", method: "notifications/subscriptions/acknowledged", params: { _meta: { "io.modelcontextprotocol/subscriptionId": sent.id } } });
    timers.advance(300_000 + 1);
    children[0]!.send({ jsonrpc: "2.0", method: "notifications/tools/list_changed", params: { _meta: { "io.modelcontextprotocol/subscriptionId": sent.id } } });
    await settle();
    expect(child.listening).toBe(1);
    await principals.shutdown();
    expect(await readMessages(stream)).toEqual([
      { jsonrpc: "2.0", method: "notifications/subscriptions/acknowledged", params: { _meta: { "io.modelcontextprotocol/subscriptionId": "l" } } },
      { jsonrpc: "2.0", method: "notifications/tools/list_changed", params: { _meta: { "io.modelcontextprotocol/subscriptionId": "l" } } },
      { jsonrpc: "2.0", id: "l", result: { resultType: "complete", _meta: { "io.modelcontextprotocol/subscriptionId": "l" } } },
    ]);
    expect(child.listening).toBe(0);
  });

  test("the user's token rotated: the listen is sent again to the next child and withdrawn from the old; the caller's stream goes on, without a second acknowledgement", async () => {
    const { principals, children } = setup();
    const old = await principals.childFor(ALICE);
    const stream = old.listen(request("l", "subscriptions/listen", { notifications: { toolsListChanged: true } }));
    const first = children[0]!.messages.at(-1) as { id: string };
    children[0]!.send({ jsonrpc: "2.0", method: "notifications/subscriptions/acknowledged", params: { _meta: { "io.modelcontextprotocol/subscriptionId": first.id } } });
    principals.userTokenRotated(ALICE.forgejoUserId);
    await settle();
    const next = await principals.childFor(ALICE);
    expect(next).not.toBe(old);
    expect([old.listening, next.listening]).toEqual([0, 1]);
    expect(children[0]!.messages).toContainEqual({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: first.id, reason: expect.any(String) } });
    expect(children[0]!.stopCalls).toBe(1);
    const again = children[1]!.messages.at(-1) as { id: string };
    expect(again).toMatchObject({ method: "subscriptions/listen", params: { notifications: { toolsListChanged: true } } });
    children[1]!.send({ jsonrpc: "2.0", method: "notifications/subscriptions/acknowledged", params: { _meta: { "io.modelcontextprotocol/subscriptionId": again.id } } });
    children[1]!.send({ jsonrpc: "2.0", method: "notifications/tools/list_changed", params: { _meta: { "io.modelcontextprotocol/subscriptionId": again.id } } });
    await settle();
    const received = [await stream.next(), await stream.next()].map((event) => JSON.parse(event!.data) as Json);
    expect(received).toEqual([
      { jsonrpc: "2.0", method: "notifications/subscriptions/acknowledged", params: { _meta: { "io.modelcontextprotocol/subscriptionId": "l" } } },
      { jsonrpc: "2.0", method: "notifications/tools/list_changed", params: { _meta: { "io.modelcontextprotocol/subscriptionId": "l" } } },
    ]);
    stream.close();
    expect(children[1]!.messages.at(-1)).toEqual({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: again.id, reason: expect.any(String) } });
    expect(next.listening).toBe(0);
  });

  test("a stop waits for its calls in flight, not for a listen (which only its caller ends): callsSettled resolves once the call is answered", async () => {
    const { principals, children } = setup();
    const child = await principals.childFor(ALICE);
    child.listen(request("l", "subscriptions/listen", { notifications: { toolsListChanged: true } }));
    await principals.callsSettled();
    const stream = child.call(request(1, "tools/call", { name: "slow" }));
    const sent = children[0]!.messages.at(-1) as { id: string };
    let settled = false;
    void principals.callsSettled().then(() => (settled = true));
    await settle();
    expect(settled).toBe(false);
    children[0]!.send({ jsonrpc: "2.0", id: sent.id, result: { content: [], resultType: "complete" } });
    expect(await readMessages(stream)).toEqual([{ jsonrpc: "2.0", id: 1, result: { content: [], resultType: "complete" } }]);
    await settle();
    expect(settled).toBe(true);
    expect(child.listening).toBe(1);
  });
});

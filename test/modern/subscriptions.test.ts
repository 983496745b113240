// subscriptions/listen with fake children: the acknowledgement first, the subscription id on each
// notification, the filter, the child's resources/subscribe counted across listeners, the bounds, and how streams end.
import { describe, expect, test } from "bun:test";
import type { IncomingMessage } from "../../src/bridge/jsonrpc.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { PrincipalChildren } from "../../src/modern/principals.ts";
import { honoredFilter, listenFilter, ListenerCount, Listeners, MAX_LISTENERS, MAX_LISTENERS_PER_GRANT } from "../../src/modern/subscriptions.ts";
import { McpRefusal, UserSessionLimitError } from "../../src/session/errors.ts";
import { SessionRegistry } from "../../src/session/registry.ts";
import { rejection } from "../helpers/promises.ts";
import { FakeChild, FakeTimers, fakeSessionConfig, readMessages, settle, type Json } from "../bridge/fakes.ts";

const ALICE = { grantId: "grant-a", forgejoUserId: 1, clientId: "client" };
const CAPABILITIES = { tools: { listChanged: true }, prompts: { listChanged: true }, resources: { listChanged: true, subscribe: true } };
const IDLE_MS = 900_000;

const message = (value: Json): IncomingMessage => ({ raw: JSON.stringify(value), message: value });
const notification = (method: string, params?: Json) => message({ jsonrpc: "2.0", method, ...(params === undefined ? {} : { params }) });
const listenRequest = (id: number | string, notifications: Json) => message({ jsonrpc: "2.0", id, method: "subscriptions/listen", params: { notifications } });
const filter = (flags: Partial<ReturnType<typeof listenFilter>>) => ({ toolsListChanged: false, promptsListChanged: false, resourcesListChanged: false, resourceSubscriptions: [], ...flags });

/** The next `count` messages of a stream. */
async function take(stream: { next(): Promise<{ data: string } | null> }, count: number): Promise<Json[]> {
  const messages: Json[] = [];
  while (messages.length < count) messages.push(JSON.parse((await stream.next())!.data) as Json);
  return messages;
}

function listeners(total = new ListenerCount()) {
  const sent: string[] = [];
  const set = new Listeners({ maxMessageBytes: 100_000, total, resourceSubscription: (method, uri) => sent.push(`${method} ${uri}`), ended: () => {} });
  return { set, sent };
}

describe("the listen filter", () => {
  test.each([
    ["no notifications", {}],
    ["notifications not an object", { notifications: [] }],
    ["a flag not a boolean", { notifications: { toolsListChanged: "yes" } }],
    ["resourceSubscriptions not strings", { notifications: { resourceSubscriptions: [1] } }],
    ["too many resources", { notifications: { resourceSubscriptions: Array.from({ length: 65 }, (_, i) => `file:///${i}`) } }],
  ])("%s: 400 -32602", (_name, params) => {
    let thrown: unknown;
    try {
      listenFilter(params);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(McpRefusal);
    expect(thrown).toMatchObject({ status: 400, code: -32602 });
  });

  test("is cut to what the child can send: list_changed it declares, resources only when it takes subscribe", () => {
    const wanted = filter({ toolsListChanged: true, promptsListChanged: true, resourceSubscriptions: ["file:///a"] });
    expect(honoredFilter(wanted, CAPABILITIES)).toEqual(wanted);
    expect(honoredFilter(wanted, { tools: { listChanged: true }, resources: {} })).toEqual(filter({ toolsListChanged: true }));
    expect(honoredFilter(filter({ resourcesListChanged: true }), {})).toEqual(filter({}));
  });
});

describe("listeners", () => {
  test("the acknowledgement comes first, stating the filter; each notification after it carries the listen's id", async () => {
    const { set } = listeners();
    const stream = set.listen(7, filter({ toolsListChanged: true }));
    set.deliver(notification("notifications/tools/list_changed"));
    set.endAll("the test is over");
    expect((await readMessages(stream)).slice(0, 2)).toEqual([
      { jsonrpc: "2.0", method: "notifications/subscriptions/acknowledged", params: { _meta: { "io.modelcontextprotocol/subscriptionId": 7 }, notifications: { toolsListChanged: true } } },
      { jsonrpc: "2.0", method: "notifications/tools/list_changed", params: { _meta: { "io.modelcontextprotocol/subscriptionId": 7 } } },
    ]);
  });

  test("each listener gets only what its filter asks for, under its own id", async () => {
    const { set } = listeners();
    const tools = set.listen("t", filter({ toolsListChanged: true }));
    const prompts = set.listen("p", filter({ promptsListChanged: true }));
    const resource = set.listen("r", filter({ resourceSubscriptions: ["file:///a"] }));
    for (const method of ["notifications/tools/list_changed", "notifications/prompts/list_changed", "notifications/resources/list_changed"]) set.deliver(notification(method));
    set.deliver(notification("notifications/resources/updated", { uri: "file:///b" }));
    set.deliver(notification("notifications/resources/updated", { uri: "file:///a" }));
    set.endAll("the test is over");
    // Between the acknowledgement and the final result.
    const after = async (stream: typeof tools) => (await readMessages(stream)).slice(1, -1).map((m) => [m.method, (m.params as Json)._meta, (m.params as Json).uri]);
    expect(await after(tools)).toEqual([["notifications/tools/list_changed", { "io.modelcontextprotocol/subscriptionId": "t" }, undefined]]);
    expect(await after(prompts)).toEqual([["notifications/prompts/list_changed", { "io.modelcontextprotocol/subscriptionId": "p" }, undefined]]);
    expect(await after(resource)).toEqual([["notifications/resources/updated", { "io.modelcontextprotocol/subscriptionId": "r" }, "file:///a"]]);
  });

  test("a resource named by several listeners: the child is subscribed once, and unsubscribed when the last of them closes", () => {
    const { set, sent } = listeners();
    const first = set.listen(1, filter({ resourceSubscriptions: ["file:///a", "file:///b"] }));
    const second = set.listen(2, filter({ resourceSubscriptions: ["file:///a"] }));
    expect(sent).toEqual(["resources/subscribe file:///a", "resources/subscribe file:///b"]);
    first.close();
    expect(sent.slice(2)).toEqual(["resources/unsubscribe file:///b"]);
    second.close();
    expect(sent.slice(3)).toEqual(["resources/unsubscribe file:///a"]);
    expect(set.size).toBe(0);
  });

  test("at the bound per grant the next listen is refused with 429; once one closes, one more opens", () => {
    const { set } = listeners();
    const open = Array.from({ length: MAX_LISTENERS_PER_GRANT }, (_, i) => set.listen(i, filter({})));
    expect(() => set.listen("one more", filter({}))).toThrow(expect.objectContaining({ status: 429, code: -32000 }));
    open[0]!.close();
    expect(set.listen("one more", filter({})).isOpen).toBe(true);
  });

  test("at the bound over every grant the next listen is refused with 429, whichever grant asks", () => {
    const total = new ListenerCount();
    const grants = Array.from({ length: Math.ceil(MAX_LISTENERS / MAX_LISTENERS_PER_GRANT) }, () => listeners(total).set);
    const open = grants.flatMap((set) => Array.from({ length: MAX_LISTENERS_PER_GRANT }, (_, i) => set.listen(i, filter({}))));
    expect(total.value).toBe(MAX_LISTENERS);
    const fresh = listeners(total).set;
    expect(() => fresh.listen("one more", filter({}))).toThrow(expect.objectContaining({ status: 429, code: -32000 }));
    open[0]!.close();
    expect(fresh.listen("one more", filter({})).isOpen).toBe(true);
  });

  test("when the child goes, each stream ends with the listen's complete result, and no new listen opens", async () => {
    const { set, sent } = listeners();
    const stream = set.listen(3, filter({ resourceSubscriptions: ["file:///a"] }));
    set.endAll("the user's Forgejo token was refreshed");
    expect((await readMessages(stream)).at(-1)).toEqual({ jsonrpc: "2.0", id: 3, result: { resultType: "complete", _meta: { "io.modelcontextprotocol/subscriptionId": 3 } } });
    expect(set.size).toBe(0);
    // The child is going: it is not asked to unsubscribe.
    expect(sent).toEqual(["resources/subscribe file:///a"]);
    expect(() => set.listen(4, filter({}))).toThrow(expect.objectContaining({ status: 503 }));
  });
});

describe("listeners on a principal's child", () => {
  function setup(maxSessionsPerUser = 3) {
    const timers = new FakeTimers();
    const children: FakeChild[] = [];
    const config = fakeSessionConfig({ maxSessionsPerUser, idleTimeoutMs: IDLE_MS });
    const spawn = () => {
      const child = new FakeChild({
        onMessage: (sent, self) => {
          if (sent.method === "initialize") self.send({ jsonrpc: "2.0", id: sent.id, result: { protocolVersion: "2025-11-25", capabilities: CAPABILITIES, serverInfo: { name: "fake", version: "1" } } });
          if (sent.method === "resources/subscribe" || sent.method === "resources/unsubscribe") self.send({ jsonrpc: "2.0", id: sent.id, result: {} });
        },
      });
      children.push(child);
      return child;
    };
    const upstreamToken = async () => ({ token: "t", expiresAt: null });
    const logger = createMemoryLogger();
    const registry = new SessionRegistry({ config, spawn, upstreamToken, logger, timers, reapIntervalMs: 10_000 });
    const principals: PrincipalChildren = new PrincipalChildren({ config, spawn, childEra: "legacy", childCommand: "fake", upstreamToken, limits: registry.shareLimits(() => principals.capped()), logger, timers, reapIntervalMs: 10_000 });
    return { principals, timers, children };
  }

  test("the child's list_changed reaches the listener tagged; its resources/subscribe goes to the child, and closing the stream unsubscribes", async () => {
    const { principals, children } = setup();
    const stream = (await principals.childFor(ALICE)).listen(listenRequest("s", { toolsListChanged: true, resourceSubscriptions: ["file:///a"] }));
    children[0]!.send({ jsonrpc: "2.0", method: "notifications/tools/list_changed" });
    children[0]!.send({ jsonrpc: "2.0", method: "notifications/resources/updated", params: { uri: "file:///a" } });
    await settle();
    expect((await take(stream, 3)).map((m) => [m.method, (m.params as Json)._meta])).toEqual([
      ["notifications/subscriptions/acknowledged", { "io.modelcontextprotocol/subscriptionId": "s" }],
      ["notifications/tools/list_changed", { "io.modelcontextprotocol/subscriptionId": "s" }],
      ["notifications/resources/updated", { "io.modelcontextprotocol/subscriptionId": "s" }],
    ]);
    expect(children[0]!.messages.filter((m) => String(m.method).startsWith("resources/"))).toMatchObject([{ method: "resources/subscribe", params: { uri: "file:///a" } }]);
    stream.close();
    expect(children[0]!.messages.filter((m) => String(m.method).startsWith("resources/"))).toMatchObject([{ method: "resources/subscribe" }, { method: "resources/unsubscribe", params: { uri: "file:///a" } }]);
  });

  test("a listener keeps its child from the idle reap; once it closes, the child is reaped after the idle timeout", async () => {
    const { principals, timers, children } = setup();
    const stream = (await principals.childFor(ALICE)).listen(listenRequest(1, { toolsListChanged: true }));
    timers.advance(IDLE_MS * 2);
    await settle();
    expect(children[0]!.stopCalls).toBe(0);
    stream.close();
    timers.advance(IDLE_MS - 20_000);
    await settle();
    expect(children[0]!.stopCalls).toBe(0);
    timers.advance(30_000);
    await settle();
    expect(children[0]!.stopCalls).toBe(1);
  });

  test("at the per-user cap, a grant's child with a listener is not ended to make room: the user's other grant gets 429", async () => {
    const { principals, timers, children } = setup(1);
    (await principals.childFor(ALICE)).listen(listenRequest(1, { toolsListChanged: true }));
    timers.advance(1000);
    expect(await rejection(principals.childFor({ ...ALICE, grantId: "grant-b" }))).toBeInstanceOf(UserSessionLimitError);
    expect(children[0]!.stopCalls).toBe(0);
  });

  test("the user's token rotated: the stream stays open and moves to the next child, which is subscribed to its uris; the old one stops", async () => {
    const { principals, children } = setup();
    const old = await principals.childFor(ALICE);
    const stream = old.listen(listenRequest(1, { toolsListChanged: true, resourceSubscriptions: ["file:///a"] }));
    principals.userTokenRotated(ALICE.forgejoUserId);
    await settle();
    const next = await principals.childFor(ALICE);
    expect(next).not.toBe(old);
    expect([old.listening, next.listening]).toEqual([0, 1]);
    expect(children[0]!.stopCalls).toBe(1);
    expect(children[1]!.messages.filter((m) => String(m.method).startsWith("resources/"))).toMatchObject([{ method: "resources/subscribe", params: { uri: "file:///a" } }]);
    children[1]!.send({ jsonrpc: "2.0", method: "notifications/resources/updated", params: { uri: "file:///a" } });
    await settle();
    expect((await take(stream, 2)).map((m) => [m.method, (m.params as Json)._meta])).toEqual([
      ["notifications/subscriptions/acknowledged", { "io.modelcontextprotocol/subscriptionId": 1 }],
      ["notifications/resources/updated", { "io.modelcontextprotocol/subscriptionId": 1 }],
    ]);
    // Closed by its caller now, it unsubscribes on the child it listens on.
    stream.close();
    expect(next.listening).toBe(0);
    expect(children[1]!.messages.filter((m) => String(m.method).startsWith("resources/")).map((m) => m.method)).toEqual(["resources/subscribe", "resources/unsubscribe"]);
  });

  test("the child crashed: the stream ends", async () => {
    const { principals, children } = setup();
    const stream = (await principals.childFor(ALICE)).listen(listenRequest(1, { toolsListChanged: true }));
    children[0]!.exit({ code: 137 });
    expect((await readMessages(stream)).at(-1)).toMatchObject({ id: 1, result: { resultType: "complete" } });
  });
});

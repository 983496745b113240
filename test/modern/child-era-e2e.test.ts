// The child's era end to end, with the stand-in child in its two other modes: a native 2026-07-28 child
// found by the probe and spoken to natively (discover, calls, colliding ids, its own input_required, listen), and a probe-intolerant 2025 child under auto.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { startTestBroker, type TestBroker, identityOf, principalChildOf } from "../helpers/broker.ts";
import { childCommand, connectAs, processesMatching, textOf } from "../helpers/mcp.ts";
import { allMessages, answerMessages, connectModern, modernRequest, postModern } from "../helpers/modern-client.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

const logged = (t: TestBroker, msg: string) => t.logs.map((line) => JSON.parse(line) as Record<string, unknown>).filter((line) => line.msg === msg);
const ELICITATION = { "io.modelcontextprotocol/clientCapabilities": { elicitation: {} } };
const askUser = (id: string, question: string, extra: Record<string, unknown> = {}) => modernRequest(id, "tools/call", { name: "ask_user", arguments: { question }, ...extra }, ELICITATION);

describe("a native 2026-07-28 child under BROKER_CHILD_ERA=auto", () => {
  const marker = `--native-${crypto.randomUUID()}`;
  let t: TestBroker;

  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: `${childCommand(marker)} --modern` } });
  });
  afterAll(async () => {
    await t.stop();
    expect(await processesMatching(marker)).toEqual([]);
  });

  const childOf = (accessToken: string) => principalChildOf(t, accessToken);

  test("is probed once and found modern; the pinned SDK client discovers it through the broker and calls its tools", async () => {
    const alice = await connectModern(t, "alice");
    expect(logged(t, "child era probed")).toEqual([expect.objectContaining({ outcome: "answer", verdict: "modern" })]);
    expect(logged(t, "principal child started")).toEqual([expect.objectContaining({ era: "modern" })]);
    expect(alice.client.getServerVersion()).toEqual({ name: "forgejo-stand-in-2026", version: "1.0.0" });
    const [discovered] = await allMessages(await postModern(t, alice.accessToken, modernRequest("d", "server/discover")));
    expect(discovered).toEqual({
      jsonrpc: "2.0",
      id: "d",
      result: {
        supportedVersions: ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"],
        capabilities: { tools: { listChanged: true } },
        instructions: "a 2026 stand-in",
        resultType: "complete",
        ttlMs: 0,
        cacheScope: "private",
        _meta: { "io.modelcontextprotocol/serverInfo": { name: "forgejo-stand-in-2026", version: "1.0.0" } },
      },
    });
    const tools = await alice.client.listTools();
    expect(tools.tools.map((tool) => tool.name)).toContain("ask_user");
    expect(textOf(await alice.client.callTool({ name: "whoami", arguments: {} }))).toBe("alice");
    const bob = await connectModern(t, "bob");
    expect(textOf(await bob.client.callTool({ name: "list_my_repos", arguments: {} }))).toBe(JSON.stringify(["bob/garden"]));
    // One probe for the command, not one per grant.
    expect(logged(t, "child era probe started")).toHaveLength(1);
    await Promise.all([alice.client.close(), bob.client.close()]);
  });

  test("30 concurrent calls with id 1 and progress token \"p\" on one child: each gets its own progress and result", async () => {
    t.forgejo.setCurrentUser("alice");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const counts = Array.from({ length: 30 }, (_, i) => (i % 5) + 1);
    const slowCount = (n: number) => modernRequest(1, "tools/call", { name: "slow_count", arguments: { n, delay_ms: 5 } }, { progressToken: "p" });
    const answers = await Promise.all(counts.map((n) => postModern(t, accessToken, slowCount(n)).then(allMessages)));
    for (const [i, messages] of answers.entries()) {
      const n = counts[i]!;
      expect(messages.slice(0, -1)).toEqual(Array.from({ length: n }, (_, step) => ({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p", progress: step + 1, total: n } })));
      expect(messages.at(-1)).toEqual({ jsonrpc: "2.0", id: 1, result: { content: [{ type: "text", text: `counted to ${n}` }], resultType: "complete" } });
    }
    expect((await childOf(accessToken)).inFlight).toBe(0);
  });

  test("the child's own input_required passes through, its requestState sealed to the grant; the retry reaches the child with the child's own state", async () => {
    t.forgejo.setCurrentUser("alice");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const [interim] = await allMessages(await postModern(t, accessToken, askUser("a1", "favourite colour?")));
    // Read before toMatchObject, which in this Bun leaves its matchers in the object it matched.
    const requestState = (interim!.result as { requestState: string }).requestState;
    expect(interim).toMatchObject({
      id: "a1",
      result: { resultType: "input_required", inputRequests: { answer: { method: "elicitation/create", params: { message: "favourite colour?" } } }, requestState: expect.stringMatching(/^m1\./) },
    });
    const retry = askUser("a2", "favourite colour?", { inputResponses: { answer: { action: "accept", content: { answer: "teal" } } }, requestState });
    const [final] = await allMessages(await postModern(t, accessToken, retry));
    expect(final).toEqual({ jsonrpc: "2.0", id: "a2", result: { content: [{ type: "text", text: JSON.stringify({ action: "accept", content: { answer: "teal" } }) }], resultType: "complete" } });
  });

  test("the SDK client declaring elicitation: its handler gets the native child's question, and the tool its answer", async () => {
    t.forgejo.setCurrentUser("alice");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const client = new Client({ name: "native-mrtr", version: "1.0.0" }, { capabilities: { elicitation: {} }, versionNegotiation: { mode: { pin: "2026-07-28" } } });
    await client.connect(new StreamableHTTPClientTransport(new URL(t.mcpUrl), { authProvider: { token: async () => accessToken } }));
    const asked: unknown[] = [];
    client.setRequestHandler("elicitation/create", async (request) => {
      asked.push(request.params);
      return { action: "accept", content: { answer: "Ada" } };
    });
    const result = await client.callTool({ name: "ask_user", arguments: { question: "What is your name?" } });
    expect(JSON.parse(textOf(result))).toEqual({ action: "accept", content: { answer: "Ada" } });
    expect(asked).toEqual([expect.objectContaining({ message: "What is your name?" })]);
    await client.close();
  });

  test.each([
    ["another grant's", "bob", (state: string) => state, "favourite colour?"],
    // The MAC's first character changed to another: ending it in a fixed "AA" left it as it was once in 1024 runs.
    ["a tampered", "alice", (state: string) => state.replace(/\.(.)([^.]*)$/, (_, first: string, rest: string) => `.${first === "A" ? "B" : "A"}${rest}`), "favourite colour?"],
    ["a retry with other params and the", "alice", (state: string) => state, "another question?"],
  ])("%s requestState is refused with 400 -32602", async (_, retrier, change, question) => {
    t.forgejo.setCurrentUser("alice");
    const alice = await obtainTokens(t.config.publicUrl);
    const [interim] = await allMessages(await postModern(t, alice.accessToken, askUser("a1", "favourite colour?")));
    const requestState = change((interim!.result as { requestState: string }).requestState);
    t.forgejo.setCurrentUser(retrier);
    const { accessToken } = retrier === "alice" ? alice : await obtainTokens(t.config.publicUrl);
    const response = await postModern(t, accessToken, askUser("a2", question, { inputResponses: { answer: { action: "accept", content: { answer: "x" } } }, requestState }));
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ id: "a2", error: { code: -32602 } });
  });

  test("subscriptions/listen is forwarded: acknowledged and list_changed under the caller's id; closing it cancels the listen on the child", async () => {
    t.forgejo.setCurrentUser("alice");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const listening = new AbortController();
    const response = await fetch(t.mcpUrl, {
      method: "POST",
      signal: listening.signal,
      headers: { authorization: `Bearer ${accessToken}`, "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-protocol-version": "2026-07-28", "mcp-method": "subscriptions/listen" },
      body: JSON.stringify(modernRequest(7, "subscriptions/listen", { notifications: { toolsListChanged: true } })),
    });
    const messages = answerMessages(response);
    expect((await messages.next()).value).toEqual({ jsonrpc: "2.0", method: "notifications/subscriptions/acknowledged", params: { _meta: { "io.modelcontextprotocol/subscriptionId": 7 }, notifications: { toolsListChanged: true } } });
    const child = await childOf(accessToken);
    expect(child.listening).toBe(1);
    await allMessages(await postModern(t, accessToken, modernRequest(1, "tools/call", { name: "add_tool", arguments: {} })));
    expect((await messages.next()).value).toEqual({ jsonrpc: "2.0", method: "notifications/tools/list_changed", params: { _meta: { "io.modelcontextprotocol/subscriptionId": 7 } } });
    listening.abort();
    await waitWhile(() => child.listening > 0 || child.inFlight > 0, 250, 20);
    expect([child.listening, child.inFlight]).toEqual([0, 0]);
  });
});

describe("BROKER_CHILD_ERA=auto with a 2025 child that exits on any request before initialize", () => {
  const marker = `--intolerant-${crypto.randomUUID()}`;
  let t: TestBroker;

  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: `${childCommand(marker)} --probe-intolerant` } });
  });
  afterAll(async () => {
    await t.stop();
    expect(await processesMatching(marker)).toEqual([]);
  });

  test("a legacy session is not probed; the first modern requests of two grants at once succeed after one probe; later ones start none", async () => {
    const legacy = await connectAs(t, "alice");
    expect(textOf(await legacy.client.callTool({ name: "whoami", arguments: {} }))).toBe("alice");
    expect(logged(t, "child era probe started")).toHaveLength(0);

    t.forgejo.setCurrentUser("alice");
    const alice = await obtainTokens(t.config.publicUrl);
    t.forgejo.setCurrentUser("bob");
    const bob = await obtainTokens(t.config.publicUrl);
    const whoami = (id: number) => modernRequest(id, "tools/call", { name: "whoami", arguments: {} });
    const first = await Promise.all([alice, bob, alice, bob].map(({ accessToken }, i) => postModern(t, accessToken, whoami(i)).then(allMessages)));
    expect(first.map((messages) => textOf(messages.at(-1)!.result))).toEqual(["alice", "bob", "alice", "bob"]);
    expect(logged(t, "child era probe started")).toHaveLength(1);
    expect(logged(t, "child era probed")).toEqual([expect.objectContaining({ outcome: "exit", verdict: "legacy" })]);
    expect(logged(t, "principal child started").map((line) => line.era)).toEqual(["legacy", "legacy"]);

    // A third grant, signed in later: its child starts with the cached verdict (and bob's sign-in replaces his first grant's child, unprobed too).
    const later = await connectModern(t, "bob");
    expect(textOf(await later.client.callTool({ name: "whoami", arguments: {} }))).toBe("bob");
    const clientId = (await identityOf(t, later.accessToken)).clientId;
    expect(logged(t, "principal child started").filter((line) => line.client_id === clientId).map((line) => line.era)).toEqual(["legacy"]);
    expect(logged(t, "child era probe started")).toHaveLength(1);
    await Promise.all([legacy.client.close(), later.client.close()]);
    // A probe and three sandboxed children starting at once: past bun's 5 s default on a loaded 2-core machine.
  }, 30_000);
});

// MCP 2026-07-28 end to end: the official SDK 2.x client pinned to 2026-07-28 through the broker with
// the stand-in child — discovery, two users at once, one child per grant shared by 50 colliding callers, and the faults.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker, identityOf, principalChildOf } from "../helpers/broker.ts";
import { childCommand, isAlive, processesMatching, textOf } from "../helpers/mcp.ts";
import { allMessages, answerMessages, connectModern, modernClientWith, modernRequest, postModern } from "../helpers/modern-client.ts";
import { obtainTokens, postForm } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";


describe("the SDK client pinned to 2026-07-28 through the broker", () => {
  const marker = `--modern-${crypto.randomUUID()}`;
  let t: TestBroker;

  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: `${childCommand(marker)} --list-changes` } });
  });
  afterAll(async () => {
    await t.stop();
    expect(await processesMatching(marker)).toEqual([]);
  });

  const childOf = (accessToken: string) => principalChildOf(t, accessToken);
  const slowCount = (id: number | string, n: number, delayMs: number, token: string | number = "p") =>
    modernRequest(id, "tools/call", { name: "slow_count", arguments: { n, delay_ms: delayMs } }, { progressToken: token });

  test("server/discover: the broker's versions, the child's capabilities, serverInfo in _meta, no instructions from a child without them; the pinned client connects on it", async () => {
    const { client, accessToken } = await connectModern(t, "alice");
    expect(client.getServerVersion()).toMatchObject({ name: "forgejo-stand-in" });
    expect(client.getInstructions()).toBeUndefined();
    expect(client.getServerCapabilities()).toMatchObject({ tools: {} });
    const [discovered] = await allMessages(await postModern(t, accessToken, modernRequest("d", "server/discover")));
    expect(discovered).toEqual({
      jsonrpc: "2.0",
      id: "d",
      result: {
        supportedVersions: ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"],
        capabilities: { tools: { listChanged: true } },
        resultType: "complete",
        ttlMs: 0,
        cacheScope: "private",
        _meta: { "io.modelcontextprotocol/serverInfo": { name: "forgejo-stand-in", version: "1.0.0" } },
      },
    });
    await client.close();
  });

  test("two users at once: tools listed and called, each on their own child with their own Forgejo data", async () => {
    // Signed in one after the other (the Forgejo stand-in has one current user), then used at once.
    const alice = await connectModern(t, "alice");
    const bob = await connectModern(t, "bob");
    const [aliceTools, bobWho, aliceWho, bobRepos, aliceRepos] = await Promise.all([
      alice.client.listTools(),
      bob.client.callTool({ name: "whoami", arguments: {} }),
      alice.client.callTool({ name: "whoami", arguments: {} }),
      bob.client.callTool({ name: "list_my_repos", arguments: {} }),
      alice.client.callTool({ name: "list_my_repos", arguments: {} }),
    ]);
    expect(aliceTools.tools.map((tool) => tool.name).sort()).toEqual(["add_tool", "ask_model", "ask_two", "ask_user", "echo", "list_my_repos", "slow_count", "whoami"]);
    expect([textOf(aliceWho), textOf(bobWho)]).toEqual(["alice", "bob"]);
    expect([JSON.parse(textOf(aliceRepos)), JSON.parse(textOf(bobRepos))]).toEqual([["alice/notes"], ["bob/garden"]]);
    expect((await childOf(alice.accessToken)).childPid).not.toBe((await childOf(bob.accessToken)).childPid);
    await Promise.all([alice.client.close(), bob.client.close()]);
  });

  test("ten concurrent first requests of a grant start one child", async () => {
    t.forgejo.setCurrentUser("bob");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const from = t.logs.length;
    const answers = await Promise.all(
      Array.from({ length: 10 }, (_, i) => postModern(t, accessToken, modernRequest(i, "tools/call", { name: "whoami", arguments: {} })).then(allMessages)),
    );
    expect(answers.map((messages) => (messages.at(-1)!.result as { content: { text: string }[] }).content[0]!.text)).toEqual(Array(10).fill("bob"));
    // Counted by the broker's own start lines for this grant's client, not the process table, where other
    // tests' children come and go (bob's sign-in here replaces his other grants' children meanwhile).
    const clientId = (await identityOf(t, accessToken)).clientId;
    const started = t.logs.slice(from).filter((line) => JSON.parse(line).msg === "principal child started" && JSON.parse(line).client_id === clientId);
    expect(started).toHaveLength(1);
    expect(JSON.parse(started[0]!).pid).toBe((await childOf(accessToken)).childPid);
  });

  test("50 concurrent calls on one principal, all with id 1 and progress token \"p\": each gets its own progress and result", async () => {
    t.forgejo.setCurrentUser("alice");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const counts = Array.from({ length: 50 }, (_, i) => (i % 7) + 1);
    const answers = await Promise.all(counts.map((n) => postModern(t, accessToken, slowCount(1, n, 5)).then(allMessages)));
    for (const [i, messages] of answers.entries()) {
      const n = counts[i]!;
      expect(messages.slice(0, -1)).toEqual(
        Array.from({ length: n }, (_, step) => ({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "p", progress: step + 1, total: n } })),
      );
      expect(messages.at(-1)).toEqual({ jsonrpc: "2.0", id: 1, result: { content: [{ type: "text", text: `counted to ${n}` }], resultType: "complete" } });
    }
    expect((await childOf(accessToken)).inFlight).toBe(0);
  });

  /** Starts a long slow_count and resolves once its first progress arrived, with the rest of its messages to read. */
  async function longCall(accessToken: string, signal?: AbortSignal) {
    const body = slowCount(1, 1000, 20);
    const response = await fetch(t.mcpUrl, {
      method: "POST",
      signal,
      headers: {
        authorization: `Bearer ${accessToken}`,
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "slow_count",
      },
      body: JSON.stringify(body),
    });
    const messages = answerMessages(response);
    const first = await messages.next();
    expect(first.value).toMatchObject({ method: "notifications/progress", params: { progress: 1 } });
    return {
      /** The last message of the answer. */
      last: async () => {
        let last: Record<string, unknown> | undefined;
        for await (const message of messages) last = message;
        return last;
      },
    };
  }

  test("a caller that closes its stream cancels its call on the child; another on the same child goes on", async () => {
    t.forgejo.setCurrentUser("alice");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const leaving = new AbortController();
    await longCall(accessToken, leaving.signal);
    const stays = postModern(t, accessToken, slowCount(1, 5, 20)).then(allMessages);
    const child = await childOf(accessToken);
    await waitWhile(async () => child.inFlight < 2, 500, 10);
    expect(child.inFlight).toBe(2);
    leaving.abort();
    expect((await stays).at(-1)!.result).toMatchObject({ content: [{ text: "counted to 5" }] });
    await waitWhile(async () => child.inFlight > 0, 250, 20);
    expect(child.inFlight).toBe(0);
    expect(await childOf(accessToken)).toBe(child);
  });

  test("the child killed mid-call: the call gets an error at once, the next request a new child", async () => {
    t.forgejo.setCurrentUser("bob");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const call = await longCall(accessToken);
    const pid = (await childOf(accessToken)).childPid;
    process.kill(pid, "SIGKILL");
    expect(await call.last()).toMatchObject({ id: 1, error: { code: -32000, message: expect.stringContaining("the MCP server exited") } });
    const [after] = await allMessages(await postModern(t, accessToken, modernRequest(2, "tools/call", { name: "whoami", arguments: {} })));
    expect(after!.result).toMatchObject({ content: [{ text: "bob" }] });
    expect((await childOf(accessToken)).childPid).not.toBe(pid);
  });

  test("the grant revoked mid-call: the call's stream ends without a result, the child is stopped, the token is refused", async () => {
    t.forgejo.setCurrentUser("alice");
    const signedIn = await obtainTokens(t.config.publicUrl);
    const call = await longCall(signedIn.accessToken);
    const pid = (await childOf(signedIn.accessToken)).childPid;
    const revoked = await postForm(`${t.config.publicUrl}/oauth/revoke`, { token: signedIn.refreshToken, client_id: signedIn.clientId });
    expect(revoked.status).toBe(200);
    const last = await call.last();
    expect(last?.result).toBeUndefined();
    await waitWhile(async () => isAlive(pid), 250, 20);
    expect(isAlive(pid)).toBe(false);
    expect((await postModern(t, signedIn.accessToken, modernRequest(2, "tools/list"))).status).toBe(401);
  });

  test("the user's Forgejo token replaced mid-call (a new sign-in): the next child starts with the new token and takes the next call; the call finishes on the old child", async () => {
    t.forgejo.setCurrentUser("bob");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const running = postModern(t, accessToken, slowCount(1, 150, 20)).then(allMessages);
    await waitWhile(async () => t.broker.principals.childOf((await identityOf(t, accessToken)).grantId)?.inFlight !== 1, 500, 10);
    const old = await childOf(accessToken);
    // bob signs in again from another client: Forgejo issues a new pair, which retires the old refresh token.
    await obtainTokens(t.config.publicUrl);
    const replaced = () => t.logs.some((line) => line.includes('"msg":"principal child replaced"') && line.includes(`"old_pid":${old.childPid}`));
    await waitWhile(() => !replaced(), 500, 10);
    expect(replaced()).toBe(true);
    expect(old.inFlight).toBe(1);
    const [after] = await allMessages(await postModern(t, accessToken, modernRequest(2, "tools/call", { name: "whoami", arguments: {} })));
    expect(after!.result).toMatchObject({ content: [{ text: "bob" }] });
    expect((await childOf(accessToken)).childPid).not.toBe(old.childPid);
    expect((await running).at(-1)!.result).toMatchObject({ content: [{ text: "counted to 150" }] });
    await waitWhile(async () => isAlive(old.childPid), 250, 20);
    expect(isAlive(old.childPid)).toBe(false);
    // A second sign-in and a second sandboxed child: more than bun's 5 s default on a loaded 2-core machine.
  }, 30_000);

  test("subscriptions/listen: acknowledged first (what the child can send), then the child's tools/list_changed tagged with the listen's id; closing the stream ends the listener", async () => {
    t.forgejo.setCurrentUser("alice");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const listen = await postModern(t, accessToken, modernRequest("sub-1", "subscriptions/listen", { notifications: { toolsListChanged: true, promptsListChanged: true } }));
    expect(listen.headers.get("content-type")).toStartWith("text/event-stream");
    const messages = answerMessages(listen);
    // The stand-in has no prompts: the acknowledgement leaves them out.
    expect((await messages.next()).value).toEqual({
      jsonrpc: "2.0",
      method: "notifications/subscriptions/acknowledged",
      params: { _meta: { "io.modelcontextprotocol/subscriptionId": "sub-1" }, notifications: { toolsListChanged: true } },
    });
    const [added] = await allMessages(await postModern(t, accessToken, modernRequest(2, "tools/call", { name: "add_tool", arguments: {} })));
    expect(added!.result).toMatchObject({ content: [{ text: "added added_1" }] });
    expect((await messages.next()).value).toMatchObject({ method: "notifications/tools/list_changed", params: { _meta: { "io.modelcontextprotocol/subscriptionId": "sub-1" } } });
    const child = await childOf(accessToken);
    expect(child.listening).toBe(1);
    await messages.return(undefined);
    await waitWhile(async () => child.listening > 0, 250, 20);
    expect(child.listening).toBe(0);
  });

  test("one user with the SDK client in legacy mode, in auto mode and pinned to 2026-07-28 at the same time", async () => {
    t.forgejo.setCurrentUser("alice");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const sessionsBefore = t.broker.registry.size;
    const [legacy, auto, pinned] = await Promise.all([
      modernClientWith(t, accessToken, "legacy"),
      modernClientWith(t, accessToken, "auto"),
      modernClientWith(t, accessToken),
    ]);
    expect([legacy.getProtocolEra(), auto.getProtocolEra(), pinned.getProtocolEra()]).toEqual(["legacy", "modern", "modern"]);
    const answers = await Promise.all(
      [legacy, auto, pinned].flatMap((client) => [
        client.callTool({ name: "whoami", arguments: {} }),
        client.callTool({ name: "slow_count", arguments: { n: 3, delay_ms: 10 } }),
      ]),
    );
    expect(answers.map(textOf)).toEqual(["alice", "counted to 3", "alice", "counted to 3", "alice", "counted to 3"]);
    // The legacy client has a session (and a child) of its own; the other two share the grant's child.
    expect(t.broker.registry.size).toBe(sessionsBefore + 1);
    expect(t.broker.principals.childOf((await identityOf(t, accessToken)).grantId)).not.toBeNull();
    await Promise.all([legacy.close(), auto.close(), pinned.close()]);
    // Three SDK clients start their children at once, sandboxed: past bun's 5 s default on a loaded 2-core machine.
  }, 30_000);
});

// End to end with real child processes and the official SDK client: sign-in, initialize, tools of
// that user's own child, progress, elicitation, DELETE; the faults: kill -9, rotation mid-call, refused refresh.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { StreamableHTTPError } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { hashToken } from "../../src/crypto.ts";
import type { SessionIdentity } from "../../src/session/registry.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, connectAs, isAlive, postMcp, processesMatching, type SignedInClient, textOf } from "../helpers/mcp.ts";
import { waitWhile } from "../helpers/promises.ts";


async function identityOf(t: TestBroker, signedIn: SignedInClient): Promise<SessionIdentity> {
  const identity = await t.broker.store.findAccessIdentity(hashToken(signedIn.provider.savedTokens!.access_token), Date.now());
  if (identity === null || identity === undefined) throw new Error("the client's token is not live");
  return identity;
}

const childPid = async (t: TestBroker, signedIn: SignedInClient) => t.broker.registry.get(signedIn.transport.sessionId!, await identityOf(t, signedIn)).childPid;

describe("the official SDK client through the broker", () => {
  const marker = `--e2e-${crypto.randomUUID()}`;
  let t: TestBroker;
  let alice: SignedInClient;
  let bob: SignedInClient;

  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand(marker) } });
    alice = await connectAs(t, "alice", "blue");
    bob = await connectAs(t, "bob", "green");
  });
  afterAll(async () => {
    await t.stop();
    expect(await processesMatching(marker)).toEqual([]);
  });

  test("initialize gives each client its own session and child, started with the stand-in's tools", async () => {
    expect(alice.transport.sessionId).toMatch(/^[0-9a-f]{48}$/);
    expect(bob.transport.sessionId).not.toBe(alice.transport.sessionId);
    expect(alice.client.getServerVersion()).toMatchObject({ name: "forgejo-stand-in" });
    expect((await childPid(t, alice))).not.toBe((await childPid(t, bob)));
    const { tools } = await alice.client.listTools();
    expect(tools.map((tool) => tool.name).sort()).toEqual(["ask_model", "ask_two", "ask_user", "echo", "list_my_repos", "slow_count", "whoami"]);
  });

  test("each user's child calls Forgejo with that user's token and sees that user's data", async () => {
    expect(textOf(await alice.client.callTool({ name: "whoami", arguments: {} }))).toBe("alice");
    expect(textOf(await bob.client.callTool({ name: "whoami", arguments: {} }))).toBe("bob");
    expect(JSON.parse(textOf(await alice.client.callTool({ name: "list_my_repos", arguments: {} })))).toEqual(["alice/notes"]);
    expect(JSON.parse(textOf(await bob.client.callTool({ name: "list_my_repos", arguments: {} })))).toEqual(["bob/garden"]);
  });

  test("concurrent calls on one session are routed by id", async () => {
    const words = Array.from({ length: 10 }, (_, i) => `word-${i}`);
    const results = await Promise.all(words.map((text) => alice.client.callTool({ name: "echo", arguments: { text } })));
    expect(results.map(textOf)).toEqual(words);
  });

  test("a long call streams its progress notifications to the client's onprogress handler", async () => {
    const seen: number[] = [];
    const result = await alice.client.callTool({ name: "slow_count", arguments: { n: 5, delay_ms: 20 } }, undefined, {
      onprogress: (progress) => seen.push(progress.progress),
    });
    expect(textOf(result)).toBe("counted to 5");
    expect(seen).toEqual([1, 2, 3, 4, 5]);
  });

  test("the child's elicitation request reaches the client's handler and its answer reaches the child", async () => {
    const result = await bob.client.callTool({ name: "ask_user", arguments: { question: "Favourite colour?" } });
    expect(bob.elicitations).toEqual(["Favourite colour?"]);
    expect(JSON.parse(textOf(result))).toEqual({ action: "accept", content: { answer: "green" } });
  });

  test("DELETE ends the session at once (the old id answers 404) and its child is gone within a second", async () => {
    const signedIn = await connectAs(t, "alice");
    const sessionId = signedIn.transport.sessionId!;
    const pid = (await childPid(t, signedIn));
    await signedIn.transport.terminateSession();
    await waitWhile(async () => isAlive(pid), 50, 20);
    expect(isAlive(pid)).toBe(false);
    const later = await postMcp(t.mcpUrl, signedIn.provider.savedTokens!.access_token, { jsonrpc: "2.0", id: 9, method: "tools/list" }, {
      "mcp-session-id": sessionId,
    });
    expect(later.status).toBe(404);
    expect(await later.json()).toEqual({ jsonrpc: "2.0", id: 9, error: { code: -32001, message: "Session not found" } });
    await signedIn.client.close();
  });

  test("kill -9 of a child during a call: the waiting call fails within a second, the session is gone", async () => {
    const signedIn = await connectAs(t, "bob");
    const pid = (await childPid(t, signedIn));
    let killedAt = 0;
    const call = signedIn.client.callTool({ name: "slow_count", arguments: { n: 1000, delay_ms: 50 } }, undefined, {
      onprogress: (progress) => {
        if (progress.progress === 2) {
          killedAt = performance.now();
          process.kill(pid, "SIGKILL");
        }
      },
      timeout: 60_000,
    });
    const outcome = await call.then(
      () => "answered",
      (error: Error) => error.message,
    );
    const waitedMs = performance.now() - killedAt;
    expect(outcome).toContain("the MCP server exited");
    expect(waitedMs).toBeLessThan(1000);
    const after = await signedIn.client.listTools().then(
      () => "answered",
      (error: unknown) => (error instanceof StreamableHTTPError ? error.code : String(error)),
    );
    expect(after).toBe(404);
    await signedIn.client.close();
  });

  test("token rotation with a call in flight loses nothing: same session id, a new child, every progress and the answer", async () => {
    const signedIn = await connectAs(t, "alice");
    const sessionId = signedIn.transport.sessionId!;
    const identity = await identityOf(t, signedIn);
    const oldPid = (await childPid(t, signedIn));
    const seen: number[] = [];
    let rotation: Promise<{ moved: number; failed: number }> | undefined;
    const result = await signedIn.client.callTool({ name: "slow_count", arguments: { n: 30, delay_ms: 30 } }, undefined, {
      onprogress: (progress) => {
        seen.push(progress.progress);
        if (progress.progress === 3) {
          rotation = t.broker.oauth.credentials
            .refreshNow(identity.forgejoUserId)
            .then((access) => t.broker.registry.rotateUser(identity.forgejoUserId, access.accessToken));
        }
      },
    });
    expect(textOf(result)).toBe("counted to 30");
    expect(seen).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
    expect((await rotation!).failed).toBe(0);
    expect(signedIn.transport.sessionId).toBe(sessionId);
    const newPid = (await childPid(t, signedIn));
    expect(newPid).not.toBe(oldPid);
    // The old child finished its call, then was stopped.
    await waitWhile(async () => isAlive(oldPid), 50, 20);
    expect(isAlive(oldPid)).toBe(false);
    // New calls go to the new child, which holds the refreshed token.
    expect(textOf(await signedIn.client.callTool({ name: "whoami", arguments: {} }))).toBe("alice");
    await signedIn.client.close();
  });
});

describe("rotation driven by the upstream token's expiry", () => {
  let t: TestBroker;
  beforeAll(async () => {
    // Forgejo's tokens live 10 s here: the lead is cut to half a token's life, so each rotation is due 5 s after the token was issued.
    t = await startTestBroker({ forgejo: { accessTokenTtlS: 10 }, env: { BROKER_CHILD_COMMAND: childCommand() } });
  });
  afterAll(async () => {
    await t.stop();
  });

  test("the broker refreshes the user's Forgejo token and moves the session to a new child under the same id", async () => {
    const signedIn = await connectAs(t, "bob");
    const sessionId = signedIn.transport.sessionId!;
    const firstPid = (await childPid(t, signedIn));
    const refreshesBefore = t.forgejo.stats.refreshes;
    const seen: number[] = [];
    const result = await signedIn.client.callTool({ name: "slow_count", arguments: { n: 80, delay_ms: 100 } }, undefined, {
      onprogress: (progress) => seen.push(progress.progress),
    });
    expect(textOf(result)).toBe("counted to 80");
    expect(seen).toHaveLength(80);
    expect(t.forgejo.stats.refreshes).toBeGreaterThan(refreshesBefore);
    expect(signedIn.transport.sessionId).toBe(sessionId);
    expect((await childPid(t, signedIn))).not.toBe(firstPid);
    expect(textOf(await signedIn.client.callTool({ name: "whoami", arguments: {} }))).toBe("bob");
    await signedIn.client.close();
  }, 20_000);

  test("when Forgejo refuses the refresh, the user's sessions end and the client's next request gets 401", async () => {
    const signedIn = await connectAs(t, "alice");
    const sessionId = signedIn.transport.sessionId!;
    const pid = (await childPid(t, signedIn));
    const token = signedIn.provider.savedTokens!.access_token;
    // The user revokes the app on Forgejo: the next scheduled refresh (about 5 s away) is refused.
    t.forgejo.revokeUser("alice");
    await waitWhile(async () => isAlive(pid), 200, 50);
    expect(isAlive(pid)).toBe(false);
    expect(t.broker.registry.sessionsOf(1)).toEqual([]);
    const after = await postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: 1, method: "tools/list" }, { "mcp-session-id": sessionId });
    expect(after.status).toBe(401);
    expect(after.headers.get("www-authenticate")).toContain('error="invalid_token"');
    expect(t.logs.some((line) => line.includes('"msg":"upstream credential lost; grants revoked"'))).toBe(true);
    await signedIn.client.close();
  }, 20_000);
});

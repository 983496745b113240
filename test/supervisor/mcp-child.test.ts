// Real children end to end below HTTP: the stand-in MCP server started by the supervisor with each
// user's token from the Forgejo stand-in, driven through the legacy session and the registry.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { IncomingMessage } from "../../src/bridge/jsonrpc.ts";
import type { MessageStream, OutboundEvent } from "../../src/bridge/message-stream.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { SessionStartError } from "../../src/session/errors.ts";
import { SessionRegistry, type SessionIdentity } from "../../src/session/registry.ts";
import { createSpawnChild } from "../../src/supervisor/child.ts";
import { realTimers } from "../../src/supervisor/timers.ts";
import { startFakeForgejo, type FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { waitWhile } from "../helpers/promises.ts";

let forgejo: FakeForgejo;
const tokens = new Map<number, string>();

/** Signs the user in to the Forgejo stand-in the way the broker would, and returns their access token. */
async function signIn(login: string): Promise<string> {
  forgejo.setCurrentUser(login);
  const redirectUri = "http://127.0.0.1:9/callback";
  const verifier = "v".repeat(43);
  const authorize = new URL(`${forgejo.url}/login/oauth/authorize`);
  for (const [key, value] of Object.entries({
    client_id: forgejo.clientId,
    redirect_uri: redirectUri,
    response_type: "code",
    code_challenge: verifier,
    code_challenge_method: "plain",
    state: "s",
  })) {
    authorize.searchParams.set(key, value);
  }
  const redirect = await fetch(authorize, { redirect: "manual" });
  const code = new URL(redirect.headers.get("location")!).searchParams.get("code")!;
  const response = await fetch(`${forgejo.url}/login/oauth/access_token`, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code,
      redirect_uri: redirectUri,
      client_id: forgejo.clientId,
      client_secret: forgejo.clientSecret,
      code_verifier: verifier,
    }),
  });
  return ((await response.json()) as { access_token: string }).access_token;
}

const alice: SessionIdentity = { grantId: "g-alice", forgejoUserId: 1, clientId: "c" };
const bob: SessionIdentity = { grantId: "g-bob", forgejoUserId: 2, clientId: "c" };

function msg(message: Record<string, unknown>): IncomingMessage {
  return { raw: JSON.stringify(message), message };
}

const initialize = msg({
  jsonrpc: "2.0",
  id: 0,
  method: "initialize",
  params: { protocolVersion: "2025-06-18", capabilities: { elicitation: {} }, clientInfo: { name: "test", version: "1" } },
});
const initialized = msg({ jsonrpc: "2.0", method: "notifications/initialized" });
const call = (id: number, name: string, args: Record<string, unknown> = {}, meta?: Record<string, unknown>) =>
  msg({ jsonrpc: "2.0", id, method: "tools/call", params: { name, arguments: args, ...(meta ? { _meta: meta } : {}) } });

async function all(stream: MessageStream): Promise<OutboundEvent[]> {
  const out: OutboundEvent[] = [];
  for await (const event of stream) out.push(event);
  return out;
}

const textOf = (events: OutboundEvent[]) => (events.at(-1)!.message.result as { content: { text: string }[] }).content[0]!.text;

function liveProcesses(pids: number[]): number[] {
  const out = Bun.spawnSync(["ps", "-eo", "pid=,pgid=,stat="]).stdout.toString();
  return out
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    .filter((cols) => pids.includes(Number(cols[1])) && !cols[2]?.startsWith("Z"))
    .map((cols) => Number(cols[0]));
}

function registry(token: (user: number) => string = (user) => tokens.get(user)!) {
  const logger = createMemoryLogger();
  const spawn = createSpawnChild({
    config: {
      command: [process.execPath, join(import.meta.dir, "../../src/testing/mcp-child.ts")],
      urlEnv: "FORGEJO_URL",
      tokenEnv: "FORGEJO_ACCESS_TOKEN",
      passthroughEnv: [],
      stopGraceMs: 2000,
      sandbox: { kind: "none", bind: [] },
      era: "legacy",
    },
    // About the bridge and the registry, not the sandbox: the process checks here go by the server's own group.
    sandbox: { kind: "none" },
    forgejoUrl: forgejo.url,
    env: { PATH: process.env.PATH },
    logger,
  });
  const pids: number[] = [];
  const sessions = new SessionRegistry({
    config: {
      maxSessions: 100,
      maxSessionsPerUser: 100,
      idleTimeoutMs: 600_000,
      refreshLeadMs: 0,
      requestTimeoutMs: 10_000,
      maxMessageBytes: 1_000_000,
      allowedOrigins: [],
    },
    spawn: (spec) => {
      const child = spawn(spec);
      pids.push(child.pid);
      return child;
    },
    upstreamToken: async (user) => ({ token: token(user), expiresAt: null }),
    logger,
    timers: realTimers,
    initializeTimeoutMs: 10_000,
  });
  return { sessions, logger, pids };
}

beforeAll(async () => {
  forgejo = await startFakeForgejo();
  tokens.set(1, await signIn("alice"));
  tokens.set(2, await signIn("bob"));
});

afterAll(async () => {
  await forgejo.stop();
});

describe("the stand-in MCP server under the registry", () => {
  test("each user's child calls Forgejo with that user's token and sees that user's data", async () => {
    const { sessions, pids } = registry();
    const a = await sessions.create(alice, initialize);
    const b = await sessions.create(bob, initialize);
    expect((a.events[0]!.message.result as { serverInfo: { name: string } }).serverInfo.name).toBe("forgejo-stand-in");
    a.entry.send(initialized, "notification");
    b.entry.send(initialized, "notification");
    expect(textOf(await all(a.entry.request(call(1, "whoami"))))).toBe("alice");
    expect(textOf(await all(b.entry.request(call(1, "whoami"))))).toBe("bob");
    expect(JSON.parse(textOf(await all(b.entry.request(call(2, "list_my_repos")))))).toEqual(["bob/garden"]);
    await sessions.shutdown();
    expect(liveProcesses(pids)).toEqual([]);
  });

  test("progress streams on the call's stream, and an elicitation is answered through the session", async () => {
    const { sessions } = registry();
    const { entry } = await sessions.create(alice, initialize);
    entry.send(initialized, "notification");
    const counted = await all(entry.request(call(2, "slow_count", { n: 3, delay_ms: 1 }, { progressToken: "p" })));
    expect(counted.map((e) => e.kind)).toEqual(["notification", "notification", "notification", "response"]);
    expect(textOf(counted)).toBe("counted to 3");

    const asking = entry.request(call(3, "ask_user", { question: "Which branch?" }));
    const question = (await asking.next())!;
    expect(question.message.method).toBe("elicitation/create");
    entry.send(msg({ jsonrpc: "2.0", id: question.message.id, result: { action: "accept", content: { answer: "main" } } }), "response");
    expect(JSON.parse(textOf(await all(asking)))).toEqual({ action: "accept", content: { answer: "main" } });
    await sessions.shutdown();
  });

  test("a child started with a bad token fails initialize, its last stderr line kept for the log, and leaves no session", async () => {
    const { sessions } = registry(() => "not-a-valid-token");
    const error = (await sessions.create(alice, initialize).catch((e: unknown) => e)) as SessionStartError;
    expect(error).toBeInstanceOf(SessionStartError);
    expect(error.message).toBe("the MCP server exited before answering initialize");
    expect(error.lastStderrLine).toBe(`cannot use Forgejo at ${forgejo.url}: GET /api/v1/version answered 401`);
    expect(sessions.size).toBe(0);
  });

  test("kill -9 of a child during a call fails the waiting call at once, not at its timeout, and drops the session", async () => {
    const { sessions } = registry();
    const { entry } = await sessions.create(alice, initialize);
    entry.send(initialized, "notification");
    const waiting = entry.request(call(2, "slow_count", { n: 1, delay_ms: 5000 }, { progressToken: "k" }));
    // The first progress says the child is inside the call.
    expect((await waiting.next())?.message.method).toBe("notifications/progress");
    process.kill(entry.childPid, "SIGKILL");
    const events = await all(waiting);
    expect(events.map((e) => e.message.error)).toEqual([{ code: -32000, message: expect.stringMatching(/^the MCP server exited/) }]);
    await waitWhile(() => sessions.size > 0, 100, 10);
    expect(sessions.size).toBe(0);
  });

  test("rotation to a child with a new token keeps the session and the call in flight", async () => {
    const { sessions, pids } = registry();
    const { entry } = await sessions.create(alice, initialize);
    entry.send(initialized, "notification");
    const firstPid = entry.childPid;
    const inFlight = entry.request(call(2, "slow_count", { n: 1, delay_ms: 500 }));
    const refreshed = await signIn("alice");
    expect(await sessions.rotateUser(1, refreshed)).toEqual({ moved: 1, failed: 0 });
    expect(entry.childPid).not.toBe(firstPid);
    expect(textOf(await all(entry.request(call(3, "whoami"))))).toBe("alice");
    expect(textOf(await all(inFlight))).toBe("counted to 1");
    // The old child is stopped once its last call is answered.
    await waitWhile(() => liveProcesses([firstPid]).length > 0, 100, 20);
    expect(liveProcesses([firstPid])).toEqual([]);
    await sessions.shutdown();
    expect(liveProcesses(pids)).toEqual([]);
  });
});

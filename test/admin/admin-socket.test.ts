// The admin command against an in-process broker with real stand-in children, over its real Unix socket: the
// listing, revocation that ends live sessions and principal children, clients and their removal, drain, and the socket's own rules.
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { lstatSync, existsSync } from "node:fs";
import { AdminClient, AdminRefusedError, BrokerNotRunningError } from "../../src/admin/client.ts";
import { adminSocketPath } from "../../src/admin/protocol.ts";
import { AdminSocketError } from "../../src/admin/socket-server.ts";
import { startBroker } from "../../src/broker.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, INITIALIZE, openSession, postMcp } from "../helpers/mcp.ts";
import { connectModern, modernRequest, postModern } from "../helpers/modern-client.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { rejection } from "../helpers/promises.ts";

let t: TestBroker;
let admin: AdminClient;
beforeEach(async () => {
  t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand() } });
  admin = new AdminClient(adminSocketPath(t.dataDir));
});
afterEach(() => t.stop());

const signIn = async (login: string) => {
  t.forgejo.setCurrentUser(login);
  return obtainTokens(t.config.publicUrl);
};
const echo = (token: string, sessionId: string) =>
  postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "echo", arguments: { text: "hi" } } }, { "mcp-session-id": sessionId });

describe("admin sessions", () => {
  test("lists a legacy session and a principal child with their user, client, pid and the memory of the child's processes; --user filters", async () => {
    const alice = await signIn("alice");
    const sessionId = await openSession(t.mcpUrl, alice.accessToken);
    const bob = await connectModern(t, "bob");
    await bob.client.listTools();

    const { sessions } = await admin.sessions();
    const legacy = sessions.find((row) => row.era === "legacy")!;
    const modern = sessions.find((row) => row.era === "modern")!;
    expect(sessions).toHaveLength(2);
    expect(legacy).toMatchObject({ id: sessionId, user: "alice", clientId: alice.clientId, clientName: "Test", state: "serving" });
    expect(legacy.pid).toBe(t.broker.registry.get(sessionId, { grantId: legacy.grantId, forgejoUserId: legacy.forgejoUserId, clientId: alice.clientId }).childPid);
    // The stand-in child is a bun process: tens of MiB, far more than bwrap alone holds.
    expect(legacy.rssBytes).toBeGreaterThan(10 * 1024 * 1024);
    expect(modern).toMatchObject({ user: "bob", clientName: "Test", state: "serving" });
    expect(modern.pid).toBe(t.broker.principals.childOf(modern.grantId)!.childPid);
    expect(modern.rssBytes).toBeGreaterThan(10 * 1024 * 1024);

    expect((await admin.sessions("alice")).sessions.map((row) => row.id)).toEqual([sessionId]);
    expect((await admin.sessions("carol")).sessions).toEqual([]);
    await bob.client.close();
  });
});

describe("admin revoke", () => {
  test("--user ends that user's live session (its next request is refused 401) and leaves others' alone", async () => {
    const alice = await signIn("alice");
    const aliceSession = await openSession(t.mcpUrl, alice.accessToken);
    const bob = await signIn("bob");
    const bobSession = await openSession(t.mcpUrl, bob.accessToken);

    const answer = await admin.revoke({ user: "alice" });
    expect(answer.revokedGrants).toHaveLength(1);
    expect(answer.endedSessions).toBe(1);
    expect((await echo(alice.accessToken, aliceSession)).status).toBe(401);
    expect(t.broker.registry.list().map((s) => s.id)).toEqual([bobSession]);
    expect((await echo(bob.accessToken, bobSession)).status).toBe(200);
  });

  test("--grant ends the grant's principal child", async () => {
    const bob = await connectModern(t, "bob");
    await bob.client.listTools();
    const [row] = (await admin.sessions("bob")).sessions;
    const pid = row!.pid;
    const answer = await admin.revoke({ grant: row!.grantId });
    expect(answer).toEqual({ revokedGrants: [row!.grantId], endedSessions: 1 });
    expect(t.broker.principals.childOf(row!.grantId)).toBeNull();
    const refused = await postModern(t, bob.accessToken, modernRequest(1, "tools/list"));
    expect(refused.status).toBe(401);
    expect((await admin.sessions()).sessions.filter((s) => s.pid === pid && s.state === "serving")).toEqual([]);
  });

  test("a target with no active grant: 404, and nothing revoked", async () => {
    const alice = await signIn("alice");
    const sessionId = await openSession(t.mcpUrl, alice.accessToken);
    for (const target of [{ user: "nobody" }, { client: "no-such-client" }, { grant: "no-such-grant" }]) {
      const error = await rejection(admin.revoke(target));
      expect(error).toBeInstanceOf(AdminRefusedError);
      expect((error as AdminRefusedError).status).toBe(404);
    }
    expect((await echo(alice.accessToken, sessionId)).status).toBe(200);
  });
});

describe("admin clients", () => {
  test("lists each client with its active grants and when it last got a token; --delete revokes its grants, ends its sessions, then removes it", async () => {
    const before = Date.now();
    const alice = await signIn("alice");
    const sessionId = await openSession(t.mcpUrl, alice.accessToken);
    const other = await signIn("bob");

    const listed = (await admin.clients()).clients.find((c) => c.clientId === alice.clientId)!;
    expect(listed).toMatchObject({ name: "Test", tokenEndpointAuthMethod: "none", activeGrants: 1 });
    expect(listed.lastTokenIssuedAt).toBeGreaterThanOrEqual(before);

    expect(await admin.deleteClient(alice.clientId)).toEqual({ clientId: alice.clientId, revokedGrants: [expect.any(String)], endedSessions: 1 });
    expect((await echo(alice.accessToken, sessionId)).status).toBe(401);
    expect((await admin.clients()).clients.map((c) => c.clientId)).toEqual([other.clientId]);
    const again = await rejection(admin.deleteClient(alice.clientId));
    expect((again as AdminRefusedError).status).toBe(404);
  });
});

describe("admin drain", () => {
  test("new sessions and principal children get 503 with Retry-After; /healthz says draining; live ones serve on; the drain reports when the last child is gone", async () => {
    const alice = await signIn("alice");
    const sessionId = await openSession(t.mcpUrl, alice.accessToken);
    const bob = await signIn("bob");

    const healthz = () => fetch(`${t.config.publicUrl}/healthz`);
    expect((await healthz()).status).toBe(200);
    const progress = admin.drain();
    expect((await progress.next()).value).toEqual({ children: 1, done: false });
    // What the load balancer's health check sees: this replica leaves the rotation.
    const health = await healthz();
    expect(health.status).toBe(503);
    expect(await health.json()).toEqual({ status: "draining", store: "ok" });

    const refused = await postMcp(t.mcpUrl, alice.accessToken, INITIALIZE);
    expect(refused.status).toBe(503);
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(((await refused.json()) as { error: { message: string } }).error.message).toContain("draining");
    const modern = await postModern(t, bob.accessToken, modernRequest(1, "tools/list"));
    expect(modern.status).toBe(503);
    expect(modern.headers.get("retry-after")).not.toBeNull();
    expect((await echo(alice.accessToken, sessionId)).status).toBe(200);

    const deleted = await fetch(t.mcpUrl, { method: "DELETE", headers: { authorization: `Bearer ${alice.accessToken}`, "mcp-session-id": sessionId } });
    expect(deleted.status).toBe(204);
    let last = (await progress.next()).value;
    while (last !== undefined && !last.done) last = (await progress.next()).value;
    expect(last).toEqual({ children: 0, done: true });
    expect((await progress.next()).done).toBe(true);
  });

  test("a grant whose principal child serves gets 503 with Retry-After for a new modern call too: stateless, it belongs on another replica", async () => {
    const bob = await signIn("bob");
    expect((await postModern(t, bob.accessToken, modernRequest(1, "tools/list"))).status).toBe(200);
    const progress = admin.drain();
    expect((await progress.next()).value).toEqual({ children: 1, done: false });
    const refused = await postModern(t, bob.accessToken, modernRequest(2, "tools/list"));
    expect(refused.status).toBe(503);
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(await refused.json()).toMatchObject({ id: 2, error: { message: expect.stringContaining("draining") } });
    await progress.return(undefined);
  });
});

describe("the admin protocol", () => {
  const send = (path: string, init: RequestInit = {}) => fetch(`http://broker${path}`, { ...init, unix: adminSocketPath(t.dataDir) });
  const refusals: [string, string, RequestInit, number][] = [
    ["revoke naming two targets", "/revoke", { method: "POST", body: JSON.stringify({ user: "a", client: "b" }), headers: { "content-type": "application/json" } }, 400],
    ["revoke naming none", "/revoke", { method: "POST", body: "{}", headers: { "content-type": "application/json" } }, 400],
    ["revoke with an empty login", "/revoke", { method: "POST", body: JSON.stringify({ user: "" }), headers: { "content-type": "application/json" } }, 400],
    ["an unknown command", "/restart", { method: "POST" }, 404],
  ];
  test.each(refusals)("%s (%s) is refused with the status and an error the command prints", async (_, path, init, status) => {
    const response = await send(path, init);
    expect(response.status).toBe(status);
    expect(((await response.json()) as { error: string }).error).toBeString();
  });
});

describe("the admin socket", () => {
  test("is 0600, and gone once the broker has stopped: the command then finds no broker", async () => {
    const path = adminSocketPath(t.dataDir);
    expect(lstatSync(path).isSocket()).toBe(true);
    expect((lstatSync(path).mode & 0o777).toString(8)).toBe("600");
    await t.broker.stop();
    expect(existsSync(path)).toBe(false);
    expect(await rejection(admin.sessions())).toBeInstanceOf(BrokerNotRunningError);
  });

  test("a second broker on the same data directory refuses to start and leaves the first one's socket alone", async () => {
    const second = startBroker({ ...t.config, port: 0 }, { logger: createMemoryLogger(), sandbox: { kind: "none" } });
    const error = await rejection(second);
    expect(error).toBeInstanceOf(AdminSocketError);
    expect(error.message).toContain("another broker is running");
    expect((await admin.sessions()).sessions).toEqual([]);
  });

  test("a socket a killed broker left behind is replaced", async () => {
    await t.restart();
    const path = adminSocketPath(t.dataDir);
    await t.broker.stop();
    // A process that listens on the path and dies by SIGKILL leaves the file with no one behind it.
    const killed = Bun.spawn([process.execPath, "-e", `Bun.listen({ unix: ${JSON.stringify(path)}, socket: { data() {} } }); process.kill(process.pid, "SIGKILL");`]);
    await killed.exited;
    expect(lstatSync(path).isSocket()).toBe(true);
    await t.restart();
    expect((await admin.sessions()).sessions).toEqual([]);
  });
});

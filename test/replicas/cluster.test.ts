// Three replicas as separate processes behind the real Caddy running deploy/Caddyfile, sharing PostgreSQL and
// Redis: what a user of the cluster sees when any replica may answer any request. See test/helpers/replica-cluster.ts.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { postForm, signInFlow } from "../../src/testing/oauth-client.ts";
import { connectAs, openSession, outermost, postMcp, textOf } from "../helpers/mcp.ts";
import { waitWhile } from "../helpers/promises.ts";
import { startReplicaCluster, type ReplicaCluster } from "../helpers/replica-cluster.ts";

let cluster: ReplicaCluster;

// Three broker processes, PostgreSQL migrations from all three at once and Caddy: well past bun's 5 s on a loaded machine.
beforeAll(async () => {
  cluster = await startReplicaCluster();
}, 60_000);
afterAll(async () => {
  await cluster?.stop();
}, 60_000);

/** An official SDK client on the cluster with a bearer token signed in already (no OAuth provider). */
async function sdkClient(accessToken: string): Promise<{ client: Client; transport: StreamableHTTPClientTransport }> {
  const transport = new StreamableHTTPClientTransport(new URL(cluster.mcpUrl), { requestInit: { headers: { authorization: `Bearer ${accessToken}` } } });
  const client = new Client({ name: "cluster", version: "1.0.0" });
  await client.connect(transport);
  return { client, transport };
}

test("the SDK client's own OAuth flow (discovery, registration, consent, Forgejo, code exchange) through Caddy, then a tool call", async () => {
  // Round robin: discovery, registration, the consent page, its POST, the callback and the token request reach different replicas.
  const { client, transport } = await connectAs(cluster, "alice");
  try {
    expect(textOf(await client.callTool({ name: "whoami", arguments: {} }))).toBe("alice");
    expect(await cluster.ownerOf(transport.sessionId!)).toBeDefined();
  } finally {
    await transport.terminateSession();
    await client.close();
  }
}, 60_000);

test("12 sessions of two users land on all three replicas, and every call, on whichever replica it reaches, runs as its user", async () => {
  const tokens = { alice: (await signInFlow(cluster.publicUrl, { user: "alice" })).accessToken, bob: (await signInFlow(cluster.publicUrl, { user: "bob" })).accessToken };
  const logins = Array.from({ length: 12 }, (_, i) => (i % 2 === 0 ? "alice" : "bob") as keyof typeof tokens);
  const sessions = await Promise.all(logins.map(async (login) => ({ login, ...(await sdkClient(tokens[login])) })));
  try {
    const owners = await Promise.all(sessions.map(({ transport }) => cluster.ownerOf(transport.sessionId!)));
    expect(new Set(owners.map((owner) => owner?.index)).size).toBe(3);
    // Five rounds of two calls per session, all at once: each call goes to the next replica in Caddy's rotation.
    for (let round = 0; round < 5; round++) {
      const answers = await Promise.all(
        sessions.map(async ({ client }, i) => [
          textOf(await client.callTool({ name: "whoami", arguments: {} })),
          textOf(await client.callTool({ name: "echo", arguments: { text: `session ${i} round ${round}` } })),
        ]),
      );
      expect(answers).toEqual(sessions.map(({ login }, i) => [login, `session ${i} round ${round}`]));
    }
    // Each session is still where it started: the calls were forwarded to the owner, not restored elsewhere.
    expect(await Promise.all(sessions.map(({ transport }) => cluster.ownerOf(transport.sessionId!)))).toEqual(owners);
  } finally {
    await Promise.all(sessions.map(async ({ client, transport }) => {
      await transport.terminateSession();
      await client.close();
    }));
  }
  // DELETE through any replica ended the session on its owner: no child of any replica is left.
  await waitWhile(async () => (await cluster.children()).length > 0, 50, 100);
  expect(await cluster.children()).toEqual([]);
}, 90_000);

test("a grant revoked on one replica is refused on the other two within 1 s, and its sessions' children on all three have ended within 1 s of the answer", async () => {
  const tokens = await signInFlow(cluster.publicUrl, { user: "bob" });
  // Every replica has seen the token (its identity cache holds it) before the revocation.
  for (const replica of cluster.replicas) await openSession(replica.process.mcpUrl, tokens.accessToken);
  expect(outermost(await cluster.children())).toHaveLength(3);
  const [revoking, ...others] = cluster.replicas;
  // A cheap probe that starts nothing: a live token meets 404 (no such session), a revoked one 401.
  const unknownSession = { "mcp-session-id": "0".repeat(48) };
  const probe = (replica: (typeof others)[number]) => postMcp(replica.process.mcpUrl, tokens.accessToken, { jsonrpc: "2.0", id: 2, method: "tools/list" }, unknownSession);
  expect(await Promise.all(others.map(async (replica) => (await probe(replica)).status))).toEqual([404, 404]);
  // Timed from the revocation request on, its own answer included.
  const since = performance.now();
  const revoked = await postForm(`${revoking!.url}/oauth/revoke`, { token: tokens.refreshToken, client_id: tokens.clientId });
  expect(revoked.status).toBe(200);
  // The grant's sessions end on every replica, children included: timed from the revocation's answer, alongside the probes.
  const answered = performance.now();
  const childrenGoneAfterMs = (async () => {
    await waitWhile(async () => (await cluster.children()).length > 0, 300, 10);
    return performance.now() - answered;
  })();
  const refusedAfterMs = new Map<number, number>();
  await waitWhile(async () => {
    for (const replica of others) {
      if (refusedAfterMs.has(replica.index)) continue;
      if ((await probe(replica)).status === 401) refusedAfterMs.set(replica.index, performance.now() - since);
    }
    return refusedAfterMs.size < others.length && performance.now() - since < 1_000;
  }, 200, 20);
  expect([...refusedAfterMs.keys()].sort()).toEqual(others.map((replica) => replica.index));
  expect([...refusedAfterMs.values()].filter((ms) => ms > 1_000)).toEqual([]);
  const goneAfterMs = await childrenGoneAfterMs;
  expect(await cluster.children()).toEqual([]);
  expect(goneAfterMs).toBeLessThan(1_000);
}, 60_000);

test("N concurrent refreshes of one refresh token through Caddy: exactly one wins", async () => {
  const tokens = await signInFlow(cluster.publicUrl, { user: "alice" });
  const RACERS = 6;
  const answers = await Promise.all(
    Array.from({ length: RACERS }, () => postForm(`${cluster.publicUrl}/oauth/token`, { grant_type: "refresh_token", refresh_token: tokens.refreshToken, client_id: tokens.clientId })),
  );
  const bodies = (await Promise.all(answers.map((answer) => answer.json()))) as { access_token?: string; error?: string }[];
  expect(answers.map((answer) => answer.status).sort()).toEqual([200, ...Array(RACERS - 1).fill(400)]);
  expect(bodies.filter((body) => body.error !== undefined).map((body) => body.error)).toEqual(Array(RACERS - 1).fill("invalid_grant"));
}, 60_000);

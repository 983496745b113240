// The upstream Forgejo refresh through three real replica processes: each holds a session of the same user, so
// all three find the user's Forgejo token due at the same moment; Forgejo sees exactly one refresh and no reuse.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { signInFlow } from "../../src/testing/oauth-client.ts";
import { openSession, postMcp } from "../helpers/mcp.ts";
import { answerMessages } from "../helpers/modern-client.ts";
import { startReplicaCluster, type ReplicaCluster } from "../helpers/replica-cluster.ts";

/** Forgejo's access tokens live this long here, and are refreshed this long before they expire (at most half the life): due 10 s after sign-in. */
const ACCESS_TTL_S = 20;
const REFRESH_LEAD_S = 10;

let cluster: ReplicaCluster;

// Three broker processes and Caddy: well past bun's 5 s on a loaded machine.
beforeAll(async () => {
  cluster = await startReplicaCluster({ forgejo: { accessTokenTtlS: ACCESS_TTL_S }, env: { BROKER_REFRESH_LEAD_S: String(REFRESH_LEAD_S) } });
}, 60_000);
afterAll(async () => {
  await cluster?.stop();
}, 60_000);

const moved = '"msg":"session moved to a child with the refreshed token"';

test("three replicas due at once: Forgejo counts one refresh and no reused token, and every session runs on with the new token", async () => {
  const { accessToken } = await signInFlow(cluster.publicUrl, { user: "alice" });
  // One session on each replica, straight to it: each replica's scheduler watches alice's token.
  const sessions = await Promise.all(cluster.replicas.map((replica) => openSession(replica.process.mcpUrl, accessToken)));
  const before = { ...cluster.forgejo.stats };
  const issued = cluster.forgejo.issuedAccessTokens("alice").length;

  // Each replica moves its session to a child with the refreshed token once it has one, the winner's and the losers' alike.
  const lines = await Promise.all(cluster.replicas.map((replica) => replica.process.stdout.waitFor((line) => line.includes(moved))));
  expect(lines.every((line) => line !== null)).toBe(true);
  expect({ refreshes: cluster.forgejo.stats.refreshes - before.refreshes, reused: cluster.forgejo.stats.reusedRefreshTokens - before.reusedRefreshTokens }).toEqual({
    refreshes: 1,
    reused: 0,
  });
  const newest = cluster.forgejo.issuedAccessTokens("alice");
  expect(newest).toHaveLength(issued + 1);

  // Every session's child now holds the refreshed token and answers as alice, through Caddy.
  for (const sessionId of sessions) {
    const call = await postMcp(cluster.mcpUrl, accessToken, { jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "whoami", arguments: {} } }, { "mcp-session-id": sessionId });
    expect(call.status).toBe(200);
    const answer = (await answerMessages(call).next()).value as { result: { content: { text: string }[] } };
    expect(answer.result.content[0]!.text).toBe("alice");
  }
}, 60_000);

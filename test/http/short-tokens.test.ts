// End to end with real children and a Forgejo whose access tokens live 16 s, under the default 300 s
// lead: each user's token is refreshed once per half its life, not in a loop, and every call is answered.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { MIN_REFRESH_INTERVAL_MS } from "../../src/upstream/refresh-timing.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, processesMatching } from "../helpers/mcp.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

// Each rotation must finish within the half life left after a refresh: 10 s left only 5 s, which three
// sandboxed children starting at once overran on a loaded 2-core machine (calls reached an expired token).
const TOKEN_TTL_S = 16;
const USERS = ["alice", "bob"];
const SESSIONS_PER_USER = 3;

const marker = `--short-tokens-${crypto.randomUUID()}`;
let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker({ forgejo: { accessTokenTtlS: TOKEN_TTL_S }, env: { BROKER_CHILD_COMMAND: childCommand(marker) } });
});
afterAll(async () => {
  await t.stop();
  expect(await processesMatching(marker)).toEqual([]);
});

/** How many times the broker moved each session to a new child, from its log. */
function movesOf(sessionId: string): number {
  return t.logs.filter((line) => line.includes('"msg":"session moved to a child with the refreshed token"') && line.includes(sessionId)).length;
}

const gaps = (times: number[]) => times.slice(1).map((at, i) => at - times[i]!);

test(`with ${TOKEN_TTL_S} s Forgejo tokens, each user is refreshed every ${TOKEN_TTL_S / 2} s or more, sessions move once per refresh, every call is answered`, async () => {
  const sessions: { login: string; client: Client; id: string }[] = [];
  for (const login of USERS) {
    t.forgejo.setCurrentUser(login);
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    for (let i = 0; i < SESSIONS_PER_USER; i++) {
      const transport = new StreamableHTTPClientTransport(new URL(t.mcpUrl), {
        requestInit: { headers: { authorization: `Bearer ${accessToken}` } },
      });
      const client = new Client({ name: "short-tokens", version: "1.0.0" });
      await client.connect(transport);
      sessions.push({ login, client, id: transport.sessionId! });
    }
  }

  // Every session calls whoami in a loop until two refreshes of each user have moved all its sessions.
  let calling = true;
  const outcomes: string[] = [];
  const callers = sessions.map(async ({ login, client }) => {
    while (calling) {
      const outcome = await client.callTool({ name: "whoami", arguments: {} }).then(
        (result) => ((result.content as { text: string }[])[0]!.text === login && result.isError !== true ? "answered" : JSON.stringify(result)),
        (error: Error) => `failed: ${error.message}`,
      );
      outcomes.push(outcome);
      // A client's pace between calls, not a wait for something to happen.
      await Bun.sleep(100);
    }
  });
  await waitWhile(() => sessions.some(({ id }) => movesOf(id) < 2), 600, 100);
  calling = false;
  await Promise.all(callers);

  for (const login of USERS) {
    const issued = t.forgejo.issuanceTimes(login);
    // The sign-in and at least two refreshes, each at least half a token's life after the one before.
    expect(issued.length).toBeGreaterThanOrEqual(3);
    for (const gap of gaps(issued)) expect(gap).toBeGreaterThanOrEqual(Math.max(TOKEN_TTL_S * 500, MIN_REFRESH_INTERVAL_MS));
  }
  for (const { login, id } of sessions) {
    const refreshes = t.forgejo.issuanceTimes(login).length - 1;
    expect(movesOf(id)).toBeGreaterThanOrEqual(2);
    expect(movesOf(id)).toBeLessThanOrEqual(refreshes);
  }
  expect(outcomes.length).toBeGreaterThan(sessions.length);
  expect(outcomes.filter((outcome) => outcome !== "answered")).toEqual([]);
  await Promise.all(sessions.map(({ client }) => client.close()));
}, 90_000);

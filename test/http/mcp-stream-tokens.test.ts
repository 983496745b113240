// A stream lives no longer than the access token that opened it, seen from HTTP: revoking that token
// or letting it expire ends the stream; a stream opened with another live token of the grant goes on.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { hashToken } from "../../src/crypto.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, holdStandaloneStream, openSession, postMcp } from "../helpers/mcp.ts";
import { obtainTokens, postForm } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

describe("revocation", () => {
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand() }, broker: { heartbeatMs: 100 } });
  });
  afterAll(async () => {
    await t.stop();
  });

  test("revoking the token a GET stream and a request's stream were opened with ends both; another live token's stream goes on", async () => {
    const signedIn = await obtainTokens(t.config.publicUrl);
    const refreshed = (await (
      await postForm(`${t.config.publicUrl}/oauth/token`, { grant_type: "refresh_token", refresh_token: signedIn.refreshToken, client_id: signedIn.clientId })
    ).json()) as { access_token: string };
    const [first, second] = [await openSession(t.mcpUrl, signedIn.accessToken), await openSession(t.mcpUrl, refreshed.access_token)];
    const controller = new AbortController();
    const revokedStream = await holdStandaloneStream(t.mcpUrl, signedIn.accessToken, first, controller.signal);
    const liveStream = await holdStandaloneStream(t.mcpUrl, refreshed.access_token, second, controller.signal);
    const call = await postMcp(
      t.mcpUrl,
      signedIn.accessToken,
      { jsonrpc: "2.0", id: 1, method: "tools/call", params: { name: "slow_count", arguments: { n: 1000, delay_ms: 50 }, _meta: { progressToken: 1 } } },
      { "mcp-session-id": first },
    );
    expect([revokedStream.status, liveStream.status, call.status]).toEqual([200, 200, 200]);
    const identity = (await t.broker.store.findAccessIdentity(hashToken(signedIn.accessToken), Date.now()))!;
    const session = t.broker.registry.get(first, identity);
    expect(session.inFlight).toBe(1);

    expect((await postForm(`${t.config.publicUrl}/oauth/revoke`, { token: signedIn.accessToken, client_id: signedIn.clientId })).status).toBe(200);
    await waitWhile(() => !revokedStream.ended() || session.inFlight > 0, 100, 20);
    expect(revokedStream.ended()).toBe(true);
    // The call's stream ended too, and the child was told to stop working on it.
    expect(session.inFlight).toBe(0);
    expect(await call.text()).not.toContain("counted to 1000");

    const seen = liveStream.text().length;
    await waitWhile(() => !liveStream.text().slice(seen).includes(": heartbeat"), 100, 20);
    expect(liveStream.text().slice(seen)).toContain(": heartbeat");
    expect(liveStream.ended()).toBe(false);
    controller.abort();
  });
});

describe("expiry", () => {
  // Long enough to sign in, open a session and its stream on a loaded machine.
  const accessTokenMs = 5000;
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand() }, broker: { lifetimes: { accessTokenMs } } });
  });
  afterAll(async () => {
    await t.stop();
  });

  test("a GET stream ends when the token that opened it expires; the session stays for the client's next token", async () => {
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    const { expiresAt } = (await t.broker.store.findAccessIdentity(hashToken(accessToken), Date.now()))!;
    const session = await openSession(t.mcpUrl, accessToken);
    const controller = new AbortController();
    const stream = await holdStandaloneStream(t.mcpUrl, accessToken, session, controller.signal);
    expect(stream.status).toBe(200);

    await waitWhile(() => !stream.ended(), 200, 50);
    expect(stream.ended()).toBe(true);
    expect(Date.now()).toBeGreaterThanOrEqual(expiresAt);
    expect(t.broker.registry.size).toBe(1);
    controller.abort();
  }, 20_000);
});

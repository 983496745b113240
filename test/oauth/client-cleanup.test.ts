// Registrations that clean up after themselves, through a running broker and its purge timer: an unused
// registration is gone a day later, a client idle for BROKER_CLIENT_IDLE_DAYS is gone with its grants.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { obtainTokens, postForm } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

const DAY = 86_400_000;
let t: TestBroker;
/** The broker's clock: the tests move it forward by days. */
let offsetMs = 0;

beforeAll(async () => {
  t = await startTestBroker({ env: { BROKER_CLIENT_IDLE_DAYS: "2" }, broker: { now: () => Date.now() + offsetMs, purgeIntervalMs: 20 } });
});
afterAll(async () => {
  await t.stop();
});

const register = async () =>
  ((await (
    await fetch(`${t.config.publicUrl}/oauth/register`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ redirect_uris: ["http://127.0.0.1:40000/cb"], token_endpoint_auth_method: "none" }),
    })
  ).json()) as { client_id: string }).client_id;

/** Waits (bounded) for the purge timer to have deleted the client, or gives up and lets the test assert. */
const purged = (clientId: string) => waitWhile(async () => (await t.broker.store.getClient(clientId)) !== undefined, 100, 20);

describe("client clean-up in a running broker", () => {
  test("a registration never used is deleted 24 h later, one that signed in is kept", async () => {
    const unused = await register();
    const used = await obtainTokens(t.config.publicUrl);
    offsetMs += DAY + 60_000;
    await purged(unused);
    expect(await t.broker.store.getClient(unused)).toBeUndefined();
    expect(await t.broker.store.getClient(used.clientId)).toBeDefined();
    expect(t.logs.some((line) => line.includes("deleted clients nobody uses"))).toBe(true);
  });

  test("a client whose grant was revoked is deleted after the idle days, and its refresh token is dead", async () => {
    const tokens = await obtainTokens(t.config.publicUrl);
    expect((await postForm(`${t.config.publicUrl}/oauth/revoke`, { token: tokens.refreshToken, client_id: tokens.clientId })).status).toBe(200);
    // The day-by-day boundary is the store's test (test/store/client-reaping.test.ts); here, the timer does it.
    offsetMs += 2 * DAY + 60_000;
    await purged(tokens.clientId);
    expect(await t.broker.store.getClient(tokens.clientId)).toBeUndefined();
    const refresh = await postForm(`${t.config.publicUrl}/oauth/token`, { grant_type: "refresh_token", refresh_token: tokens.refreshToken, client_id: tokens.clientId });
    expect(refresh.status).toBe(401);
  });
});

// Races a client can cause: concurrent refreshes with one refresh token, and floods of
// registration and token requests from one address.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { obtainTokens, postForm } from "../helpers/oauth-client.ts";

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker({ broker: { rateLimit: { burst: 60, perSecond: 0.5 } } });
});
afterAll(async () => {
  await t.stop();
});

const refresh = (refreshToken: string, clientId: string) =>
  postForm(`${t.config.publicUrl}/oauth/token`, { grant_type: "refresh_token", refresh_token: refreshToken, client_id: clientId });

describe("refresh-token rotation under concurrency", () => {
  test("20 parallel refreshes with one refresh token: exactly one succeeds, the rest get invalid_grant", async () => {
    const tokens = await obtainTokens(t.config.publicUrl);
    const responses = await Promise.all(Array.from({ length: 20 }, () => refresh(tokens.refreshToken, tokens.clientId)));
    const bodies = await Promise.all(responses.map((r) => r.json()));
    const statuses = responses.map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(1);
    expect(statuses.filter((s) => s === 400)).toHaveLength(19);
    expect(bodies.filter((b) => b.error === "invalid_grant")).toHaveLength(19);

    // The winner's pair works: its refresh token rotates once more.
    const winner = bodies.find((b) => b.access_token)!;
    expect((await refresh(winner.refresh_token, tokens.clientId)).status).toBe(200);
  });
});

describe("rate limits per client address", () => {
  test("registration and token floods get 429 with Retry-After", async () => {
    const attempts = await Promise.all(
      Array.from({ length: 80 }, () =>
        fetch(`${t.config.publicUrl}/oauth/register`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ redirect_uris: ["http://localhost/cb"], token_endpoint_auth_method: "none" }),
        }),
      ),
    );
    const limited = attempts.filter((r) => r.status === 429);
    expect(attempts.filter((r) => r.status === 201).length).toBeLessThanOrEqual(60);
    expect(limited.length).toBeGreaterThanOrEqual(20);
    const first = limited[0]!;
    expect(Number(first.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(await first.json()).toMatchObject({ error: "too_many_requests" });

    const tokenAttempts = await Promise.all(Array.from({ length: 70 }, () => refresh("fmb_rt_x", "fmb_client_x")));
    expect(tokenAttempts.some((r) => r.status === 429 && r.headers.get("retry-after") !== null)).toBe(true);
  });
});

// GET /oauth/authorize writes a row per consent page: it is rate-limited per address and per
// client, and one browser keeps at most MAX_PENDING_PER_BROWSER sign-ins in progress.
import { afterEach, describe, expect, test } from "bun:test";
import { count } from "drizzle-orm";
import { s256Challenge } from "../../src/oauth/pkce.ts";
import { MAX_PENDING_PER_BROWSER } from "../../src/oauth/handlers/authorize.ts";
import { authorizations } from "../../src/store/schema.ts";
import type { SqliteStore } from "../../src/store/sqlite-store.ts";
import type { RateLimitPolicy } from "../../src/oauth/rate-limit.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { parseConsentForm } from "../../src/testing/oauth-client.ts";

let t: TestBroker | undefined;
afterEach(async () => {
  await t?.stop();
  t = undefined;
});

async function brokerWithClient(rateLimit: RateLimitPolicy, env: Record<string, string> = {}) {
  t = await startTestBroker({ env, broker: { rateLimit } });
  const base = t.config.publicUrl;
  const registered = await fetch(`${base}/oauth/register`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-forwarded-for": "192.0.2.250" },
    body: JSON.stringify({ redirect_uris: ["http://127.0.0.1:40000/cb"], token_endpoint_auth_method: "none" }),
  });
  const { client_id } = (await registered.json()) as { client_id: string };
  const url = new URL(`${base}/oauth/authorize`);
  for (const [name, value] of Object.entries({
    client_id,
    redirect_uri: "http://127.0.0.1:40000/cb",
    response_type: "code",
    code_challenge: s256Challenge("v".repeat(43)),
    code_challenge_method: "S256",
    state: "st",
  })) url.searchParams.set(name, value);
  const store = t.broker.store as SqliteStore;
  return { url, rows: () => store.db.select({ n: count() }).from(authorizations).get()!.n };
}

/** Runs `total` calls, `parallel` at a time, and returns every answer's status. */
async function inParallel(total: number, parallel: number, call: (i: number) => Promise<Response>): Promise<number[]> {
  const statuses: number[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < total) {
        const response = await call(next++);
        await response.arrayBuffer();
        statuses.push(response.status);
      }
    }),
  );
  return statuses;
}

describe("GET /oauth/authorize", () => {
  test("5,000 requests from one browser keep at most its cap of sign-ins in progress, the newest", async () => {
    const { url, rows } = await brokerWithClient({ burst: 100_000, perSecond: 1000 });
    const first = await fetch(url);
    const cookie = first.headers.get("set-cookie")!.split(";")[0]!;
    await first.arrayBuffer();
    const statuses = await inParallel(4_999, 16, () => fetch(url, { headers: { cookie } }));
    expect(statuses.filter((status) => status === 200)).toHaveLength(4_999);
    expect(rows()).toBe(MAX_PENDING_PER_BROWSER);

    // The newest page still works: its sign-in is one of those kept.
    const newest = await fetch(url, { headers: { cookie } });
    const form = parseConsentForm(await newest.text());
    const allowed = await fetch(url, {
      method: "POST",
      redirect: "manual",
      headers: { cookie, "content-type": "application/x-www-form-urlencoded", "sec-fetch-site": "same-origin" },
      body: new URLSearchParams({ authorization_id: form.authorizationId, csrf_token: form.csrfToken, decision: "allow" }),
    });
    expect(allowed.status).toBe(303);
  }, 60_000);

  test("5,000 requests from one address without a cookie stop at the address's burst", async () => {
    const { url, rows } = await brokerWithClient({ burst: 30, perSecond: 0.0001 });
    const statuses = await inParallel(5_000, 16, () => fetch(url));
    expect(statuses.filter((status) => status === 200)).toHaveLength(30);
    expect(statuses.filter((status) => status === 429)).toHaveLength(4_970);
    expect(rows()).toBe(30);
    const refused = await fetch(url);
    expect(refused.status).toBe(429);
    expect(refused.headers.get("content-type")).toContain("text/html");
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
  }, 60_000);

  test("one client's requests from many addresses stop at the client's own bucket", async () => {
    const { url, rows } = await brokerWithClient({ burst: 2, perSecond: 0.0001 }, { BROKER_TRUSTED_PROXIES: "127.0.0.1,::1" });
    const statuses = await inParallel(25, 1, (i) => fetch(url, { headers: { "x-forwarded-for": `198.51.100.${i + 1}` } }));
    // Each address is within its own burst of 2; the client's bucket holds ten addresses' worth.
    expect(statuses).toEqual([...Array(20).fill(200), ...Array(5).fill(429)]);
    expect(rows()).toBe(20);
  });
});

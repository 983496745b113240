// The metrics scraped from a real broker while real sessions run (stand-in children): each figure moves by
// what the action did, the endpoints are where the configuration says and nowhere else, and no label is an id or a token.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, openSession, postMcp } from "../helpers/mcp.ts";
import { modernRequest, onlyMessage, postModern, retryOf } from "../helpers/modern-client.ts";
import { textOf } from "../helpers/mcp.ts";
import { obtainTokens, postForm, type ObtainedTokens } from "../../src/testing/oauth-client.ts";
import { labelValues, parseExposition, valueOf, type Sample } from "../helpers/prometheus.ts";
import { waitWhile } from "../helpers/promises.ts";

const METRICS_TOKEN = crypto.randomUUID().replaceAll("-", "");

describe("metrics during real sessions", () => {
  let t: TestBroker;
  const sessionIds: string[] = [];
  const signIns: ObtainedTokens[] = [];

  beforeAll(async () => {
    t = await startTestBroker({
      env: {
        BROKER_CHILD_COMMAND: childCommand(`--metrics-${crypto.randomUUID()}`),
        BROKER_METRICS_ADDR: "127.0.0.1:0",
        BROKER_METRICS_TOKEN: METRICS_TOKEN,
        BROKER_MAX_SESSIONS_PER_USER: "2",
      },
      // A replayed refresh token counts as theft at once.
      broker: { lifetimes: { refreshReuseGraceMs: 0 } },
    });
  });
  afterAll(async () => {
    await t.stop();
  });

  const scrape = async (): Promise<Sample[]> => {
    const response = await fetch(`${t.broker.metricsUrl}/metrics`);
    expect(response.status).toBe(200);
    return parseExposition(await response.text());
  };
  /** How much each named sample moved while `action` ran. */
  const moved = async (action: () => Promise<unknown>, ...watched: [string, Record<string, string>?][]): Promise<number[]> => {
    const before = await scrape();
    await action();
    const after = await scrape();
    return watched.map(([name, labels]) => valueOf(after, name, labels) - valueOf(before, name, labels));
  };
  const callEcho = (token: string, sessionId: string) =>
    postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "echo", arguments: { text: "hi" } } }, { "mcp-session-id": sessionId }).then((r) => r.text());

  test("on the main listener /metrics needs the token: none or another is 401, the token gets the same text as the metrics listener", async () => {
    const main = `${t.config.publicUrl}/metrics`;
    expect((await fetch(main)).status).toBe(401);
    const wrong = await fetch(main, { headers: { authorization: `Bearer ${METRICS_TOKEN.slice(0, -1)}x` } });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get("www-authenticate")).toBe('Bearer realm="metrics"');
    const right = await fetch(main, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
    expect(right.status).toBe(200);
    expect(right.headers.get("content-type")).toStartWith("text/plain; version=0.0.4");
    const text = await right.text();
    expect(text).toContain("# TYPE fmb_child_exits_total counter");
    expect(text).toContain("process_resident_memory_bytes");
    expect((await fetch(`${t.broker.metricsUrl}/other`)).status).toBe(404);
  });

  test("a sign-in counts one token issued (authorization_code) and its OAuth requests by endpoint and status", async () => {
    t.forgejo.setCurrentUser("alice");
    const [issued, tokenOk, registered, callback] = await moved(
      async () => signIns.push(await obtainTokens(t.config.publicUrl)),
      ["fmb_tokens_issued_total", { grant_type: "authorization_code" }],
      ["fmb_oauth_requests_total", { endpoint: "token", status: "200" }],
      ["fmb_oauth_requests_total", { endpoint: "register", status: "201" }],
      ["fmb_oauth_requests_total", { endpoint: "callback", status: "302" }],
    );
    expect([issued, tokenOk, registered, callback]).toEqual([1, 1, 1, 1]);
  });

  test("a session start counts one start, one legacy session, one child with its memory; a call counts one request and one round trip", async () => {
    const token = signIns[0]!.accessToken;
    const [starts, startTimes, initializes] = await moved(
      async () => sessionIds.push(await openSession(t.mcpUrl, token)),
      ["fmb_child_starts_total", { result: "ok" }],
      ["fmb_child_start_seconds_count"],
      ["fmb_mcp_requests_total", { era: "legacy", method: "initialize", outcome: "ok" }],
    );
    expect([starts, startTimes, initializes]).toEqual([1, 1, 1]);
    const now = await scrape();
    expect(valueOf(now, "fmb_sessions", { era: "legacy" })).toBe(1);
    expect(valueOf(now, "fmb_children")).toBe(1);
    expect(valueOf(now, "fmb_child_rss_bytes_count")).toBe(1);
    // A bun child in its sandbox holds megabytes, not bytes.
    expect(valueOf(now, "fmb_child_rss_bytes_sum")).toBeGreaterThan(5 * 1024 * 1024);

    const [calls, roundTrips, unknown] = await moved(
      async () => {
        expect(await callEcho(token, sessionIds[0]!)).toContain("hi");
        await postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: 8, method: "vendor/secret-method-name", params: {} }, { "mcp-session-id": sessionIds[0]! }).then((r) => r.text());
      },
      ["fmb_mcp_requests_total", { era: "legacy", method: "tools/call", outcome: "ok" }],
      ["fmb_mcp_request_seconds_count", { era: "legacy", method: "tools/call" }],
      ["fmb_mcp_requests_total", { era: "legacy", method: "other", outcome: "error" }],
    );
    expect([calls, roundTrips, unknown]).toEqual([1, 1, 1]);
  });

  test("a request to a session that is gone counts as refused", async () => {
    const [refused] = await moved(
      () => postMcp(t.mcpUrl, signIns[0]!.accessToken, { jsonrpc: "2.0", id: 9, method: "tools/list" }, { "mcp-session-id": "0".repeat(48) }).then((r) => r.text()),
      ["fmb_mcp_requests_total", { era: "legacy", method: "tools/list", outcome: "refused" }],
    );
    expect(refused).toBe(1);
  });

  test("a session beyond the user's cap counts one eviction by the user cap and one exit evicted; a DELETE one exit deleted", async () => {
    const token = signIns[0]!.accessToken;
    sessionIds.push(await openSession(t.mcpUrl, token));
    const [evictedByUser, evictedExits, starts] = await moved(
      async () => sessionIds.push(await openSession(t.mcpUrl, token)),
      ["fmb_session_evictions_total", { cap: "user" }],
      ["fmb_child_exits_total", { reason: "evicted" }],
      ["fmb_child_starts_total", { result: "ok" }],
    );
    expect([evictedByUser, evictedExits, starts]).toEqual([1, 1, 1]);

    const [deleted] = await moved(
      () => fetch(t.mcpUrl, { method: "DELETE", headers: { authorization: `Bearer ${token}`, "mcp-session-id": sessionIds.at(-1)! } }),
      ["fmb_child_exits_total", { reason: "deleted" }],
    );
    expect(deleted).toBe(1);
    // The two children ended have exited: the gauge follows the processes, not the decisions.
    await waitWhile(async () => valueOf(await scrape(), "fmb_children") !== 1, 100, 50);
    expect(valueOf(await scrape(), "fmb_children")).toBe(1);
    expect(valueOf(await scrape(), "fmb_sessions", { era: "legacy" })).toBe(1);
  });

  test("a refresh counts a token issued (refresh_token); replaying the spent refresh token counts one reuse", async () => {
    const { clientId, refreshToken } = signIns[0]!;
    const refresh = () => postForm(`${t.config.publicUrl}/oauth/token`, { grant_type: "refresh_token", refresh_token: refreshToken, client_id: clientId });
    const [issued, reuse] = await moved(
      async () => {
        expect((await refresh()).status).toBe(200);
        expect((await refresh()).status).toBe(400);
      },
      ["fmb_tokens_issued_total", { grant_type: "refresh_token" }],
      ["fmb_token_reuse_detected_total", { grant_type: "refresh_token" }],
    );
    expect([issued, reuse]).toEqual([1, 1]);
  });

  test("a modern call counts under era modern, with its principal as a modern session", async () => {
    t.forgejo.setCurrentUser("bob");
    const bob = await obtainTokens(t.config.publicUrl);
    signIns.push(bob);
    const [calls] = await moved(
      async () => {
        const response = await postModern(t, bob.accessToken, modernRequest(1, "tools/call", { name: "echo", arguments: { text: "modern" } }), { accept: "application/json" });
        expect(await response.text()).toContain("modern");
      },
      ["fmb_mcp_requests_total", { era: "modern", method: "tools/call", outcome: "ok" }],
    );
    expect(calls).toBe(1);
    expect(valueOf(await scrape(), "fmb_sessions", { era: "modern" })).toBe(1);
  });

  test("no label value is an id or a token used above; none appears anywhere in the scrape", async () => {
    const text = await (await fetch(`${t.broker.metricsUrl}/metrics`)).text();
    const secrets = [
      ...sessionIds,
      ...signIns.flatMap((signIn) => [signIn.accessToken, signIn.refreshToken, signIn.clientId, signIn.code, signIn.verifier]),
      METRICS_TOKEN,
      t.forgejo.clientSecret,
      "alice",
      "bob",
      "vendor/secret-method-name",
    ];
    const labels = labelValues(parseExposition(text));
    for (const secret of secrets) {
      expect(labels.has(secret)).toBe(false);
      expect(text).not.toContain(secret);
    }
    // Forgejo user ids (small numbers) may equal a status code: the broker's labels are only these bounded ones.
    const names = new Set(parseExposition(text).filter((sample) => sample.name.startsWith("fmb_")).flatMap((sample) => Object.keys(sample.labels)));
    expect([...names].sort()).toEqual(["call", "cap", "endpoint", "era", "grant_type", "le", "method", "outcome", "quantile", "reason", "result", "status"]);
  });
});

describe("the idle reap in the metrics", () => {
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker({
      env: { BROKER_CHILD_COMMAND: childCommand(`--metrics-idle-${crypto.randomUUID()}`), BROKER_METRICS_TOKEN: METRICS_TOKEN, BROKER_IDLE_TIMEOUT_S: "1" },
    });
  });
  afterAll(async () => {
    await t.stop();
  });

  test("a session left idle counts one exit reason=idle; without BROKER_METRICS_ADDR there is no metrics listener", async () => {
    expect(t.broker.metricsUrl).toBeNull();
    const scrape = async () =>
      parseExposition(await (await fetch(`${t.config.publicUrl}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).text());
    t.forgejo.setCurrentUser("alice");
    const { accessToken } = await obtainTokens(t.config.publicUrl);
    await openSession(t.mcpUrl, accessToken);
    expect(valueOf(await scrape(), "fmb_child_exits_total", { reason: "idle" })).toBe(0);
    await waitWhile(async () => valueOf(await scrape(), "fmb_child_exits_total", { reason: "idle" }) === 0, 100, 100);
    const after = await scrape();
    expect(valueOf(after, "fmb_child_exits_total", { reason: "idle" })).toBe(1);
    expect(valueOf(after, "fmb_sessions", { era: "legacy" })).toBe(0);
  }, 30_000);
});

describe("without BROKER_METRICS_ADDR, BROKER_METRICS_TOKEN and OTEL_EXPORTER_OTLP_ENDPOINT", () => {
  test("there is no /metrics (the main listener answers it 404 like any unknown path) and no tracing", async () => {
    const t = await startTestBroker();
    try {
      expect(t.broker.tracing.enabled).toBe(false);
      expect(t.broker.metrics).toBeNull();
      expect(t.broker.metricsUrl).toBeNull();
      expect((await fetch(`${t.config.publicUrl}/metrics`)).status).toBe(404);
      expect((await fetch(`${t.config.publicUrl}/metrics`, { headers: { authorization: "Bearer anything-at-all-here" } })).status).toBe(404);
    } finally {
      await t.stop();
    }
  });
});

describe("rate limits in the metrics", () => {
  let t: TestBroker;
  beforeAll(async () => {
    // Buckets of 2 that do not refill during the test; X-Forwarded-For from the test believed, so each request can come from its own address.
    t = await startTestBroker({
      env: { BROKER_METRICS_ADDR: "127.0.0.1:0", BROKER_TRUSTED_PROXIES: "127.0.0.1,::1" },
      broker: { rateLimit: { burst: 2, perSecond: 0.0001 } },
    });
  });
  afterAll(async () => {
    await t.stop();
  });

  const scrape = async (): Promise<Sample[]> => parseExposition(await (await fetch(`${t.broker.metricsUrl}/metrics`)).text());
  const limited = (samples: Sample[]) =>
    Object.fromEntries(["register", "token", "revoke", "authorize", "consent", "authorize_client"].map((endpoint) => [endpoint, valueOf(samples, "fmb_rate_limited_total", { endpoint })]));
  const register = (address: string) =>
    fetch(`${t.config.publicUrl}/oauth/register`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-forwarded-for": address },
      body: JSON.stringify({ redirect_uris: ["http://127.0.0.1:40000/cb"], token_endpoint_auth_method: "none" }),
    });
  /** Each refused answer's status, in order: the figures must match what the callers saw. */
  const statuses = async (requests: (() => Promise<Response>)[]) => {
    const seen: number[] = [];
    for (const request of requests) {
      const response = await request();
      await response.arrayBuffer();
      seen.push(response.status);
    }
    return seen;
  };

  test("five registrations from one address: three refused 429, counted under endpoint=register and nowhere else", async () => {
    const before = limited(await scrape());
    expect(await statuses(Array.from({ length: 5 }, () => () => register("198.51.100.7")))).toEqual([201, 201, 429, 429, 429]);
    const after = limited(await scrape());
    expect(after).toEqual({ ...before, register: before.register! + 3 });
  });

  test("three token requests from one address: the third refused, counted under endpoint=token", async () => {
    const before = limited(await scrape());
    const token = () => postForm(`${t.config.publicUrl}/oauth/token`, { grant_type: "authorization_code", code: "none", client_id: "none" }, { "x-forwarded-for": "198.51.100.8" });
    const seen = await statuses([token, token, token]);
    expect(seen.slice(0, 2)).not.toContain(429);
    expect(seen[2]).toBe(429);
    expect(limited(await scrape())).toEqual({ ...before, token: before.token! + 1 });
  });

  test("one client's consent pages from 25 addresses: the client's bucket (ten addresses' worth) refuses five, counted under endpoint=authorize_client", async () => {
    const { client_id } = (await (await register("198.51.100.9")).json()) as { client_id: string };
    const url = new URL(`${t.config.publicUrl}/oauth/authorize`);
    for (const [name, value] of Object.entries({
      client_id,
      redirect_uri: "http://127.0.0.1:40000/cb",
      response_type: "code",
      code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
      code_challenge_method: "S256",
    })) url.searchParams.set(name, value);
    const before = limited(await scrape());
    const seen = await statuses(Array.from({ length: 25 }, (_, i) => () => fetch(url, { headers: { "x-forwarded-for": `203.0.113.${i + 1}` } })));
    expect(seen).toEqual([...Array(20).fill(200), ...Array(5).fill(429)]);
    expect(limited(await scrape())).toEqual({ ...before, authorize_client: before.authorize_client! + 5 });
  });
});

describe("an MRTR round in the metrics", () => {
  let t: TestBroker;
  let token: string;
  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand(`--metrics-mrtr-${crypto.randomUUID()}`), BROKER_METRICS_ADDR: "127.0.0.1:0" } });
    token = (await obtainTokens(t.config.publicUrl)).accessToken;
  });
  afterAll(async () => {
    await t.stop();
  });

  const scrape = async (): Promise<Sample[]> => parseExposition(await (await fetch(`${t.broker.metricsUrl}/metrics`)).text());
  const figures = (samples: Sample[]): Record<string, number> => ({
    parked: valueOf(samples, "fmb_mrtr_continuations"),
    ...Object.fromEntries(["input_required", "resumed", "rejected", "expired", "full"].map((result) => [result, valueOf(samples, "fmb_mrtr_total", { result })])),
  });
  /** The child's ask_user tool asks the caller a question: the broker answers input_required and parks the call. */
  const ask = async (question: string) => {
    const original = modernRequest(1, "tools/call", { name: "ask_user", arguments: { question } }, { "io.modelcontextprotocol/clientCapabilities": { elicitation: {} } });
    const interim = await onlyMessage(await postModern(t, token, original));
    expect(interim.result.resultType).toBe("input_required");
    return { original, state: interim.result.requestState as string };
  };
  const answer = (original: ReturnType<typeof modernRequest>, state: string, text: string) =>
    postModern(t, token, retryOf(original, 2, { "elicitation-1": { action: "accept", content: { answer: text } } }, state));

  test("a question parks one continuation (gauge 1); the retry that answers it counts one resumed and the gauge goes back to 0", async () => {
    const start = figures(await scrape());
    expect(start.parked).toBe(0);
    const { original, state } = await ask("Colour?");
    expect(figures(await scrape())).toEqual({ ...start, parked: 1, input_required: start.input_required! + 1 });

    const final = await onlyMessage(await answer(original, state, "teal"));
    expect(JSON.parse(textOf(final.result))).toEqual({ action: "accept", content: { answer: "teal" } });
    expect(figures(await scrape())).toEqual({ ...start, parked: 0, input_required: start.input_required! + 1, resumed: start.resumed! + 1 });
  });

  test("a retry with its requestState tampered with counts one rejected, resumes nothing, and the call stays parked", async () => {
    const { original, state } = await ask("Shape?");
    const before = figures(await scrape());
    expect(before.parked).toBe(1);
    const tampered = state.slice(0, 10) + (state[10] === "A" ? "B" : "A") + state.slice(11);
    const refused = await answer(original, tampered, "square");
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { error: { code: number } }).error.code).toBe(-32602);
    expect(figures(await scrape())).toEqual({ ...before, rejected: before.rejected! + 1 });

    // The genuine retry still resumes it: the parked call ends, the gauge with it.
    expect((await onlyMessage(await answer(original, state, "round"))).result.resultType).toBe("complete");
    expect(figures(await scrape())).toEqual({ ...before, parked: 0, rejected: before.rejected! + 1, resumed: before.resumed! + 1 });
  });
});

// The metrics scraped from a real broker while real sessions run (stand-in children): each figure moves by
// what the action did, the endpoints are where the configuration says and nowhere else, and no label is an id or a token.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, openSession, postMcp } from "../helpers/mcp.ts";
import { modernRequest, postModern } from "../helpers/modern-client.ts";
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

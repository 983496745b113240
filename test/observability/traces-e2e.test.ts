// Traces from a real broker to a small OTLP/HTTP receiver in the test (the exporter sends OTLP JSON): a
// tools/call gives its server span under the caller's traceparent, the child round trip and store calls under that,
// a session start its child start, a sign-in its Forgejo calls; a modern child gets the traceparent in _meta; no
// attribute holds a token.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { hashToken } from "../../src/crypto.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { openSession, postMcp } from "../helpers/mcp.ts";
import { modernRequest, postModern } from "../helpers/modern-client.ts";
import { obtainTokens, type ObtainedTokens } from "../../src/testing/oauth-client.ts";

interface ReceivedSpan {
  name: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  attributes: Record<string, unknown>;
}

/** OTLP JSON carries ids as hex; base64 (the protobuf-JSON mapping) is read too. */
const hexId = (id: unknown): string => {
  const text = typeof id === "string" ? id : "";
  return /^[0-9a-f]*$/.test(text) ? text : Buffer.from(text, "base64").toString("hex");
};

function startReceiver() {
  const bodies: string[] = [];
  const spans: ReceivedSpan[] = [];
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: async (request) => {
      if (new URL(request.url).pathname !== "/v1/traces" || request.method !== "POST") return new Response(null, { status: 404 });
      const body = await request.text();
      bodies.push(body);
      const parsed = JSON.parse(body) as { resourceSpans: { scopeSpans: { spans: Record<string, unknown>[] }[] }[] };
      for (const resource of parsed.resourceSpans) {
        for (const scope of resource.scopeSpans) {
          for (const span of scope.spans) {
            const attributes = Object.fromEntries(
              ((span.attributes ?? []) as { key: string; value: Record<string, unknown> }[]).map(({ key, value }) => [key, Object.values(value)[0]]),
            );
            spans.push({ name: String(span.name), traceId: hexId(span.traceId), spanId: hexId(span.spanId), parentSpanId: hexId(span.parentSpanId ?? ""), attributes });
          }
        }
      }
      return Response.json({});
    },
  });
  return { url: `http://127.0.0.1:${server.port}`, bodies, spans, stop: () => server.stop(true) };
}

const randomHex = (bytes: number) => Buffer.from(crypto.getRandomValues(new Uint8Array(bytes))).toString("hex");

describe("traces over OTLP/HTTP", () => {
  const receiver = startReceiver();
  let t: TestBroker;
  let signIn: ObtainedTokens;
  const sessionIds: string[] = [];
  beforeAll(async () => {
    t = await startTestBroker({
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, BROKER_CHILD_COMMAND: `${process.execPath} ${join(import.meta.dir, "..", "fixtures", "meta-echo-child.ts")}` },
    });
    t.forgejo.setCurrentUser("alice");
    signIn = await obtainTokens(t.config.publicUrl);
  });
  afterAll(async () => {
    await t.stop();
    receiver.stop();
  });

  const spansOf = (traceId: string) => receiver.spans.filter((span) => span.traceId === traceId);
  const one = (spans: ReceivedSpan[], name: string) => {
    const found = spans.filter((span) => span.name === name);
    expect(found.map((span) => span.name)).toEqual([name]);
    return found[0]!;
  };

  test("one legacy tools/call: POST /mcp under the caller's traceparent, the child round trip under it", async () => {
    const sessionId = await openSession(t.mcpUrl, signIn.accessToken);
    sessionIds.push(sessionId);
    const traceId = randomHex(16);
    const callerSpan = randomHex(8);
    const response = await postMcp(t.mcpUrl, signIn.accessToken, { jsonrpc: "2.0", id: 5, method: "tools/call", params: { name: "meta", arguments: {} } }, {
      "mcp-session-id": sessionId,
      traceparent: `00-${traceId}-${callerSpan}-01`,
    });
    expect(response.status).toBe(200);
    await response.text();
    await t.broker.tracing.flush();

    const spans = spansOf(traceId);
    const server = one(spans, "POST /mcp");
    expect(server.parentSpanId).toBe(callerSpan);
    expect(server.attributes["http.response.status_code"]).toBe(200);
    const roundTrip = one(spans, "mcp tools/call");
    expect(roundTrip.parentSpanId).toBe(server.spanId);
    const identity = (await t.broker.store.findAccessIdentity(hashToken(signIn.accessToken), Date.now()))!;
    // Who called, to find one user's slow calls: the Forgejo user id and the client's public id, no token.
    expect(roundTrip.attributes).toMatchObject({
      "rpc.method": "tools/call",
      "fmb.mcp.era": "legacy",
      "fmb.mcp.outcome": "ok",
      "enduser.id": String(identity.forgejoUserId),
      "fmb.client_id": signIn.clientId,
    });
    // Nothing of this request is outside it.
    expect(spans.every((span) => span === server || span.parentSpanId === server.spanId)).toBe(true);
  });

  test("a session start with a token not seen before: the token lookup in the store and the child start under its POST /mcp", async () => {
    const traceId = randomHex(16);
    const fresh = await obtainTokens(t.config.publicUrl);
    const response = await postMcp(
      t.mcpUrl,
      fresh.accessToken,
      { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "t", version: "1" } } },
      { traceparent: `00-${traceId}-${randomHex(8)}-01` },
    );
    expect(response.status).toBe(200);
    await response.text();
    await t.broker.tracing.flush();
    const spans = spansOf(traceId);
    const server = one(spans, "POST /mcp");
    const start = one(spans, "child start");
    expect(start.parentSpanId).toBe(server.spanId);
    expect(start.attributes["fmb.child.start_result"]).toBe("ok");
    expect(one(spans, "mcp initialize").parentSpanId).toBe(server.spanId);
    expect(one(spans, "store findAccessIdentity").parentSpanId).toBe(server.spanId);
  });

  test("a sign-in's callback: the Forgejo code exchange and user lookup are spans of GET /oauth/callback", async () => {
    await t.broker.tracing.flush();
    const callback = receiver.spans.find((span) => span.name === "GET /oauth/callback")!;
    expect(callback).toBeDefined();
    const under = receiver.spans.filter((span) => span.parentSpanId === callback.spanId).map((span) => span.name);
    expect(under).toContain("forgejo code_exchange");
    expect(under).toContain("forgejo user");
  });

  test("a modern tools/call: the child gets the round trip's traceparent in _meta, in the caller's trace", async () => {
    const traceId = randomHex(16);
    const response = await postModern(t, signIn.accessToken, modernRequest(3, "tools/call", { name: "meta", arguments: {} }), {
      accept: "application/json",
      traceparent: `00-${traceId}-${randomHex(8)}-01`,
    });
    const answer = (await response.json()) as { result: { content: { text: string }[] } };
    const meta = JSON.parse(answer.result.content[0]!.text) as { traceparent?: string };
    await t.broker.tracing.flush();
    const roundTrip = one(spansOf(traceId), "mcp tools/call");
    expect(roundTrip.attributes["fmb.mcp.era"]).toBe("modern");
    expect(meta.traceparent).toBe(`00-${traceId}-${roundTrip.spanId}-01`);
  });

  test("no token, code, verifier or secret in anything exported", async () => {
    await t.broker.tracing.flush();
    const exported = receiver.bodies.join("\n");
    expect(receiver.spans.length).toBeGreaterThan(10);
    const secrets = [
      signIn.accessToken,
      signIn.refreshToken,
      signIn.code,
      signIn.verifier,
      t.forgejo.clientSecret,
      ...t.forgejo.issuedAccessTokens("alice"),
      ...t.forgejo.issuedRefreshTokens("alice"),
      ...sessionIds,
    ];
    for (const secret of secrets) expect(exported).not.toContain(secret);
    for (const span of receiver.spans) {
      for (const value of Object.values(span.attributes)) for (const secret of secrets) expect(String(value)).not.toContain(secret);
    }
  });
});

describe("tracing off", () => {
  const loadedBy = async (env: Record<string, string>) => {
    const proc = Bun.spawn([process.execPath, join(import.meta.dir, "..", "fixtures", "loaded-modules.ts"), JSON.stringify(env)], { stdout: "pipe", stderr: "inherit" });
    const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    expect(code).toBe(0);
    return JSON.parse(out.trim().split("\n").at(-1)!) as { opentelemetry: number; promClient: number };
  };

  test("a broker without OTEL_EXPORTER_OTLP_ENDPOINT and metrics loads neither the OpenTelemetry SDK nor prom-client; with them it does", async () => {
    expect(await loadedBy({})).toEqual({ opentelemetry: 0, promClient: 0 });
    const on = await loadedBy({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:9", BROKER_METRICS_TOKEN: "0123456789abcdef0123" });
    expect(on.opentelemetry).toBeGreaterThan(0);
    expect(on.promClient).toBeGreaterThan(0);
  }, 30_000);
});

// The conformance harness's bearer proxy: the token reaches /mcp and nothing else, Host and Origin
// pass as sent (the DNS-rebinding scenario depends on it), SSE streams through unbuffered, and a
// client that goes away ends the upstream request.
import { afterEach, expect, test } from "bun:test";
import { startBearerProxy, type BearerProxy } from "../../bench/lib/bearer-proxy.ts";

type Seen = { path: string; authorization: string | null; host: string | null; origin: string | null };

let stops: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const stop of stops.reverse()) await stop();
  stops = [];
});

function upstream(fetch: (request: Request) => Response | Promise<Response>) {
  const server = Bun.serve({ hostname: "127.0.0.1", port: 0, idleTimeout: 0, fetch });
  stops.push(() => server.stop(true));
  return `http://127.0.0.1:${server.port}`;
}

function proxyTo(upstreamUrl: string, label = "scenario-a"): BearerProxy {
  const proxy = startBearerProxy(() => label);
  stops.push(() => proxy.stop());
  proxy.setUpstream(upstreamUrl);
  proxy.setToken("fmb_at_test-token");
  return proxy;
}

test("the token is added to /mcp only; Host and Origin pass as the client sent them", async () => {
  const seen: Seen[] = [];
  const proxy = proxyTo(
    upstream((request) => {
      const headers = request.headers;
      seen.push({ path: new URL(request.url).pathname, authorization: headers.get("authorization"), host: headers.get("host"), origin: headers.get("origin") });
      return new Response("ok", { status: new URL(request.url).pathname === "/mcp" ? 429 : 200 });
    }),
  );
  const rebinding = { host: "evil.example.com", origin: "http://evil.example.com" };
  await fetch(`${proxy.url}/mcp`, { method: "POST", headers: rebinding, body: "{}" });
  await fetch(`${proxy.url}/oauth/token`, { method: "POST", body: "grant_type=x" });

  expect(seen).toEqual([
    { path: "/mcp", authorization: "Bearer fmb_at_test-token", ...rebinding },
    { path: "/oauth/token", authorization: null, host: new URL(proxy.url).host, origin: null },
  ]);
  expect(proxy.answers).toEqual([{ method: "POST", path: "/mcp", status: 429, label: "scenario-a" }]);
});

test("an SSE answer reaches the client event by event, and the client's cancel ends the upstream request", async () => {
  const encoder = new TextEncoder();
  let sendSecond!: () => void;
  const secondAsked = new Promise<void>((resolve) => (sendSecond = resolve));
  let upstreamAborted!: () => void;
  const aborted = new Promise<void>((resolve) => (upstreamAborted = resolve));
  const proxy = proxyTo(
    upstream((request) => {
      request.signal.addEventListener("abort", () => upstreamAborted());
      const body = new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(encoder.encode("data: first\n\n"));
          await secondAsked;
          controller.enqueue(encoder.encode("data: second\n\n"));
          // Left open: only the client's cancel can end it.
        },
      });
      return new Response(body, { headers: { "content-type": "text/event-stream" } });
    }),
  );

  const response = await fetch(`${proxy.url}/mcp`, { headers: { accept: "text/event-stream" } });
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  // The first event arrives while the upstream still holds the second back: nothing is buffered whole.
  expect(decoder.decode((await reader.read()).value)).toBe("data: first\n\n");
  sendSecond();
  expect(decoder.decode((await reader.read()).value)).toBe("data: second\n\n");
  await reader.cancel();
  await aborted;
  expect(proxy.answers).toEqual([{ method: "GET", path: "/mcp", status: 200, label: "scenario-a" }]);
});

test("a client that goes away before the answer begins ends the upstream request too", async () => {
  let received!: () => void;
  const requestArrived = new Promise<void>((resolve) => (received = resolve));
  let upstreamAborted!: () => void;
  const aborted = new Promise<void>((resolve) => (upstreamAborted = resolve));
  const proxy = proxyTo(
    upstream((request) => {
      received();
      // A slow call: no answer until the caller is gone.
      return new Promise<Response>((resolve) =>
        request.signal.addEventListener("abort", () => {
          upstreamAborted();
          resolve(new Response(null, { status: 499 }));
        }),
      );
    }),
  );

  const client = new AbortController();
  const call = fetch(`${proxy.url}/mcp`, { method: "POST", body: "{}", signal: client.signal }).catch((error: Error) => error.name);
  await requestArrived;
  client.abort();
  expect(await call).toBe("AbortError");
  await aborted;
});

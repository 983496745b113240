// A loopback reverse proxy that adds `Authorization: Bearer <token>` to every /mcp request, for clients
// that cannot send a header of their own (the MCP conformance CLI); it records the status of each answer.
//
// Everything else passes through as sent (Host and Origin included, as Caddy or nginx would), bodies and
// SSE answers stream both ways, and a client that goes away aborts the upstream request.

export interface ProxiedAnswer {
  method: string;
  path: string;
  status: number;
  /** What `label()` said when the answer arrived (the conformance scenario running then). */
  label: string;
}

export interface BearerProxy {
  /** http://127.0.0.1:PORT: what clients, and the broker's BROKER_PUBLIC_URL, use. */
  url: string;
  /** Answers to /mcp requests, in arrival order. */
  answers: ProxiedAnswer[];
  /** Where requests go (http://127.0.0.1:BROKER_PORT): known only once the broker, configured with `url`, listens. */
  setUpstream(upstreamUrl: string): void;
  /** The token added to /mcp requests: known only after a sign-in through this proxy. */
  setToken(accessToken: string): void;
  stop(): Promise<void>;
}

export function startBearerProxy(label: () => string): BearerProxy {
  let upstream: string | undefined;
  let token: string | undefined;
  const answers: ProxiedAnswer[] = [];
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    // An SSE stream may be quiet for longer than Bun's 10 s default; the broker has its own heartbeat.
    idleTimeout: 0,
    async fetch(request) {
      if (!upstream) return new Response("proxy has no upstream yet", { status: 503 });
      const url = new URL(request.url);
      const headers = new Headers(request.headers);
      // fetch would decompress a compressed answer and the client would get it still labelled compressed.
      headers.delete("accept-encoding");
      const isMcp = url.pathname === "/mcp";
      if (isMcp && token !== undefined) headers.set("authorization", `Bearer ${token}`);
      const hasBody = request.method !== "GET" && request.method !== "HEAD";
      const response = await fetch(upstream + url.pathname + url.search, {
        method: request.method,
        headers,
        body: hasBody ? request.body : undefined,
        redirect: "manual",
        signal: request.signal,
      });
      if (isMcp) answers.push({ method: request.method, path: url.pathname, status: response.status, label: label() });
      return response;
    },
  });
  return {
    url: `http://127.0.0.1:${server.port}`,
    answers,
    setUpstream(upstreamUrl) {
      upstream = upstreamUrl.replace(/\/+$/, "");
    },
    setToken(accessToken) {
      token = accessToken;
    },
    async stop() {
      await server.stop(true);
    },
  };
}

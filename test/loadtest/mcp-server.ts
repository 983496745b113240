// A real Streamable HTTP MCP server for the load generator's tests: the official SDK's
// transport served by Bun.serve, with an echo tool, a failing tool and countable DELETEs.

import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { WebStandardStreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js";
import { z } from "zod";

export interface TestServer {
  url: string;
  /** Requests by method, and DELETEs the transport accepted (a session really ended). */
  counts: { initialize: number; toolCalls: number; deletes: number; sessionsClosed: number };
  /** Sessions the server still holds. */
  openSessions(): number;
  stop(): Promise<void>;
}

export interface TestServerOptions {
  /** JSON replies instead of SSE streams. */
  json: boolean;
  /** When set, every request without `Authorization: Bearer <token>` is answered 401. */
  token?: string;
  /** No Mcp-Session-Id at all: a fresh server and transport per request, as the SDK does it. */
  stateless?: boolean;
}

export function startMcpServer(options: TestServerOptions): TestServer {
  const transports = new Map<string, WebStandardStreamableHTTPServerTransport>();
  const counts = { initialize: 0, toolCalls: 0, deletes: 0, sessionsClosed: 0 };

  const newServer = () => {
    const server = new McpServer({ name: "loadtest-fixture", version: "1.0.0" }, { capabilities: { logging: {} } });
    server.registerTool("echo", { inputSchema: { text: z.string() } }, async ({ text }, extra) => {
      counts.toolCalls++;
      // A notification ahead of the response: the SSE reader must skip it.
      await extra.sendNotification({ method: "notifications/message", params: { level: "info", data: "echoing" } });
      return { content: [{ type: "text", text }] };
    });
    server.registerTool("hang", { inputSchema: {} }, async () => {
      counts.toolCalls++;
      return new Promise<never>(() => {});
    });
    server.registerTool("fail", { inputSchema: {} }, async () => {
      counts.toolCalls++;
      return { content: [{ type: "text", text: "this tool always fails" }], isError: true };
    });
    return server;
  };

  const http = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      if (options.token !== undefined && request.headers.get("authorization") !== `Bearer ${options.token}`) {
        return new Response("unauthorized", {
          status: 401,
          headers: { "www-authenticate": 'Bearer resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource"' },
        });
      }
      const sessionId = request.headers.get("mcp-session-id");
      if (request.method === "DELETE") counts.deletes++;
      // The SDK turns every tool failure into an isError result; this tool name gets a real JSON-RPC error.
      if (request.method === "POST") {
        const message = await request.clone().json();
        if (message?.params?.name === "rpc-error") {
          return Response.json({ jsonrpc: "2.0", id: message.id, error: { code: -32603, message: "deliberate" } });
        }
      }
      if (options.stateless) {
        const transport = new WebStandardStreamableHTTPServerTransport({ enableJsonResponse: options.json });
        await newServer().connect(transport);
        return transport.handleRequest(request);
      }
      if (sessionId !== null) {
        const transport = transports.get(sessionId);
        if (transport === undefined) return new Response("unknown session", { status: 404 });
        return transport.handleRequest(request);
      }
      counts.initialize++;
      const transport = new WebStandardStreamableHTTPServerTransport({
        sessionIdGenerator: () => crypto.randomUUID(),
        enableJsonResponse: options.json,
        onsessioninitialized: (id) => void transports.set(id, transport),
        onsessionclosed: (id) => {
          counts.sessionsClosed++;
          transports.delete(id);
        },
      });
      await newServer().connect(transport);
      return transport.handleRequest(request);
    },
  });

  return {
    url: `http://127.0.0.1:${http.port}/mcp`,
    counts,
    openSessions: () => transports.size,
    async stop() {
      for (const transport of transports.values()) await transport.close();
      await http.stop(true);
    },
  };
}

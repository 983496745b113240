// bench-echo-ts: the benchmark's small stdio MCP child, run by bun, the same for every target.
// Newline-delimited JSON-RPC: initialize, notifications (ignored), tools/list, ping, and
// tools/call "echo" (answers arguments.text) or "progress" (5 notifications/progress when the
// request carries _meta.progressToken, then the answer). No SDK, so start-up and per-call cost
// stay small and the same across targets. Exits when stdin ends.

export {}; // a module, so the top-level for await is allowed

const KNOWN_VERSIONS = new Set(["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"]);
const TOOLS = [
  { name: "echo", description: "Answers its text", inputSchema: { type: "object", properties: { text: { type: "string" } } } },
  { name: "progress", description: "Sends 5 progress notifications, then answers", inputSchema: { type: "object", properties: {} } },
];

interface RpcMessage {
  jsonrpc: "2.0";
  id?: string | number | null;
  method?: string;
  params?: {
    protocolVersion?: string;
    name?: string;
    arguments?: { text?: unknown };
    _meta?: { progressToken?: string | number };
  };
}

const out = Bun.stdout.writer();
const send = (message: unknown) => {
  out.write(JSON.stringify(message) + "\n");
  out.flush();
};

function handle(message: RpcMessage): void {
  const { id, method, params } = message;
  if (method === undefined || id === undefined) return; // a notification or a response
  switch (method) {
    case "initialize": {
      const asked = params?.protocolVersion;
      send({
        jsonrpc: "2.0",
        id,
        result: {
          protocolVersion: asked !== undefined && KNOWN_VERSIONS.has(asked) ? asked : "2025-11-25",
          capabilities: { tools: {} },
          serverInfo: { name: "bench-echo-ts", version: "0.1.0" },
        },
      });
      return;
    }
    case "tools/list":
      send({ jsonrpc: "2.0", id, result: { tools: TOOLS } });
      return;
    case "ping":
      send({ jsonrpc: "2.0", id, result: {} });
      return;
    case "tools/call":
      if (params?.name === "echo") {
        const text = params.arguments?.text;
        send({ jsonrpc: "2.0", id, result: { content: [{ type: "text", text: typeof text === "string" ? text : "" }] } });
      } else if (params?.name === "progress") {
        const token = params._meta?.progressToken;
        if (token !== undefined) {
          for (let progress = 1; progress <= 5; progress++) {
            send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: token, progress, total: 5 } });
          }
        }
        send({ jsonrpc: "2.0", id, result: { content: [{ type: "text", text: "done" }] } });
      } else {
        send({ jsonrpc: "2.0", id, error: { code: -32602, message: "Unknown tool" } });
      }
      return;
    default:
      send({ jsonrpc: "2.0", id, error: { code: -32601, message: "Method not found" } });
  }
}

const decoder = new TextDecoder();
let buffer = "";
for await (const chunk of Bun.stdin.stream()) {
  buffer += decoder.decode(chunk, { stream: true });
  let newline: number;
  while ((newline = buffer.indexOf("\n")) >= 0) {
    const line = buffer.slice(0, newline).trim();
    buffer = buffer.slice(newline + 1);
    if (line === "") continue;
    let message: RpcMessage;
    try {
      message = JSON.parse(line) as RpcMessage;
    } catch {
      send({ jsonrpc: "2.0", id: null, error: { code: -32700, message: "Parse error" } });
      continue;
    }
    handle(message);
  }
}
process.exit(0);

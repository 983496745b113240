// A plain-fetch MCP conversation for checking a target before measuring it: initialize, one echo
// call, one progress call (counting the notifications/progress that arrive before its answer),
// DELETE. Returns a one-line reason when the endpoint does not speak MCP, so the harness can say
// "unavailable: <reason>" instead of producing numbers.
import { PROTOCOL_VERSION } from "../../src/loadtest/session.ts";

interface Message {
  id?: unknown;
  method?: string;
  result?: Record<string, unknown>;
  error?: { code?: unknown; message?: unknown };
}

export type ProbeResult = { ok: true; progressNotifications: number; serverName: string } | { ok: false; reason: string };

function parseSse(text: string): Message[] {
  const messages: Message[] = [];
  for (const event of text.split(/\r?\n\r?\n/)) {
    const data = event
      .split(/\r?\n/)
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
      .join("\n");
    if (data !== "") messages.push(JSON.parse(data) as Message);
  }
  return messages;
}

export async function probeMcp(url: string, token: string | undefined, timeoutMs = 10_000): Promise<ProbeResult> {
  const headers: Record<string, string> = { "content-type": "application/json", accept: "application/json, text/event-stream" };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const post = async (body: unknown, what: string): Promise<Message[]> => {
    const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body), signal: AbortSignal.timeout(timeoutMs) });
    const text = await response.text();
    if (response.status < 200 || response.status > 299) {
      throw new Error(`${what}: POST ${new URL(url).pathname} answered ${response.status}${text ? `: ${text.replace(/\s+/g, " ").slice(0, 160)}` : ""}`);
    }
    const session = response.headers.get("mcp-session-id");
    if (session !== null) headers["mcp-session-id"] = session;
    if (text === "") return [];
    const type = response.headers.get("content-type") ?? "";
    try {
      return type.startsWith("text/event-stream") ? parseSse(text) : [JSON.parse(text) as Message];
    } catch {
      throw new Error(`${what}: the reply is not JSON-RPC (${type}): ${text.slice(0, 160)}`);
    }
  };
  try {
    const init = await post(
      { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: "bench-probe", version: "0.1.0" } } },
      "initialize",
    );
    const initResult = init.find((m) => m.id === 1)?.result;
    if (typeof initResult?.protocolVersion !== "string") return { ok: false, reason: `initialize: no InitializeResult in ${JSON.stringify(init).slice(0, 160)}` };
    headers["mcp-protocol-version"] = initResult.protocolVersion;
    const serverName = String((initResult.serverInfo as { name?: unknown } | undefined)?.name ?? "?");
    await post({ jsonrpc: "2.0", method: "notifications/initialized" }, "notifications/initialized");
    const echo = await post({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "echo", arguments: { text: "probe" } } }, "tools/call echo");
    const echoed = (echo.find((m) => m.id === 2)?.result?.content as { text?: string }[] | undefined)?.[0]?.text;
    if (echoed !== "probe") return { ok: false, reason: `tools/call echo answered ${JSON.stringify(echo).slice(0, 160)}` };
    const progress = await post(
      { jsonrpc: "2.0", id: 3, method: "tools/call", params: { name: "progress", arguments: {}, _meta: { progressToken: "bench" } } },
      "tools/call progress",
    );
    const progressNotifications = progress.filter((m) => m.method === "notifications/progress").length;
    if (headers["mcp-session-id"] !== undefined) {
      await fetch(url, { method: "DELETE", headers, signal: AbortSignal.timeout(timeoutMs) }).then((r) => r.body?.cancel());
    }
    return { ok: true, progressNotifications, serverName };
  } catch (error) {
    return { ok: false, reason: error instanceof Error ? error.message : String(error) };
  }
}

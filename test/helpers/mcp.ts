// What the /mcp tests share: the stand-in child as BROKER_CHILD_COMMAND, an official SDK client signed
// in through the OAuth flow, raw JSON-RPC posts, and a look at the process table for leftover children.
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";
import type { TestBroker } from "./broker.ts";
import type { FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { TestOAuthProvider } from "../../src/testing/oauth-client.ts";

export const CHILD_SCRIPT = join(import.meta.dir, "..", "..", "src", "testing", "mcp-child.ts");

/** The stand-in child; `marker` is an ignored argument that makes its processes findable in `ps`. */
export function childCommand(marker = ""): string {
  return `${process.execPath} ${CHILD_SCRIPT}${marker ? ` ${marker}` : ""}`;
}

export interface SignedInClient {
  client: Client;
  transport: StreamableHTTPClientTransport;
  provider: TestOAuthProvider;
  /** What the elicitation handler was asked. */
  elicitations: string[];
}

/**
 * Connects the SDK client as `login`: the first connect meets 401, the SDK runs discovery, registration
 * and the browser flow (walked headlessly), then finishAuth and a fresh transport connect for real.
 */
export async function connectAs(t: Pick<TestBroker, "mcpUrl"> & { forgejo: Pick<FakeForgejo, "setCurrentUser"> }, login: string, answer = "blue"): Promise<SignedInClient> {
  t.forgejo.setCurrentUser(login);
  const provider = new TestOAuthProvider();
  const elicitations: string[] = [];
  const makeClient = () => {
    const client = new Client({ name: "e2e", version: "1.0.0" }, { capabilities: { elicitation: {} } });
    client.setRequestHandler(ElicitRequestSchema, async (request) => {
      elicitations.push(String(request.params.message));
      return { action: "accept", content: { answer } };
    });
    return client;
  };
  const first = new StreamableHTTPClientTransport(new URL(t.mcpUrl), { authProvider: provider });
  let refused: unknown;
  try {
    await makeClient().connect(first);
  } catch (error) {
    refused = error;
  }
  if (!(refused instanceof UnauthorizedError)) throw new Error(`expected the first connect to need authorization, got ${String(refused)}`);
  const code = provider.landing?.searchParams.get("code");
  if (!code) throw new Error(`the browser flow landed without a code: ${provider.landing?.href}`);
  await first.finishAuth(code);
  const transport = new StreamableHTTPClientTransport(new URL(t.mcpUrl), { authProvider: provider });
  const client = makeClient();
  await client.connect(transport);
  return { client, transport, provider, elicitations };
}

export const INITIALIZE = {
  jsonrpc: "2.0",
  id: 1,
  method: "initialize",
  params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "raw", version: "1" } },
};

/** A POST of one message (or any body) to /mcp with the usual headers, which `headers` can override or drop (null). */
export function mcpPost(url: string, token: string, body: unknown, headers: Record<string, string | null> = {}): Request {
  const merged: Record<string, string | null> = {
    authorization: `Bearer ${token}`,
    "content-type": "application/json",
    accept: "application/json, text/event-stream",
    ...headers,
  };
  return new Request(url, {
    method: "POST",
    headers: Object.fromEntries(Object.entries(merged).filter((entry): entry is [string, string] => entry[1] !== null)),
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** Sends mcpPost's request over the network. */
export function postMcp(url: string, token: string, body: unknown, headers: Record<string, string | null> = {}): Promise<Response> {
  return fetch(mcpPost(url, token, body, headers));
}

/** initialize + notifications/initialized with plain fetch; returns the session id. */
export async function openSession(url: string, token: string): Promise<string> {
  const response = await postMcp(url, token, INITIALIZE);
  if (response.status !== 200) throw new Error(`initialize answered ${response.status}: ${await response.text()}`);
  await response.text();
  const id = response.headers.get("mcp-session-id")!;
  const initialized = await postMcp(url, token, { jsonrpc: "2.0", method: "notifications/initialized" }, { "mcp-session-id": id });
  if (initialized.status !== 202) throw new Error(`initialized answered ${initialized.status}`);
  return id;
}

export interface ProcessRow {
  pid: number;
  ppid: number;
  pgid: number;
  stat: string;
  args: string;
}

/** Live processes whose command line contains `needle`; zombies left to PID 1 (which does not reap here) are not live. */
export async function processesMatching(needle: string): Promise<ProcessRow[]> {
  const ps = Bun.spawn(["ps", "-eo", "pid=,ppid=,pgid=,stat=,args="], { stdout: "pipe" });
  const text = await new Response(ps.stdout).text();
  await ps.exited;
  return text
    .split("\n")
    .map((line) => /^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(.*)$/.exec(line))
    .filter((match) => match !== null)
    .map((match) => ({ pid: Number(match[1]), ppid: Number(match[2]), pgid: Number(match[3]), stat: match[4]!, args: match[5]! }))
    .filter((row) => row.args.includes(needle) && !(row.stat.startsWith("Z") && row.ppid === 1));
}

/** The processes the broker started, one per child: bwrap's, or the server's unsandboxed; not what runs under them. */
export function outermost(rows: ProcessRow[]): ProcessRow[] {
  const pids = new Set(rows.map((row) => row.pid));
  return rows.filter((row) => !pids.has(row.ppid));
}

/** Opens the standalone GET stream and keeps reading it (an unread response is dropped by Bun's fetch); abort to close. */
export async function holdStandaloneStream(
  url: string,
  token: string,
  sessionId: string,
  signal: AbortSignal,
): Promise<{ status: number; text: () => string; ended: () => boolean }> {
  const response = await fetch(url, { headers: { authorization: `Bearer ${token}`, accept: "text/event-stream", "mcp-session-id": sessionId }, signal });
  let received = "";
  let ended = false;
  if (response.body !== null) {
    const reader = response.body.getReader();
    void (async () => {
      for (;;) {
        const chunk = await reader.read().catch(() => ({ done: true as const, value: undefined }));
        if (chunk.done) return void (ended = true);
        received += new TextDecoder().decode(chunk.value);
      }
    })();
  }
  return { status: response.status, text: () => received, ended: () => ended };
}

/** Whether a process with this pid still exists (signal 0 checks without sending anything). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The text of a tool result's first content item. */
export const textOf = (result: unknown) => (result as { content: { type: string; text: string }[] }).content[0]!.text;

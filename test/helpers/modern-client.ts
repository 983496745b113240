// What the modern-era (2026-07-28) tests share: the official SDK 2.x client pinned to 2026-07-28 and
// signed in as a Forgejo user, and raw modern requests with the envelope and headers the spec requires.
import { Client, StreamableHTTPClientTransport, type VersionNegotiationMode } from "@modelcontextprotocol/client";
import type { TestBroker } from "./broker.ts";
import { mcpPost } from "./mcp.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";

export const MODERN_VERSION = "2026-07-28";

export interface ModernClient {
  client: Client;
  accessToken: string;
}

/** Signs `login` in (a new grant each time) and connects the SDK client pinned to 2026-07-28 with that token. */
export async function connectModern(t: TestBroker, login: string): Promise<ModernClient> {
  t.forgejo.setCurrentUser(login);
  const { accessToken } = await obtainTokens(t.config.publicUrl);
  return { client: await modernClientWith(t, accessToken), accessToken };
}

/** The SDK 2.x client with `accessToken`, pinned to 2026-07-28 unless `mode` says otherwise. */
export async function modernClientWith(t: TestBroker, accessToken: string, mode: VersionNegotiationMode = { pin: MODERN_VERSION }): Promise<Client> {
  const client = new Client({ name: "modern-e2e", version: "1.0.0" }, { versionNegotiation: { mode } });
  await client.connect(new StreamableHTTPClientTransport(new URL(t.mcpUrl), { authProvider: { token: async () => accessToken } }));
  return client;
}

/** A modern request's body: the _meta envelope (capabilities declared, nothing else unless `meta` adds it). */
export function modernRequest(id: string | number, method: string, params: Record<string, unknown> = {}, meta: Record<string, unknown> = {}) {
  return {
    jsonrpc: "2.0",
    id,
    method,
    params: {
      ...params,
      _meta: {
        "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": { name: "raw", version: "1" },
        ...meta,
      },
    },
  };
}

/** The headers a modern request must carry, matching `body`. */
export function modernHeaders(body: ReturnType<typeof modernRequest>): Record<string, string> {
  const params = body.params as Record<string, unknown>;
  const name = params.name ?? params.uri;
  return { "mcp-protocol-version": MODERN_VERSION, "mcp-method": body.method, ...(typeof name === "string" ? { "mcp-name": name } : {}) };
}

/** A POST of a modern request with its headers (which `headers` can override or drop with null). */
export function modernPost(t: TestBroker, token: string, body: ReturnType<typeof modernRequest>, headers: Record<string, string | null> = {}): Request {
  return mcpPost(t.mcpUrl, token, body, { ...modernHeaders(body), ...headers });
}

/** Sends modernPost's request over the network. */
export function postModern(t: TestBroker, token: string, body: ReturnType<typeof modernRequest>, headers: Record<string, string | null> = {}): Promise<Response> {
  return fetch(modernPost(t, token, body, headers));
}

/** The JSON-RPC messages of an SSE answer as they arrive (a JSON answer yields its one message). */
export async function* answerMessages(response: Response): AsyncGenerator<Record<string, unknown>> {
  if (!(response.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
    yield (await response.json()) as Record<string, unknown>;
    return;
  }
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of response.body!) {
    buffered += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = buffered.indexOf("\n\n")) !== -1) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data: "))
        .map((line) => line.slice(6))
        .join("\n");
      if (data !== "") yield JSON.parse(data) as Record<string, unknown>;
    }
  }
}

/** Every message of an answer, read to its end. */
export async function allMessages(response: Response): Promise<Record<string, unknown>[]> {
  const messages: Record<string, unknown>[] = [];
  for await (const message of answerMessages(response)) messages.push(message);
  return messages;
}

/** The one message of an answer (JSON, or an SSE stream carrying only the answer); throws when there are more or none. */
export async function onlyMessage(response: Response): Promise<Record<string, any>> {
  const messages = await allMessages(response);
  if (messages.length !== 1) throw new Error(`expected one message, got ${messages.length}: ${JSON.stringify(messages)}`);
  return messages[0]!;
}

/** The MRTR retry of `original` under a new id: the same method and params, with the answers and the state. */
export function retryOf(original: ReturnType<typeof modernRequest>, id: number, inputResponses: Record<string, unknown>, requestState: string) {
  return { ...original, id, params: { ...original.params, inputResponses, requestState } };
}

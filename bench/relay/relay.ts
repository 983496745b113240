// The bench's "relay" target: a measuring reference, not a product — the least a Streamable HTTP gateway on this runtime does.
// No auth, no limits, no validation: Bun.serve, one stdio child per session, the child's lines routed back by JSON-RPC id.
//
// usage: bun bench/relay/relay.ts --port N -- <child command …>     (or RELAY_PORT=N instead of --port)
// A request's reply is application/json when the child answers straight away, or text/event-stream
// when the child sends notifications first (notifications/progress), so they reach the client.
// SIGTERM (or SIGINT) ends every child, waits for them, and exits 0.
import type { Subprocess } from "bun";

type Child = Subprocess<"pipe", "pipe", "ignore">;
type HeaderMap = Record<string, string>;

interface Waiter {
  /** The request's _meta.progressToken: its progress notifications go on its reply. */
  progressToken: unknown;
  json: HeaderMap;
  sse: HeaderMap;
  resolve: (response: Response) => void;
  /** Set once a notification came first and the reply became an event stream. */
  stream: ReadableStreamDefaultController<Uint8Array> | null;
}

interface Session {
  id: string;
  proc: Child;
  /** Requests waiting for the child's answer, by JSON-RPC id. */
  waiters: Map<unknown, Waiter>;
}

interface Message {
  id?: unknown;
  method?: unknown;
  params?: { progressToken?: unknown; _meta?: { progressToken?: unknown } };
}

const JSON_HEADERS: HeaderMap = { "content-type": "application/json" };
const SSE_HEADERS: HeaderMap = { "content-type": "text/event-stream", "cache-control": "no-cache" };
const encoder = new TextEncoder();
const sessions = new Map<string, Session>();

function usage(problem: string): never {
  console.error(`relay: ${problem}\nusage: bun bench/relay/relay.ts --port N -- <child command …>   (or RELAY_PORT=N)`);
  process.exit(2);
}

const argv = Bun.argv.slice(2);
const dash = argv.indexOf("--");
const own = dash === -1 ? argv : argv.slice(0, dash);
const childArgv = dash === -1 ? [] : argv.slice(dash + 1);
const portAt = own.indexOf("--port");
const port = Number(portAt === -1 ? process.env.RELAY_PORT : own[portAt + 1]);
if (!Number.isInteger(port) || port < 1 || port > 65535) usage("a port is needed (--port N or RELAY_PORT)");
if (childArgv.length === 0) usage("no child command after --");

/** One message on a reply: the whole JSON reply, or one SSE event once the reply is a stream. */
function deliver(waiter: Waiter, line: string, last: boolean): void {
  if (waiter.stream === null) {
    if (last) {
      waiter.resolve(new Response(line, { headers: waiter.json }));
      return;
    }
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) });
    waiter.stream = controller;
    waiter.resolve(new Response(body, { headers: waiter.sse }));
  }
  try {
    waiter.stream.enqueue(encoder.encode(`event: message\ndata: ${line}\n\n`));
    if (last) waiter.stream.close();
  } catch {
    // The client went away: nothing to tell it.
  }
}

/** A line from the child: a response goes to the request with its id; anything else rides on the reply of the request it belongs to. */
function route(session: Session, line: string): void {
  let message: Message;
  try {
    message = JSON.parse(line) as Message;
  } catch {
    return;
  }
  if (message === null || typeof message !== "object") return;
  if (message.method === undefined) {
    const waiter = session.waiters.get(message.id);
    if (waiter === undefined) return;
    session.waiters.delete(message.id);
    deliver(waiter, line, true);
    return;
  }
  // A notification (or a request to the client): on the reply whose progress token it names,
  // else on the oldest reply still open; with none open it is dropped (no GET stream here).
  const token = message.params?.progressToken;
  let target: Waiter | undefined;
  for (const waiter of session.waiters.values()) {
    if (token !== undefined && waiter.progressToken === token) {
      target = waiter;
      break;
    }
    target ??= waiter;
  }
  if (target !== undefined) deliver(target, line, false);
}

/** Fails what is still waiting on a session whose child is gone. */
function failWaiters(session: Session): void {
  for (const waiter of session.waiters.values()) {
    if (waiter.stream !== null) {
      try {
        waiter.stream.close();
      } catch {
        // already closed
      }
    } else waiter.resolve(new Response("the child exited before it answered", { status: 502 }));
  }
  session.waiters.clear();
}

async function readChild(session: Session): Promise<void> {
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for await (const chunk of session.proc.stdout) {
      buffer += decoder.decode(chunk, { stream: true });
      let start = 0;
      let newline: number;
      while ((newline = buffer.indexOf("\n", start)) !== -1) {
        if (newline > start) route(session, buffer.slice(start, newline));
        start = newline + 1;
      }
      if (start > 0) buffer = buffer.slice(start);
    }
  } catch {
    // the pipe broke: the child is gone
  }
  if (sessions.get(session.id) === session) sessions.delete(session.id);
  failWaiters(session);
}

function send(session: Session, text: string, message: Message): void {
  // The child reads one message per line: re-serialise only a body that spans lines.
  session.proc.stdin.write(text.includes("\n") ? JSON.stringify(message) : text);
  session.proc.stdin.write("\n");
  session.proc.stdin.flush();
}

function request(session: Session, text: string, message: Message, json: HeaderMap, sse: HeaderMap): Promise<Response> {
  const { promise, resolve } = Promise.withResolvers<Response>();
  session.waiters.set(message.id, { progressToken: message.params?._meta?.progressToken, json, sse, resolve, stream: null });
  try {
    send(session, text, message);
  } catch {
    session.waiters.delete(message.id);
    return Promise.resolve(new Response("the child is gone", { status: 502 }));
  }
  return promise;
}

function open(): Session {
  const proc = Bun.spawn(childArgv, { stdin: "pipe", stdout: "pipe", stderr: "ignore" });
  const session: Session = { id: crypto.randomUUID(), proc, waiters: new Map() };
  sessions.set(session.id, session);
  void readChild(session);
  return session;
}

async function close(session: Session): Promise<void> {
  sessions.delete(session.id);
  try {
    session.proc.stdin.end();
  } catch {
    // already closed
  }
  session.proc.kill("SIGTERM");
  await session.proc.exited;
}

async function post(req: Request, sessionId: string | null): Promise<Response> {
  const text = await req.text();
  let message: Message;
  try {
    message = JSON.parse(text) as Message;
  } catch {
    return new Response("the body is not JSON", { status: 400 });
  }
  if (sessionId === null) {
    if (message.method !== "initialize" || message.id === undefined) return new Response("no Mcp-Session-Id and not an initialize request", { status: 400 });
    let session: Session;
    try {
      session = open();
    } catch (error) {
      return new Response(`the child did not start: ${error instanceof Error ? error.message : String(error)}`, { status: 502 });
    }
    return request(session, text, message, { ...JSON_HEADERS, "mcp-session-id": session.id }, { ...SSE_HEADERS, "mcp-session-id": session.id });
  }
  const session = sessions.get(sessionId);
  if (session === undefined) return new Response("unknown session", { status: 404 });
  if (message.id === undefined || message.method === undefined) {
    // A notification, or the client's answer to a request of the child's.
    try {
      send(session, text, message);
    } catch {
      return new Response("the child is gone", { status: 502 });
    }
    return new Response(null, { status: 202 });
  }
  return request(session, text, message, JSON_HEADERS, SSE_HEADERS);
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  // A session's first request waits for its child to start; with many at once that can take a while.
  idleTimeout: 0,
  async fetch(req) {
    const url = req.url;
    const path = url.slice(url.indexOf("/", url.indexOf("//") + 2));
    if (path !== "/mcp") return new Response("not found", { status: 404 });
    const sessionId = req.headers.get("mcp-session-id");
    if (req.method === "POST") return post(req, sessionId);
    if (req.method === "DELETE") {
      const session = sessionId === null ? undefined : sessions.get(sessionId);
      if (session === undefined) return new Response("unknown session", { status: 404 });
      await close(session);
      return new Response(null, { status: 204 });
    }
    return new Response(null, { status: 405, headers: { allow: "POST, DELETE" } });
  },
});

let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  await Promise.all([...sessions.values()].map(close));
  await server.stop(true);
  process.exit(0);
}
process.on("SIGTERM", () => void stop());
process.on("SIGINT", () => void stop());

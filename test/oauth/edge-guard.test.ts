// What reaches the OAuth endpoints: bodies over 64 KiB (declared or chunked) refused before they
// are read, rate limits taken before any body is read, one bucket per endpoint, per client address.
import { afterEach, describe, expect, test } from "bun:test";
import { count } from "drizzle-orm";
import { clients } from "../../src/store/schema.ts";
import type { SqliteStore } from "../../src/store/sqlite-store.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { openRaw, rawRequest, type RawConnection } from "../helpers/raw-http.ts";

const REGISTRATION = JSON.stringify({ redirect_uris: ["http://localhost/cb"], token_endpoint_auth_method: "none" });

let t: TestBroker | undefined;
const open: RawConnection[] = [];
afterEach(async () => {
  for (const connection of open.splice(0)) connection.close();
  await t?.stop();
  t = undefined;
});

/** A broker whose buckets hold `burst` requests and do not refill during a test. */
async function brokerWithBurst(burst: number, env: Record<string, string> = {}): Promise<{ broker: TestBroker; port: number }> {
  t = await startTestBroker({ env, broker: { rateLimit: { burst, perSecond: 0.0001 } } });
  return { broker: t, port: t.broker.server.port! };
}

/** Request headers only: the body, if any, is the caller's to send (or not). */
function head(method: string, path: string, port: number, headers: Record<string, string>): string {
  const lines = Object.entries({ Host: `127.0.0.1:${port}`, ...headers }).map(([name, value]) => `${name}: ${value}\r\n`);
  return `${method} ${path} HTTP/1.1\r\n${lines.join("")}\r\n`;
}

async function startRequest(port: number, request: string): Promise<RawConnection> {
  const connection = await openRaw(port);
  open.push(connection);
  connection.write(request);
  return connection;
}

const register = (port: number, headers: Record<string, string> = {}) =>
  rawRequest(port, head("POST", "/oauth/register", port, { "Content-Type": "application/json", "Content-Length": String(REGISTRATION.length), Connection: "close", ...headers }) + REGISTRATION);

describe("OAuth bodies", () => {
  test("a body declared at 100 MB is refused without being sent", async () => {
    const { port } = await brokerWithBurst(100);
    const connection = await startRequest(port, head("POST", "/oauth/register", port, { "Content-Type": "application/json", "Content-Length": String(100 * 1024 * 1024) }));
    expect((await connection.response).status).toBe(413);
  });

  test.each([
    ["/oauth/register", "application/json"],
    ["/oauth/token", "application/x-www-form-urlencoded"],
    ["/oauth/revoke", "application/x-www-form-urlencoded"],
  ])("%s refuses a declared body over 64 KiB, unsent, with an OAuth error", async (path, type) => {
    const { port } = await brokerWithBurst(100);
    const connection = await startRequest(port, head("POST", path, port, { "Content-Type": type, "Content-Length": String(1024 * 1024) }));
    const response = await connection.response;
    expect(response.status).toBe(413);
    expect(JSON.parse(response.body)).toEqual({ error: "invalid_request", error_description: "The body is larger than 64 KiB" });
  });

  test.each([
    ["/oauth/register", "application/json", "application/json"],
    ["/oauth/token", "application/x-www-form-urlencoded", "application/json"],
    ["/oauth/authorize", "application/x-www-form-urlencoded", "text/html"],
  ])("%s refuses a chunked body that never ends once it passes 64 KiB", async (path, type, answerType) => {
    const { port } = await brokerWithBurst(100);
    const connection = await startRequest(port, head("POST", path, port, { "Content-Type": type, "Transfer-Encoding": "chunked" }));
    const chunk = `4000\r\n${"a".repeat(0x4000)}\r\n`;
    let settled = false;
    void connection.response.finally(() => (settled = true));
    // Keep sending 16 KiB chunks, never the last one, until the broker answers.
    for (let sent = 0; !settled && sent < 64; sent++) {
      connection.write(chunk);
      await Bun.sleep(0);
    }
    const response = await connection.response;
    expect(response.status).toBe(413);
    expect(response.headers["content-type"]).toStartWith(answerType);
  });

  test("a small chunked body is still read and parsed", async () => {
    const { port } = await brokerWithBurst(100);
    const response = await rawRequest(
      port,
      head("POST", "/oauth/register", port, { "Content-Type": "application/json", "Transfer-Encoding": "chunked", Connection: "close" }) +
        `${REGISTRATION.length.toString(16)}\r\n${REGISTRATION}\r\n0\r\n\r\n`,
    );
    expect(response.status).toBe(201);
    expect(JSON.parse(response.body).client_id).toStartWith("fmb_client_");
  });
});

describe("rate limits before bodies", () => {
  test("a flood of large registrations is refused before any of its bodies is read", async () => {
    const { broker, port } = await brokerWithBurst(3);
    for (let i = 0; i < 3; i++) expect((await register(port)).status).toBe(201);
    // Each declares 60 KiB and sends none of it: only a refusal taken before the body can answer.
    const flood = await Promise.all(
      Array.from({ length: 20 }, () => startRequest(port, head("POST", "/oauth/register", port, { "Content-Type": "application/json", "Content-Length": String(60 * 1024) }))),
    );
    const answers = await Promise.all(flood.map((connection) => connection.response));
    expect(answers.map((answer) => answer.status)).toEqual(Array(20).fill(429));
    expect(JSON.parse(answers[0]!.body).error).toBe("too_many_requests");
    expect(Number(answers[0]!.headers["retry-after"])).toBeGreaterThanOrEqual(1);
    expect((broker.broker.store as SqliteStore).db.select({ n: count() }).from(clients).get()).toEqual({ n: 3 });
    // Refused before routing, and still one log line each.
    const logged = broker.logs.map((line) => JSON.parse(line)).filter((line) => line.msg === "request" && line.path === "/oauth/register");
    expect(logged.map((line) => line.status).sort()).toEqual([...Array(3).fill(201), ...Array(20).fill(429)]);
  });

  test("revocation has its own bucket: token traffic cannot starve it", async () => {
    const { port } = await brokerWithBurst(2);
    const form = (path: string, body: string) =>
      rawRequest(port, head("POST", path, port, { "Content-Type": "application/x-www-form-urlencoded", "Content-Length": String(body.length), Connection: "close" }) + body);
    const tokenAnswers = [];
    for (let i = 0; i < 3; i++) tokenAnswers.push((await form("/oauth/token", "grant_type=refresh_token&refresh_token=x&client_id=nobody")).status);
    expect(tokenAnswers).toEqual([401, 401, 429]);
    expect((await form("/oauth/revoke", "token=x&client_id=nobody")).status).toBe(401);
  });
});

describe("the client address behind a trusted proxy", () => {
  test("with BROKER_TRUSTED_PROXIES, each forwarded client has its own bucket", async () => {
    const { port } = await brokerWithBurst(1, { BROKER_TRUSTED_PROXIES: "127.0.0.1,::1" });
    expect((await register(port, { "X-Forwarded-For": "198.51.100.1" })).status).toBe(201);
    expect((await register(port, { "X-Forwarded-For": "198.51.100.1" })).status).toBe(429);
    expect((await register(port, { "X-Forwarded-For": "198.51.100.2" })).status).toBe(201);
  });

  test("a client cannot escape its bucket by adding X-Forwarded-For hops, in one header or several", async () => {
    const { port } = await brokerWithBurst(1, { BROKER_TRUSTED_PROXIES: "127.0.0.1,::1" });
    expect((await register(port, { "X-Forwarded-For": "198.51.100.3" })).status).toBe(201);
    expect((await register(port, { "X-Forwarded-For": "6.6.6.6, 198.51.100.3" })).status).toBe(429);
    const twoHeaders = await rawRequest(
      port,
      `POST /oauth/register HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-For: 198.51.100.3\r\n` +
        `Content-Length: ${REGISTRATION.length}\r\nConnection: close\r\n\r\n${REGISTRATION}`,
    );
    expect(twoHeaders.status).toBe(429);
  });

  test("without trusted proxies, X-Forwarded-For is ignored", async () => {
    const { port } = await brokerWithBurst(1);
    expect((await register(port, { "X-Forwarded-For": "198.51.100.1" })).status).toBe(201);
    expect((await register(port, { "X-Forwarded-For": "198.51.100.2" })).status).toBe(429);
  });
});

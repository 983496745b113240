// The broker as an operator runs it: `bun src/index.ts` with configuration from the environment,
// refusing bad configuration with exit 2, serving health, and stopping cleanly on SIGTERM.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startFakeForgejo, type FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { childCommand, openSession, outermost, postMcp, processesMatching } from "../helpers/mcp.ts";
import { CookieJar, obtainTokens, parseConsentForm } from "../../src/testing/oauth-client.ts";
import { spawnBroker, startBrokerProcess, type SpawnedBroker } from "../helpers/broker-process.ts";
import { answerMessages, modernHeaders, modernRequest } from "../helpers/modern-client.ts";
import { waitWhile } from "../helpers/promises.ts";
import { watchStandaloneStream } from "../helpers/watched-stream.ts";

// Every broker a test starts is stopped after it, whether the test got that far or not.
const started: SpawnedBroker[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((broker) => broker.stop()));
});

function runBroker(env: Record<string, string>): SpawnedBroker {
  const broker = spawnBroker(env);
  started.push(broker);
  return broker;
}

describe("configuration errors", () => {
  test("every problem on its own line naming the variable and an example, exit code 2", async () => {
    const child = runBroker({ BROKER_PORT: "http", FORGEJO_URL: "not a url", BROKER_SEALING_KEY: "short", BROKER_CHILD_COMMAND: "forgejo-mcp 'unbalanced" });
    expect(await child.exited).toBe(2);
    const lines = child.stderr.lines.join("\n").trim().split("\n");
    expect(lines).toEqual([
      expect.stringMatching(/^config: BROKER_PORT: must be a whole number from 0 to 65535, got "http" \(example: BROKER_PORT=8080\)$/),
      expect.stringMatching(/^config: BROKER_SEALING_KEY: must be 32 bytes in base64/),
      expect.stringMatching(/^config: FORGEJO_URL: is not an absolute URL: "not a url" \(example: FORGEJO_URL=https:\/\//),
      expect.stringMatching(/^config: FORGEJO_CLIENT_ID: is required \(example: /),
      expect.stringMatching(/^config: FORGEJO_CLIENT_SECRET: is required \(example: /),
      expect.stringMatching(/^config: BROKER_CHILD_COMMAND: is not a command line/),
    ]);
  });

  test("a child command that does not resolve is named with the PATH searched, exit code 2", async () => {
    const child = runBroker({
      FORGEJO_URL: "https://forgejo.example.com",
      FORGEJO_CLIENT_ID: "id",
      FORGEJO_CLIENT_SECRET: "secret",
      BROKER_CHILD_COMMAND: "no-such-forgejo-mcp --transport stdio",
    });
    expect(await child.exited).toBe(2);
    expect(child.stderr.lines.join("\n").trim()).toBe(
      `config: BROKER_CHILD_COMMAND: "no-such-forgejo-mcp" is not an executable file on PATH (${process.env.PATH ?? ""})`,
    );
  });

  test("a sandbox that cannot run here (no bwrap on PATH) is one line saying how to install it or choose none, exit code 2", async () => {
    const child = runBroker({ PATH: "/nonexistent", FORGEJO_URL: "https://forgejo.example.com", FORGEJO_CLIENT_ID: "id", FORGEJO_CLIENT_SECRET: "secret", BROKER_CHILD_COMMAND: childCommand() });
    expect(await child.exited).toBe(2);
    expect(child.stderr.lines.join("\n").trim()).toBe(
      "config: BROKER_CHILD_SANDBOX=bwrap: bwrap is not on PATH (/nonexistent): install bubblewrap (apt-get install bubblewrap) or choose BROKER_CHILD_SANDBOX=none to run children unsandboxed",
    );
  });
});

describe("a running broker", () => {
  let forgejo: FakeForgejo;
  let dataDir: string;
  beforeAll(async () => {
    forgejo = await startFakeForgejo();
    dataDir = mkdtempSync(join(tmpdir(), "fmb-proc-"));
  });
  afterAll(async () => {
    await forgejo.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  let brokers = 0;
  /** `bun src/index.ts` on a free port against the stand-in, in its own data directory; resolves once listening. */
  async function startBroker(env: Record<string, string>) {
    const brokerDir = join(dataDir, `broker-${++brokers}`);
    const broker = await startBrokerProcess(forgejo, brokerDir, env);
    started.push(broker);
    return { broker, url: broker.url, dataDir: brokerDir };
  }

  test("BROKER_CHILD_SANDBOX=none starts, with a warning in its log", async () => {
    const { broker } = await startBroker({ BROKER_CHILD_COMMAND: childCommand(), BROKER_CHILD_SANDBOX: "none" });
    expect(await broker.stop()).toBe(0);
    const warnings = broker.log().split("\n").filter((line) => line.includes('"level":"warn"'));
    expect(warnings).toEqual([expect.stringContaining("children run unsandboxed (BROKER_CHILD_SANDBOX=none)")]);
  });

  test("keeps its data private, answers health, and on SIGTERM finishes an in-flight sign-in before exiting 0", async () => {
    const { broker, url, dataDir: brokerDir } = await startBroker({ BROKER_CHILD_COMMAND: childCommand() });
    const health = await fetch(`${url}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: "ok", store: "ok" });
    expect(statSync(brokerDir).mode & 0o777).toBe(0o700);
    expect(statSync(join(brokerDir, "sealing.key")).mode & 0o777).toBe(0o600);

    // Walk a sign-in up to Forgejo's redirect back, then make Forgejo slow so the callback is in flight.
    const client = await fetch(`${url}/oauth/register`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ redirect_uris: ["http://127.0.0.1:9/cb"], token_endpoint_auth_method: "none" }),
    }).then((r) => r.json());
    const jar = new CookieJar();
    const page = await fetch(`${url}/oauth/authorize?client_id=${client.client_id}&response_type=code&code_challenge_method=S256&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM`);
    jar.store(page);
    const consent = parseConsentForm(await page.text());
    const allowed = await fetch(`${url}/oauth/authorize`, {
      method: "POST",
      redirect: "manual",
      headers: { "content-type": "application/x-www-form-urlencoded", cookie: jar.header(), origin: url },
      body: new URLSearchParams({ authorization_id: consent.authorizationId, csrf_token: consent.csrfToken, decision: "allow" }),
    });
    const callback = (await fetch(allowed.headers.get("location")!, { redirect: "manual" })).headers.get("location")!;
    forgejo.delayTokenEndpoint(800);
    const exchanges = forgejo.stats.codeExchanges;
    const inFlight = fetch(callback, { redirect: "manual", headers: { cookie: jar.header() } });
    // SIGTERM once the broker's code exchange has reached Forgejo, which holds it.
    await waitWhile(() => forgejo.stats.codeExchanges === exchanges, 100, 10);
    expect(forgejo.stats.codeExchanges).toBe(exchanges + 1);
    const stopped = broker.stop();
    const response = await inFlight;
    forgejo.delayTokenEndpoint(0);
    expect(response.status).toBe(302);
    expect(new URL(response.headers.get("location")!).searchParams.get("code")).toStartWith("fmb_code_");
    expect(await stopped).toBe(0);
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();

    const stdout = broker.log();
    expect(stdout).toContain('"msg":"shutting down"');
    expect(stdout).not.toContain(forgejo.clientSecret);
  });

  test("50 sessions, streams open and a call in flight: every child is stopped and awaited, exit 0, no child left", async () => {
    const marker = `--sigterm-${crypto.randomUUID()}`;
    const { broker, url } = await startBroker({ BROKER_CHILD_COMMAND: childCommand(marker), BROKER_MAX_SESSIONS_PER_USER: "100" });
    const { accessToken } = await obtainTokens(url);
    const mcpUrl = `${url}/mcp`;

    const sessions: string[] = [];
    for (let batch = 0; batch < 5; batch++) {
      sessions.push(...(await Promise.all(Array.from({ length: 10 }, () => openSession(mcpUrl, accessToken)))));
    }
    expect(new Set(sessions).size).toBe(50);
    const children = outermost(await processesMatching(marker));
    expect(children).toHaveLength(50);
    // Each child (bwrap, which runs the server in its sandbox) leads its own process group, a child of the broker.
    for (const row of children) {
      expect(row.ppid).toBe(broker.pid);
      expect(row.pgid).toBe(row.pid);
    }

    // Standalone streams open on a few sessions (the test never closes them), and a long call in flight on another.
    const streams = await Promise.all(sessions.slice(0, 5).map((id) => watchStandaloneStream(mcpUrl, accessToken, id)));
    for (const stream of streams) expect(stream.status).toBe(200);
    const callResponse = await postMcp(
      mcpUrl,
      accessToken,
      { jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "slow_count", arguments: { n: 1000, delay_ms: 50 }, _meta: { progressToken: "p" } } },
      { "mcp-session-id": sessions[10]! },
    );
    // The SSE answer's headers come with its first progress event: the call is in flight.
    expect(callResponse.headers.get("content-type")).toBe("text/event-stream");
    const call = callResponse.text();
    expect(streams.map((stream) => stream.isOver)).toEqual([false, false, false, false, false]);

    expect(await broker.stop()).toBe(0);
    // The waiting call, longer than the drain grace, was answered with an error once the grace was over rather than left hanging.
    expect(await call).toContain('"error"');
    expect(await processesMatching(marker)).toEqual([]);
    // The open streams were ended by the broker: each response finished cleanly, not cut off with the connection.
    for (const stream of streams) {
      expect(await stream.ended).toBe("ended");
      expect(stream.text()).toStartWith(": stream open");
    }
    expect(broker.log().match(/"msg":"session ended"/g)).toHaveLength(50);
  }, 60_000);

  test("a modern (2026-07-28) call in flight at SIGTERM completes, then the broker exits 0 with no child left", async () => {
    const marker = `--sigterm-modern-${crypto.randomUUID()}`;
    const { broker, url } = await startBroker({ BROKER_CHILD_COMMAND: childCommand(marker) });
    const { accessToken } = await obtainTokens(url);
    // About 2 s of counting: well within the stop's 10 s grace for the calls in flight.
    const body = modernRequest(7, "tools/call", { name: "slow_count", arguments: { n: 20, delay_ms: 100 } }, { progressToken: "p" });
    const response = await postMcp(`${url}/mcp`, accessToken, body, modernHeaders(body));
    expect(response.headers.get("content-type")).toBe("text/event-stream");
    const messages = answerMessages(response);
    // Its first progress has come: the call runs on the principal's child.
    expect((await messages.next()).value).toMatchObject({ method: "notifications/progress", params: { progressToken: "p", progress: 1 } });
    expect(outermost(await processesMatching(marker))).toHaveLength(1);

    const stopped = broker.stop();
    let answer: Record<string, unknown> | undefined;
    for await (const message of messages) if ("id" in message) answer = message;
    expect(answer).toEqual({ jsonrpc: "2.0", id: 7, result: { content: [{ type: "text", text: "counted to 20" }], resultType: "complete" } });
    expect(await stopped).toBe(0);
    expect(await processesMatching(marker)).toEqual([]);
    // The process start, the sign-in and a 2 s call under the noise of a shared 2-core machine.
  }, 30_000);
});

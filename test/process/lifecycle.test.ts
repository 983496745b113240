// The broker as an operator runs it: `bun src/index.ts` with configuration from the environment,
// refusing bad configuration with exit 2, serving health, and stopping cleanly on SIGTERM.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startFakeForgejo, type FakeForgejo } from "../fixtures/forgejo.ts";
import { childCommand, openSession, outermost, postMcp, processesMatching } from "../helpers/mcp.ts";
import { CookieJar, obtainTokens, parseConsentForm } from "../helpers/oauth-client.ts";
import { brokerEnvFor, freePort } from "../helpers/broker.ts";
import { waitWhile } from "../helpers/promises.ts";
import { watchStandaloneStream } from "../helpers/watched-stream.ts";

const ENTRY = join(import.meta.dir, "..", "..", "src", "index.ts");

function runBroker(env: Record<string, string>) {
  return Bun.spawn([process.execPath, ENTRY], {
    env: { PATH: process.env.PATH ?? "", ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
}

async function waitForHealth(url: string, child: ReturnType<typeof runBroker>) {
  let health: Response | null = null;
  await waitWhile(async () => {
    if (child.exitCode !== null) return false;
    health = await fetch(`${url}/healthz`).then((response) => (response.ok ? response : null), () => null);
    return health === null;
  }, 100, 50);
  if (child.exitCode !== null) throw new Error(`broker exited with ${child.exitCode}: ${await new Response(child.stderr).text()}`);
  if (health === null) throw new Error("broker did not become healthy");
  return health as Response;
}

describe("configuration errors", () => {
  test("every problem on its own line naming the variable and an example, exit code 2", async () => {
    const child = runBroker({ BROKER_PORT: "http", FORGEJO_URL: "not a url", BROKER_SEALING_KEY: "short", BROKER_CHILD_COMMAND: "forgejo-mcp 'unbalanced" });
    expect(await child.exited).toBe(2);
    const lines = (await new Response(child.stderr).text()).trim().split("\n");
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
    expect((await new Response(child.stderr).text()).trim()).toBe(
      `config: BROKER_CHILD_COMMAND: "no-such-forgejo-mcp" is not an executable file on PATH (${process.env.PATH ?? ""})`,
    );
  });

  test("a sandbox that cannot run here (no bwrap on PATH) is one line saying how to install it or choose none, exit code 2", async () => {
    const child = Bun.spawn([process.execPath, ENTRY], {
      env: { PATH: "/nonexistent", FORGEJO_URL: "https://forgejo.example.com", FORGEJO_CLIENT_ID: "id", FORGEJO_CLIENT_SECRET: "secret", BROKER_CHILD_COMMAND: childCommand() },
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(await child.exited).toBe(2);
    expect((await new Response(child.stderr).text()).trim()).toBe(
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

  /** `bun src/index.ts` on a free port against the stand-in, in its own data directory; resolves once healthy. */
  async function startBrokerProcess(env: Record<string, string>) {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const brokerDir = join(dataDir, `broker-${port}`);
    const child = runBroker({ ...brokerEnvFor(forgejo, port, brokerDir), ...env });
    const health = await waitForHealth(url, child);
    return { child, url, health, dataDir: brokerDir };
  }

  test("BROKER_CHILD_SANDBOX=none starts, with a warning in its log", async () => {
    const { child } = await startBrokerProcess({ BROKER_CHILD_COMMAND: childCommand(), BROKER_CHILD_SANDBOX: "none" });
    child.kill("SIGTERM");
    expect(await child.exited).toBe(0);
    const warnings = (await new Response(child.stdout).text()).split("\n").filter((line) => line.includes('"level":"warn"'));
    expect(warnings).toEqual([expect.stringContaining("children run unsandboxed (BROKER_CHILD_SANDBOX=none)")]);
  });

  test("keeps its data private, answers health, and on SIGTERM finishes an in-flight sign-in before exiting 0", async () => {
    const { child, url, health, dataDir: brokerDir } = await startBrokerProcess({ BROKER_CHILD_COMMAND: childCommand() });
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
    child.kill("SIGTERM");
    const response = await inFlight;
    forgejo.delayTokenEndpoint(0);
    expect(response.status).toBe(302);
    expect(new URL(response.headers.get("location")!).searchParams.get("code")).toStartWith("fmb_code_");
    expect(await child.exited).toBe(0);
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();

    const stdout = await new Response(child.stdout).text();
    expect(stdout).toContain('"msg":"shutting down"');
    expect(stdout).not.toContain(forgejo.clientSecret);
  });

  test("50 sessions, streams open and a call in flight: every child is stopped and awaited, exit 0, no child left", async () => {
    const marker = `--sigterm-${crypto.randomUUID()}`;
    const { child: broker, url } = await startBrokerProcess({ BROKER_CHILD_COMMAND: childCommand(marker), BROKER_MAX_SESSIONS_PER_USER: "100" });
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

    broker.kill("SIGTERM");
    expect(await broker.exited).toBe(0);
    // The waiting call was answered with an error rather than left hanging.
    expect(await call).toContain('"error"');
    expect(await processesMatching(marker)).toEqual([]);
    // The open streams were ended by the broker: each response finished cleanly, not cut off with the connection.
    for (const stream of streams) {
      expect(await stream.ended).toBe("ended");
      expect(stream.text()).toStartWith(": stream open");
    }
    const stdout = await new Response(broker.stdout).text();
    expect(stdout.match(/"msg":"session ended"/g)).toHaveLength(50);
  }, 60_000);
});

// deploy/Caddyfile as shipped, run by the real Caddy (Debian's /usr/bin/caddy) in front of a real broker, with only
// its environment placeholders set for the test (plain HTTP on a loopback port, no admin endpoint, a temporary
// access log): SSE events pass one by one, the OAuth flow works with the issuer unchanged, the log keeps no code.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { CADDY, caddyEnv, DEPLOY_DIR, startCaddy, type RunningCaddy } from "../helpers/caddy.ts";
import { childCommand, postMcp } from "../helpers/mcp.ts";
import { answerMessages } from "../helpers/modern-client.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";

describe("caddy validate", () => {
  const caddyfiles = readdirSync(DEPLOY_DIR).filter((name) => name === "Caddyfile" || name.endsWith(".Caddyfile"));
  test("there is a Caddyfile in deploy/", () => expect(caddyfiles).toContain("Caddyfile"));
  test.each(caddyfiles)("%s is valid with its defaults", async (name) => {
    const home = mkdtempSync(join(tmpdir(), "fmb-caddy-"));
    try {
      const validate = Bun.spawn([CADDY, "validate", "--config", join(DEPLOY_DIR, name), "--adapter", "caddyfile"], { env: caddyEnv(home), stdout: "pipe", stderr: "pipe" });
      const [code, stdout, stderr] = await Promise.all([validate.exited, new Response(validate.stdout).text(), new Response(validate.stderr).text()]);
      expect({ code, valid: `${stdout}${stderr}`.includes("Valid configuration") }).toEqual({ code: 0, valid: true });
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});

test("several replicas in BROKER_UPSTREAMS become one load-balanced, health-checked reverse proxy that never buffers", async () => {
  const home = mkdtempSync(join(tmpdir(), "fmb-caddy-"));
  try {
    const adapt = Bun.spawn([CADDY, "adapt", "--config", join(DEPLOY_DIR, "Caddyfile"), "--adapter", "caddyfile"], {
      env: caddyEnv(home, { BROKER_UPSTREAMS: "10.0.0.11:8080 10.0.0.12:8080 10.0.0.13:8080" }),
      stdout: "pipe",
      stderr: "pipe",
    });
    const [code, json] = await Promise.all([adapt.exited, new Response(adapt.stdout).text()]);
    expect(code).toBe(0);
    const proxies: Record<string, unknown>[] = [];
    JSON.stringify(JSON.parse(json), (key, value) => {
      if (value?.handler === "reverse_proxy") proxies.push(value);
      return value;
    });
    expect(proxies).toHaveLength(1);
    expect(proxies[0]).toMatchObject({
      flush_interval: -1,
      upstreams: [{ dial: "10.0.0.11:8080" }, { dial: "10.0.0.12:8080" }, { dial: "10.0.0.13:8080" }],
      load_balancing: { selection_policy: { policy: "round_robin" } },
      health_checks: { active: { uri: "/healthz" }, passive: { max_fails: 1 } },
    });
    // Caddy 2.6 resends a retried POST with an empty body: no retries at all.
    const balancing = proxies[0]!.load_balancing as Record<string, unknown>;
    expect([balancing.try_duration, balancing.retries]).toEqual([undefined, undefined]);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

describe("the broker behind deploy/Caddyfile", () => {
  let t: TestBroker;
  let caddy: RunningCaddy;
  let publicUrl: string;

  beforeAll(async () => {
    const port = await freePort();
    publicUrl = `http://127.0.0.1:${port}`;
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand(), BROKER_PUBLIC_URL: publicUrl, BROKER_TRUSTED_PROXIES: "127.0.0.1" } });
    caddy = await startCaddy({ publicUrl, upstreams: [new URL(t.broker.url).host] });
  });
  afterAll(async () => {
    await caddy?.stop();
    await t?.stop();
  });

  test("the OAuth flow works through Caddy, and the issuer is the public URL, through Caddy and directly alike", async () => {
    const viaCaddy = (await (await fetch(`${publicUrl}/.well-known/oauth-authorization-server`)).json()) as Record<string, string>;
    const direct = (await (await fetch(`${t.broker.url}/.well-known/oauth-authorization-server`)).json()) as Record<string, string>;
    expect(viaCaddy.issuer).toBe(publicUrl);
    expect(direct.issuer).toBe(publicUrl);
    expect(viaCaddy.token_endpoint).toBe(`${publicUrl}/oauth/token`);

    t.forgejo.setCurrentUser("alice");
    const tokens = await obtainTokens(publicUrl);
    expect(tokens.accessToken).toStartWith("fmb_at_");
    const resource = (await (await fetch(`${publicUrl}/.well-known/oauth-protected-resource/mcp`)).json()) as Record<string, unknown>;
    expect(resource.resource).toBe(`${publicUrl}/mcp`);

    // The access log has the callback, with Forgejo's code and the state cut from it, and no code or token of the broker's.
    const log = readFileSync(caddy.accessLog, "utf8");
    const callback = log.split("\n").find((line) => line.includes("/oauth/callback"))!;
    expect(JSON.parse(callback).request.uri).toMatch(/^\/oauth\/callback\?code=REDACTED&state=REDACTED$/);
    expect(log).not.toContain(tokens.accessToken);
    expect(log).not.toContain(tokens.code);
  });

  test("an SSE answer arrives event by event: the child's question comes while its tool call waits for the test's answer", async () => {
    t.forgejo.setCurrentUser("bob");
    const { accessToken } = await obtainTokens(publicUrl);
    const mcpUrl = `${publicUrl}/mcp`;
    const initialize = await postMcp(mcpUrl, accessToken, {
      jsonrpc: "2.0",
      id: 1,
      method: "initialize",
      params: { protocolVersion: "2025-11-25", capabilities: { elicitation: {} }, clientInfo: { name: "behind-caddy", version: "1" } },
    });
    expect(initialize.status).toBe(200);
    await initialize.text();
    const session = { "mcp-session-id": initialize.headers.get("mcp-session-id")! };
    expect((await postMcp(mcpUrl, accessToken, { jsonrpc: "2.0", method: "notifications/initialized" }, session)).status).toBe(202);

    const call = await postMcp(mcpUrl, accessToken, { jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "ask_user", arguments: { question: "colour?" } } }, session);
    expect(call.headers.get("content-type")).toStartWith("text/event-stream");
    const events = answerMessages(call);
    // The tool waits for this question's answer, which only the test can give: a buffering proxy would never pass it on.
    const question = (await events.next()).value as { id: number; method: string };
    expect(question.method).toBe("elicitation/create");

    const answered = await postMcp(mcpUrl, accessToken, { jsonrpc: "2.0", id: question.id, result: { action: "accept", content: { answer: "teal" } } }, session);
    expect(answered.status).toBe(202);
    const result = (await events.next()).value as { id: number; result: { content: { text: string }[] } };
    expect(result.id).toBe(2);
    expect(result.result.content[0]!.text).toContain("teal");
  });
});

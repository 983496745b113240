// A request for a session another live replica owns, with no, an unknown or a revoked bearer token: the
// receiving replica refuses it itself (401 with its RFC 6750 challenge), and the owner never sees it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import type { RunningBroker } from "../../src/broker.ts";
import { obtainTokens, postForm } from "../../src/testing/oauth-client.ts";
import type { TestBroker } from "../helpers/broker.ts";
import { openSession, postMcp } from "../helpers/mcp.ts";
import { parseExposition, valueOf } from "../helpers/prometheus.ts";
import { waitWhile } from "../helpers/promises.ts";
import { startReplicaPair, type ReplicaPair } from "../helpers/replica-pair.ts";

const METRICS_TOKEN = randomBytes(24).toString("base64url");

describe("the receiving replica checks the bearer token before it forwards", () => {
  let pair: ReplicaPair;
  let a: TestBroker;
  let b: RunningBroker;

  beforeAll(async () => {
    ({ a, b } = pair = await startReplicaPair({ env: { BROKER_METRICS_TOKEN: METRICS_TOKEN } }));
  });

  afterAll(() => pair?.stop());

  /** B's fmb_forwarded_requests_total, whatever the result: every request B passed on to another replica. */
  const forwardedByB = async () => {
    const samples = parseExposition(await (await fetch(`${b.url}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).text());
    return valueOf(samples, "fmb_forwarded_requests_total", { result: "ok" }) + valueOf(samples, "fmb_forwarded_requests_total", { result: "failed" });
  };
  /** The /mcp requests A's request log holds from line `from` on: each request A answered, forwarded ones included. */
  const mcpRequestsLoggedByA = (from: number) =>
    a.logs
      .slice(from)
      .map((line) => JSON.parse(line) as { msg: string; path?: string; method?: string; status?: number })
      .filter((line) => line.msg === "request" && line.path === "/mcp");

  test("no token, an unknown one or a revoked one, on POST, GET and DELETE: 401 with resource_metadata from B, and A sees no request", async () => {
    a.forgejo.setCurrentUser("alice");
    const owner = await obtainTokens(a.config.publicUrl);
    const sessionId = await openSession(a.mcpUrl, owner.accessToken);
    // Another sign-in of the same user, answered by B once (no such session: 404, nothing forwarded), so B's
    // identity cache held it, then revoked through B.
    const revoked = await obtainTokens(a.config.publicUrl);
    const unknownSession = { "mcp-session-id": "0".repeat(48) };
    expect((await postMcp(`${b.url}/mcp`, revoked.accessToken, { jsonrpc: "2.0", id: 1, method: "tools/list" }, unknownSession)).status).toBe(404);
    expect((await postForm(`${b.url}/oauth/revoke`, { token: revoked.accessToken, client_id: revoked.clientId })).status).toBe(200);

    const forwardedBefore = await forwardedByB();
    const loggedFrom = a.logs.length;
    const resourceMetadata = `resource_metadata="${a.config.publicUrl}/.well-known/oauth-protected-resource/mcp", scope="mcp"`;
    const presented: [string, string | null][] = [
      ["no token", null],
      ["an unknown token", `fmb_at_${randomBytes(32).toString("base64url")}`],
      ["a revoked token", revoked.accessToken],
    ];
    for (const [what, token] of presented) {
      for (const method of ["POST", "GET", "DELETE"]) {
        const headers: Record<string, string> = { "mcp-session-id": sessionId, accept: "application/json, text/event-stream" };
        if (token !== null) headers.authorization = `Bearer ${token}`;
        const post = method === "POST" ? { body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }), headers: { ...headers, "content-type": "application/json" } } : { headers };
        const response = await fetch(`${b.url}/mcp`, { method, ...post });
        const challenge = response.headers.get("www-authenticate");
        expect({ what, method, status: response.status }).toEqual({ what, method, status: 401 });
        if (token === null) {
          expect(challenge).toBe(`Bearer ${resourceMetadata}`);
        } else {
          expect(challenge).toMatch(/^Bearer error="invalid_token", error_description="[^"]+", /);
          expect(challenge!.endsWith(`, ${resourceMetadata}`)).toBe(true);
          expect(await response.json()).toMatchObject({ error: "invalid_token" });
        }
      }
    }
    expect(await forwardedByB()).toBe(forwardedBefore);
    expect(a.broker.registry.holds(sessionId)).toBe(true);

    // The same request with the owner's token is passed on, and shows in both places the refused ones did not.
    const served = await postMcp(`${b.url}/mcp`, owner.accessToken, { jsonrpc: "2.0", id: 3, method: "tools/list" }, { "mcp-session-id": sessionId });
    expect(served.status).toBe(200);
    await served.text();
    expect(await forwardedByB()).toBe(forwardedBefore + 1);
    // A writes a request's log line once its answer has gone out.
    await waitWhile(() => mcpRequestsLoggedByA(loggedFrom).length === 0, 100, 10);
    expect(mcpRequestsLoggedByA(loggedFrom).map((line) => [line.method, line.status])).toEqual([["POST", 200]]);
  }, 30_000); // two brokers and a child on a loaded machine
});

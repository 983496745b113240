// A child that refuses initialize, or never answers it, gives the client a JSON-RPC error promptly and
// leaves no session behind: seen from HTTP, with children that do exactly that.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { INITIALIZE, isAlive, postMcp } from "../helpers/mcp.ts";
import { failureRef, loggedUnder } from "../helpers/failure-report.ts";
import { modernRequest, postModern } from "../helpers/modern-client.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";

/** A child that answers every request with the JSON-RPC error a server gives an unsupported protocol version. */
const REFUSING_CHILD = `for await (const line of console) { const m = JSON.parse(line); console.log(JSON.stringify({ jsonrpc: "2.0", id: m.id, error: { code: -32602, message: "Unsupported protocol version" } })); }`;

function childPids(t: TestBroker): number[] {
  return t.logs.filter((line) => line.includes('"msg":"child started"')).map((line) => (JSON.parse(line) as { pid: number }).pid);
}

describe("a child that answers initialize with an error", () => {
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: `${process.execPath} -e '${REFUSING_CHILD}'` } });
  });
  afterAll(async () => {
    await t.stop();
  });

  test("the client gets that error as the answer (JSON and SSE alike), no session, and the child is stopped", async () => {
    const token = (await obtainTokens(t.config.publicUrl)).accessToken;
    const refusal = { jsonrpc: "2.0", id: 1, error: { code: -32602, message: "Unsupported protocol version" } };
    const json = await postMcp(t.mcpUrl, token, INITIALIZE, { accept: "application/json" });
    expect({ status: json.status, type: json.headers.get("content-type"), session: json.headers.get("mcp-session-id") }).toEqual({
      status: 200,
      type: "application/json",
      session: null,
    });
    expect(await json.json()).toEqual(refusal);
    const sse = await postMcp(t.mcpUrl, token, INITIALIZE, { accept: "text/event-stream" });
    expect(sse.headers.get("mcp-session-id")).toBeNull();
    expect(await sse.text()).toContain(`data: ${JSON.stringify(refusal)}`);
    expect(t.broker.registry.size).toBe(0);
    const pids = childPids(t);
    expect(pids).toHaveLength(2);
    // session.close() awaited each child's exit before the answer went out.
    expect(pids.filter(isAlive)).toEqual([]);
  });
});

describe("a child that never answers initialize", () => {
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: "sleep 600" }, broker: { initializeTimeoutMs: 1000 } });
  });
  afterAll(async () => {
    await t.stop();
  });

  test("the client gets 502 with a JSON-RPC error once the initialize timeout passes, no session, and the child is stopped", async () => {
    const token = (await obtainTokens(t.config.publicUrl)).accessToken;
    const response = await postMcp(t.mcpUrl, token, INITIALIZE);
    expect(response.status).toBe(502);
    expect(response.headers.get("mcp-session-id")).toBeNull();
    const body = await response.json();
    expect(body).toMatchObject({ jsonrpc: "2.0", id: 1, error: { code: -32000 } });
    // The client learns what happened and a reference; the log holds the rest under that reference.
    const ref = failureRef(body.error.message, "the MCP server did not answer initialize within 1 s");
    expect(ref).not.toBeNull();
    expect(loggedUnder(t.logs, ref!)).toHaveLength(1);
    expect(t.broker.registry.size).toBe(0);
    const pids = childPids(t);
    expect(pids).toHaveLength(1);
    expect(isAlive(pids[0]!)).toBe(false);
  });
});

describe("a child that exits before it answers, for a 2026-07-28 caller", () => {
  const EXITING_CHILD = `console.error("cannot reach FORGEJO_URL"); process.exit(3)`;
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: `${process.execPath} -e '${EXITING_CHILD}'`, BROKER_CHILD_ERA: "legacy" } });
  });
  afterAll(async () => {
    await t.stop();
  });

  test("the caller gets 502 saying the server exited, with one reference, under which the log holds its last stderr line", async () => {
    const token = (await obtainTokens(t.config.publicUrl)).accessToken;
    const response = await postModern(t, token, modernRequest(1, "tools/call", { name: "whoami", arguments: {} }));
    expect(response.status).toBe(502);
    const body = (await response.json()) as { error: { code: number; message: string } };
    expect(body.error.code).toBe(-32000);
    const ref = failureRef(body.error.message, "the MCP server exited");
    expect({ message: body.error.message, ref }).toEqual({ message: body.error.message, ref: expect.any(String) });
    expect(loggedUnder(t.logs, ref!)).toEqual([expect.objectContaining({ last_stderr_line: "cannot reach FORGEJO_URL" })]);
  });
});

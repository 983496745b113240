// Modern (2026-07-28) POSTs that meet every rule, answered by a real stand-in child (a 2025-era one that
// declares instructions) over loopback; the refusals, which need no child, are one table in modern-refusals.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { childCommand, openSession, postMcp } from "../helpers/mcp.ts";
import { allMessages, modernClientWith, modernRequest, postModern } from "../helpers/modern-client.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";

let t: TestBroker;
let token: string;
const INSTRUCTIONS = "Call whoami first; repositories are listed by list_my_repos.";

beforeAll(async () => {
  t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: `${childCommand()} '--instructions=${INSTRUCTIONS}'` } });
  token = (await obtainTokens(t.config.publicUrl)).accessToken;
});
afterAll(async () => {
  await t.stop();
});

const WHOAMI = modernRequest(7, "tools/call", { name: "whoami", arguments: {} });
const base64 = (text: string) => `=?base64?${Buffer.from(text).toString("base64")}?=`;

describe("accepted", () => {
  test("server/discover relays the legacy child's instructions from its InitializeResult, and the pinned SDK client reads them", async () => {
    const [discovered] = await allMessages(await postModern(t, token, modernRequest("d", "server/discover")));
    expect((discovered as { result: { instructions?: unknown } }).result.instructions).toBe(INSTRUCTIONS);
    const client = await modernClientWith(t, token);
    expect(client.getInstructions()).toBe(INSTRUCTIONS);
    await client.close();
  });

  test("headers agreeing with the body, Mcp-Name in base64 form: the call is answered, complete", async () => {
    const response = await postModern(t, token, WHOAMI, { "mcp-name": base64("whoami"), accept: "application/json" });
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ jsonrpc: "2.0", id: 7, result: { content: [{ type: "text", text: "alice" }], resultType: "complete" } });
  });

  test("a client that takes only JSON gets its answer as JSON, without the progress it asked for", async () => {
    const count = modernRequest(10, "tools/call", { name: "slow_count", arguments: { n: 3, delay_ms: 1 } }, { progressToken: "p" });
    const response = await postModern(t, token, count, { accept: "application/json" });
    expect(response.headers.get("content-type")).toBe("application/json");
    expect(await response.json()).toEqual({ jsonrpc: "2.0", id: 10, result: { content: [{ type: "text", text: "counted to 3" }], resultType: "complete" } });
  });

  test("a legacy session of the same user keeps working beside it", async () => {
    const session = await openSession(t.mcpUrl, token);
    const response = await postMcp(t.mcpUrl, token, { jsonrpc: "2.0", id: 9, method: "tools/list" }, { "mcp-session-id": session, accept: "application/json" });
    expect(response.status).toBe(200);
    expect(((await response.json()) as { result: { resultType?: unknown } }).result.resultType).toBeUndefined();
  });
});

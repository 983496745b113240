// subscriptions/listen seen from HTTP with the stand-in child: a listen stream counts under the user's
// in-flight cap like a GET stream, and a listen the broker cannot serve gets its precise error.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestBroker, type TestBroker, principalChildOf } from "../helpers/broker.ts";
import { childCommand } from "../helpers/mcp.ts";
import { allMessages, answerMessages, modernRequest, postModern } from "../helpers/modern-client.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

let t: TestBroker;
let token: string;
beforeAll(async () => {
  t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand(), BROKER_MAX_IN_FLIGHT_PER_USER: "2" } });
  token = (await obtainTokens(t.config.publicUrl)).accessToken;
});
afterAll(async () => {
  await t.stop();
});

const listen = (id: string, notifications: unknown = { toolsListChanged: true }) => modernRequest(id, "subscriptions/listen", { notifications });

describe("subscriptions/listen over HTTP", () => {
  test("two listen streams take the user's two slots: a call gets 429 until one of them closes", async () => {
    const first = answerMessages(await postModern(t, token, listen("l1")));
    const second = answerMessages(await postModern(t, token, listen("l2")));
    for (const stream of [first, second]) expect((await stream.next()).value).toMatchObject({ method: "notifications/subscriptions/acknowledged" });
    const refused = await postModern(t, token, modernRequest(3, "tools/call", { name: "whoami", arguments: {} }));
    expect(refused.status).toBe(429);
    expect(await refused.json()).toMatchObject({ id: 3, error: { code: -32000, message: expect.stringContaining("you have 2 requests in flight and streams open") } });
    const child = await principalChildOf(t, token);
    expect(child.listening).toBe(2);
    await first.return(undefined);
    await second.return(undefined);
    // The slots free as the broker sees the streams close.
    await waitWhile(() => child.listening > 0, 250, 20);
    expect(child.listening).toBe(0);
    const answered = await postModern(t, token, modernRequest(4, "tools/call", { name: "whoami", arguments: {} }));
    expect((await allMessages(answered))[0]).toMatchObject({ id: 4, result: { content: [{ text: "alice" }] } });
  });

  test.each([
    ["a client that takes only JSON", listen("j"), { accept: "application/json" }, 406, -32000],
    ["no filter", modernRequest("f", "subscriptions/listen"), {}, 400, -32602],
    ["a filter flag that is not a boolean", listen("b", { toolsListChanged: 1 }), {}, 400, -32602],
  ])("%s: refused with its status and JSON-RPC error, nothing opened", async (_name, body, headers, status, code) => {
    const response = await postModern(t, token, body, headers);
    expect(response.status).toBe(status);
    expect(await response.json()).toMatchObject({ jsonrpc: "2.0", id: body.id, error: { code } });
  });
});

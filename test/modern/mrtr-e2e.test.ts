// MRTR end to end: a legacy child's elicitation and sampling reach a 2026-07-28 caller as input_required
// and its retry answers them — with the SDK client's own driver and raw — and every bad retry is refused with nothing reaching the child.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { startTestBroker, type TestBroker, principalChildOf } from "../helpers/broker.ts";
import { childCommand, textOf } from "../helpers/mcp.ts";
import { MODERN_VERSION, modernRequest, onlyMessage, postModern, retryOf } from "../helpers/modern-client.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

type Json = Record<string, any>;
const ELICITATION = { elicitation: {} };
const askUser = (id: number, question: string, capabilities: Json = ELICITATION) =>
  modernRequest(id, "tools/call", { name: "ask_user", arguments: { question } }, { "io.modelcontextprotocol/clientCapabilities": capabilities });

async function sdkClient(t: TestBroker, accessToken: string, capabilities: Json): Promise<Client> {
  const client = new Client({ name: "mrtr-e2e", version: "1.0.0" }, { capabilities, versionNegotiation: { mode: { pin: MODERN_VERSION } } });
  await client.connect(new StreamableHTTPClientTransport(new URL(t.mcpUrl), { authProvider: { token: async () => accessToken } }));
  return client;
}

describe("MRTR through the broker", () => {
  let t: TestBroker;
  let token: string;

  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand() } });
    token = (await obtainTokens(t.config.publicUrl)).accessToken;
  });
  afterAll(async () => {
    await t.stop();
  });

  const childOf = (accessToken: string) => principalChildOf(t, accessToken);

  test("the SDK client declaring elicitation: its handler gets the child's question and the tool returns its answer", async () => {
    const client = await sdkClient(t, token, ELICITATION);
    const asked: Json[] = [];
    client.setRequestHandler("elicitation/create", async (request) => {
      asked.push(request.params as Json);
      return { action: "accept", content: { answer: "Ada" } };
    });
    const result = await client.callTool({ name: "ask_user", arguments: { question: "What is your name?" } });
    expect(JSON.parse(textOf(result))).toEqual({ action: "accept", content: { answer: "Ada" } });
    expect(asked).toEqual([expect.objectContaining({ message: "What is your name?" })]);
    await client.close();
  });

  test("the SDK client declaring sampling: its handler gets the child's prompt and the tool returns the model's text", async () => {
    const client = await sdkClient(t, token, { sampling: {} });
    const prompts: unknown[] = [];
    client.setRequestHandler("sampling/createMessage", async (request) => {
      prompts.push((request.params as Json).messages[0].content.text);
      return { role: "assistant", content: { type: "text", text: "forty-two" }, model: "stub-model" };
    });
    const result = await client.callTool({ name: "ask_model", arguments: { prompt: "The answer?" } });
    expect(textOf(result)).toBe("forty-two");
    expect(prompts).toEqual(["The answer?"]);
    await client.close();
  });

  test("raw: input_required carries the child's request and a requestState; the retry with a new id gets the result", async () => {
    const original = askUser(1, "Colour?");
    const interim = await onlyMessage(await postModern(t, token, original));
    expect(interim).toEqual({
      jsonrpc: "2.0",
      id: 1,
      result: {
        resultType: "input_required",
        inputRequests: { "elicitation-1": { method: "elicitation/create", params: expect.objectContaining({ message: "Colour?" }) } },
        requestState: expect.any(String),
      },
    });
    // The child's call stays open while the caller is asked.
    expect((await childOf(token)).inFlight).toBe(1);
    const final = await onlyMessage(await postModern(t, token, retryOf(original, 2, { "elicitation-1": { action: "accept", content: { answer: "teal" } } }, interim.result.requestState)));
    expect(final.id).toBe(2);
    expect(final.result.resultType).toBe("complete");
    expect(JSON.parse(textOf(final.result))).toEqual({ action: "accept", content: { answer: "teal" } });
  });

  test("two questions the child asks together go out in one input_required, and one retry answers both", async () => {
    const original = modernRequest(1, "tools/call", { name: "ask_two", arguments: { first: "A?", second: "B?" } }, { "io.modelcontextprotocol/clientCapabilities": ELICITATION });
    const interim = await onlyMessage(await postModern(t, token, original));
    const requests = interim.result.inputRequests as Json;
    expect(Object.values(requests).map((request) => request.params.message).sort()).toEqual(["A?", "B?"]);
    const answers = Object.fromEntries(Object.entries(requests).map(([key, request]) => [key, { action: "accept", content: { answer: `${request.params.message} yes` } }]));
    const final = await onlyMessage(await postModern(t, token, retryOf(original, 2, answers, interim.result.requestState)));
    expect(JSON.parse(textOf(final.result))).toEqual(["A? yes", "B? yes"]);
  });

  test("without the capability declared: 400 -32021 naming it, the child's call cancelled, the child serving on", async () => {
    const response = await postModern(t, token, askUser(3, "Colour?", {}));
    expect(response.status).toBe(400);
    expect(await response.json()).toEqual({
      jsonrpc: "2.0",
      id: 3,
      error: { code: -32021, message: expect.any(String), data: { requiredCapabilities: { elicitation: {} } } },
    });
    expect((await childOf(token)).inFlight).toBe(0);
    const next = await onlyMessage(await postModern(t, token, modernRequest(4, "tools/call", { name: "whoami", arguments: {} })));
    expect(next.result.resultType).toBe("complete");
  });

  describe("a bad retry → 400 -32602, and the genuine retry still gets the child's answer", () => {
    const badRetries: [string, (original: ReturnType<typeof modernRequest>, state: string) => Promise<Response>][] = [
      ["a requestState with one character changed", (original, state) => postModern(t, token, retryOf(original, 2, { "elicitation-1": { action: "decline" } }, state.slice(0, 10) + (state[10] === "A" ? "B" : "A") + state.slice(11)))],
      ["other params (another question)", (original, state) => postModern(t, token, retryOf(askUser(1, "Other?"), 2, { "elicitation-1": { action: "decline" } }, state))],
      ["another method", (original, state) => postModern(t, token, { ...retryOf(original, 2, { "elicitation-1": { action: "decline" } }, state), method: "prompts/get" }, { "mcp-method": "prompts/get" })],
      ["another sign-in's token", async (original, state) => postModern(t, (await obtainTokens(t.config.publicUrl)).accessToken, retryOf(original, 2, { "elicitation-1": { action: "decline" } }, state))],
      ["no answer for the key asked", (original, state) => postModern(t, token, retryOf(original, 2, {}, state))],
    ];
    for (const [name, send] of badRetries) {
      test(name, async () => {
        const original = askUser(1, "Colour?");
        const interim = await onlyMessage(await postModern(t, token, original));
        const refused = await send(original, interim.result.requestState);
        expect(refused.status).toBe(400);
        expect(((await refused.json()) as Json).error.code).toBe(-32602);
        const final = await onlyMessage(await postModern(t, token, retryOf(original, 3, { "elicitation-1": { action: "accept", content: { answer: "genuine" } } }, interim.result.requestState)));
        expect(JSON.parse(textOf(final.result))).toEqual({ action: "accept", content: { answer: "genuine" } });
      });
    }

    test("a requestState used a second time", async () => {
      const original = askUser(1, "Colour?");
      const interim = await onlyMessage(await postModern(t, token, original));
      const answer = { "elicitation-1": { action: "accept", content: { answer: "once" } } };
      await onlyMessage(await postModern(t, token, retryOf(original, 2, answer, interim.result.requestState)));
      const again = await postModern(t, token, retryOf(original, 3, answer, interim.result.requestState));
      expect(again.status).toBe(400);
      expect(((await again.json()) as Json).error.code).toBe(-32602);
    });
  });
});

describe("a continuation nobody retries", () => {
  let t: TestBroker;
  let token: string;

  beforeAll(async () => {
    t = await startTestBroker({ env: { BROKER_CHILD_COMMAND: childCommand() }, broker: { continuationDeadlineMs: 500 } });
    token = (await obtainTokens(t.config.publicUrl)).accessToken;
  });
  afterAll(async () => {
    await t.stop();
  });

  test("past its deadline: the child's call is cancelled, nothing stays parked, and a late retry gets 400 -32602", async () => {
    const original = askUser(1, "Colour?");
    const interim = await onlyMessage(await postModern(t, token, original));
    const child = await principalChildOf(t, token);
    expect(child.inFlight).toBe(1);
    expect(t.broker.principals.continuations.size).toBe(1);
    await waitWhile(async () => child.inFlight > 0, 100, 50);
    expect(t.broker.principals.continuations.size).toBe(0);
    const late = await postModern(t, token, retryOf(original, 2, { "elicitation-1": { action: "accept", content: { answer: "late" } } }, interim.result.requestState));
    expect(late.status).toBe(400);
    expect(((await late.json()) as Json).error.code).toBe(-32602);
  });
});

// Two brokers sharing Redis and a database file: a modern caller's MRTR retry reaching the replica that did
// not ask is forwarded to the one holding the call while it lives, and re-run with the caller's answers once it is gone.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { RedisClient } from "bun";
import type { RunningBroker } from "../../src/broker.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import type { TestBroker } from "../helpers/broker.ts";
import { postMcp, textOf } from "../helpers/mcp.ts";
import { modernHeaders, modernRequest, onlyMessage, postModern, retryOf } from "../helpers/modern-client.ts";
import { startReplicaPair, type ReplicaPair } from "../helpers/replica-pair.ts";

type Json = Record<string, any>;
const ELICITATION = { "io.modelcontextprotocol/clientCapabilities": { elicitation: {} } };
const askUser = (id: number, question: string) => modernRequest(id, "tools/call", { name: "ask_user", arguments: { question } }, ELICITATION);
const askTwo = (id: number, inTurn: boolean) => modernRequest(id, "tools/call", { name: "ask_two", arguments: { first: "First?", second: "Second?", in_turn: inTurn } }, ELICITATION);
const accept = (answer: string) => ({ action: "accept", content: { answer } });
/** One character of the MAC changed: the state no longer opens anywhere. */
const tampered = (state: string) => state.slice(0, -1) + (state.endsWith("A") ? "B" : "A");

describe("an MRTR retry on another replica", () => {
  let pair: ReplicaPair;
  let a: TestBroker;
  let b: RunningBroker;
  let prefix: string;
  let redis: RedisClient;
  let token: string;
  let otherToken: string;
  const onA = (body: ReturnType<typeof modernRequest>, bearer = token) => postModern(a, bearer, body);
  const onB = (body: ReturnType<typeof modernRequest>, bearer = token) => postMcp(`${b.url}/mcp`, bearer, body, modernHeaders(body));

  beforeAll(async () => {
    ({ a, b, prefix, redis } = pair = await startReplicaPair());
    token = (await obtainTokens(a.config.publicUrl)).accessToken;
    otherToken = (await obtainTokens(a.config.publicUrl)).accessToken;
  });

  afterAll(() => pair?.stop());

  test("while the replica holding the call lives: the retry is forwarded there and completes, and the other replica starts no child", async () => {
    const original = askUser(1, "Colour?");
    const interim = await onlyMessage(await onA(original));
    expect(interim.result.resultType).toBe("input_required");
    expect(a.broker.principals.continuations.size).toBe(1);
    const final = await onlyMessage(await onB(retryOf(original, 2, { "elicitation-1": accept("teal") }, interim.result.requestState)));
    expect(final.id).toBe(2);
    expect(final.result.resultType).toBe("complete");
    expect(JSON.parse(textOf(final.result))).toEqual(accept("teal"));
    expect(a.broker.principals.continuations.size).toBe(0);
    expect(b.principals.size).toBe(0);
  });

  test("a forged state, or another sign-in's, gets 400 -32602 on either replica; the genuine retry still completes", async () => {
    const original = askUser(1, "Colour?");
    const interim = await onlyMessage(await onA(original));
    const state = interim.result.requestState as string;
    const answers = { "elicitation-1": accept("forged") };
    for (const send of [onA, onB]) {
      for (const refused of [await send(retryOf(original, 2, answers, tampered(state))), await send(retryOf(original, 2, answers, state), otherToken)]) {
        expect(refused.status).toBe(400);
        expect(((await refused.json()) as Json).error.code).toBe(-32602);
      }
    }
    const final = await onlyMessage(await onB(retryOf(original, 3, { "elicitation-1": accept("genuine") }, state)));
    expect(JSON.parse(textOf(final.result))).toEqual(accept("genuine"));
  });

  test("once the holder is gone (stopped, or its address refusing connections): the call runs again on the other replica with the caller's answers; what they cannot answer is asked anew", async () => {
    // Two questions asked at once; a call in its second round (its first question answered on A); one more for A's address coming back dead.
    const together = askTwo(1, false);
    const togetherAsked = await onlyMessage(await onA(together));
    expect(Object.keys(togetherAsked.result.inputRequests).sort()).toEqual(["elicitation-1", "elicitation-2"]);
    const inTurn = askTwo(2, true);
    const firstRound = await onlyMessage(await onA(inTurn));
    const secondRound = await onlyMessage(await onA(retryOf(inTurn, 3, { "elicitation-1": accept("one") }, firstRound.result.requestState)));
    expect(Object.keys(secondRound.result.inputRequests)).toEqual(["elicitation-2"]);
    const refusing = askUser(4, "Colour?");
    const refusingAsked = await onlyMessage(await onA(refusing));
    const holder = JSON.parse(Buffer.from(refusingAsked.result.requestState.split(".")[1], "base64url").toString()).r as string;
    const aUrl = await redis.get(`${prefix}replica:${holder}`);
    expect(aUrl).toBe(a.config.publicUrl);

    await a.broker.stop();
    expect(await redis.get(`${prefix}replica:${holder}`)).toBeNull();

    // Another sign-in's retry runs nothing, holder gone or not.
    const stranger = await onB(retryOf(together, 5, { "elicitation-1": accept("x"), "elicitation-2": accept("y") }, togetherAsked.result.requestState), otherToken);
    expect(stranger.status).toBe(400);
    expect(((await stranger.json()) as Json).error.code).toBe(-32602);
    expect(b.principals.size).toBe(0);

    const bothAnswered = await onlyMessage(await onB(retryOf(together, 6, { "elicitation-1": accept("A"), "elicitation-2": accept("B") }, togetherAsked.result.requestState)));
    expect(bothAnswered.id).toBe(6);
    expect(JSON.parse(textOf(bothAnswered.result))).toEqual(["A", "B"]);

    // The re-run's first question was answered on A, not in this retry: the caller is asked it again, and its answer to the second still counts.
    const askedAgain = await onlyMessage(await onB(retryOf(inTurn, 7, { "elicitation-2": accept("two") }, secondRound.result.requestState)));
    expect(askedAgain.result.resultType).toBe("input_required");
    expect(Object.keys(askedAgain.result.inputRequests)).toEqual(["elicitation-1"]);
    expect(askedAgain.result.inputRequests["elicitation-1"].params.message).toBe("First?");
    const inTurnDone = await onlyMessage(await onB(retryOf(inTurn, 8, { "elicitation-1": accept("one again") }, askedAgain.result.requestState)));
    expect(JSON.parse(textOf(inTurnDone.result))).toEqual(["one again", "two"]);

    // A crash leaves A's liveness key for a while, but nobody answers at its address.
    await redis.set(`${prefix}replica:${holder}`, aUrl!, "PX", "15000");
    const rerun = await onlyMessage(await onB(retryOf(refusing, 9, { "elicitation-1": accept("still teal") }, refusingAsked.result.requestState)));
    expect(JSON.parse(textOf(rerun.result))).toEqual(accept("still teal"));
    expect(b.principals.continuations.size).toBe(0);
  }, 30_000); // a child starts on B after A stops, and A stops its own: slow under load
});

// The sealed MRTR requestState: it opens only for the grant, method and params it was sealed for, before
// its deadline, with this broker's key; and the params hash ignores exactly what a retry adds.
import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { paramsHash, RequestStateSealer, requestStateKeyFrom, type StateBinding } from "../../src/modern/request-state.ts";
import { hopKeyFrom } from "../../src/replicas/internal-hop.ts";

const BINDING: StateBinding = { grantId: "grant-a", method: "tools/call", paramsHash: paramsHash({ name: "ask_user", arguments: { question: "Colour?" } }) };
const STATE = { continuationId: "c0ffee", deadline: 1_000_000 };

/** `token` with the character at `index` changed. */
const flipped = (token: string, index: number) => token.slice(0, index) + (token[index] === "A" ? "B" : "A") + token.slice(index + 1);

describe("RequestStateSealer.open", () => {
  const sealer = new RequestStateSealer();
  const token = sealer.seal(STATE, BINDING);
  const bodyAt = token.indexOf(".") + 2;
  const table: [string, string, StateBinding, number, boolean][] = [
    ["as sealed, before the deadline", token, BINDING, 999_999, true],
    ["as sealed, at the deadline", token, BINDING, 1_000_000, true],
    ["past the deadline", token, BINDING, 1_000_001, false],
    ["a byte of the body changed", flipped(token, bodyAt), BINDING, 0, false],
    ["a byte of the MAC changed", flipped(token, token.length - 3), BINDING, 0, false],
    ["another grant", token, { ...BINDING, grantId: "grant-b" }, 0, false],
    ["another method", token, { ...BINDING, method: "prompts/get" }, 0, false],
    ["other params", token, { ...BINDING, paramsHash: paramsHash({ name: "ask_user", arguments: { question: "Size?" } }) }, 0, false],
    ["sealed by another broker process (another key)", new RequestStateSealer().seal(STATE, BINDING), BINDING, 0, false],
    ["not a state at all", "hello", BINDING, 0, false],
    ["an extra part", `${token}.x`, BINDING, 0, false],
  ];
  for (const [name, given, binding, now, opens] of table) {
    test(name, () => {
      const opened = sealer.open(given, binding, now);
      expect(opened.ok).toBe(opens);
      if (opened.ok) expect(opened.state).toEqual(STATE);
    });
  }
});

describe("requestStates shared by replicas", () => {
  const sealingKey = randomBytes(32);
  const asked = { ...STATE, asked: ["elicitation-2", "sampling-3"] };
  test("a state sealed on one replica opens on another with the same sealing key, naming the holder and the keys asked", () => {
    const token = new RequestStateSealer(requestStateKeyFrom(sealingKey), "replica-1").seal(asked, BINDING);
    const opened = new RequestStateSealer(requestStateKeyFrom(sealingKey), "replica-2").open(token, BINDING, 0);
    expect(opened).toEqual({ ok: true, state: { ...asked, holder: "replica-1" } });
  });
  test("nor with another sealing key, nor with the hop key derived from the same one", () => {
    const token = new RequestStateSealer(requestStateKeyFrom(sealingKey), "replica-1").seal(asked, BINDING);
    expect(new RequestStateSealer(requestStateKeyFrom(randomBytes(32))).open(token, BINDING, 0).ok).toBe(false);
    expect(new RequestStateSealer(hopKeyFrom(sealingKey)).open(token, BINDING, 0).ok).toBe(false);
  });
  test("a modern child's own state names no holder: any replica hands it to its own child", () => {
    const token = new RequestStateSealer(requestStateKeyFrom(sealingKey), "replica-1").seal({ childState: "theirs", deadline: 5 }, BINDING);
    expect(new RequestStateSealer(requestStateKeyFrom(sealingKey), "replica-2").open(token, BINDING, 0)).toEqual({ ok: true, state: { childState: "theirs", deadline: 5 } });
  });
});

describe("paramsHash", () => {
  const params = { name: "ask_user", arguments: { question: "Colour?", n: 1 } };
  test("the same for the retry's additions (_meta, inputResponses, requestState) and for another key order", () => {
    const retry = { arguments: { n: 1, question: "Colour?" }, name: "ask_user", _meta: { progressToken: 9 }, inputResponses: { k: {} }, requestState: "s" };
    expect(paramsHash(retry)).toBe(paramsHash(params));
  });
  test("different when an argument differs", () => {
    expect(paramsHash({ ...params, arguments: { question: "Colour?", n: 2 } })).not.toBe(paramsHash(params));
  });
});

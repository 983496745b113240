// The sealed MRTR requestState: it opens only for the grant, method and params it was sealed for, before
// its deadline, with this broker's key; and the params hash ignores exactly what a retry adds.
import { describe, expect, test } from "bun:test";
import { paramsHash, RequestStateSealer, type StateBinding } from "../../src/modern/request-state.ts";

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

// A start's last question before it registers its child, with a grantIsLive the test answers: a revocation
// notice that arrives while the question is out makes the start ask again, so a revocation cannot slip past it.
import { describe, expect, test } from "bun:test";
import { RevocationWatch } from "../../src/session/revocation-watch.ts";

describe("RevocationWatch", () => {
  test.each([
    // [what happens, the grant's answers in order, notices during each question, live after the start, questions asked]
    ["no grantIsLive: every grant is live", null, [], true, 0],
    ["live, no notice meanwhile: asked once", [true], [0], true, 1],
    ["revoked: asked once", [false], [0], false, 1],
    ["a notice while asking, then revoked: asked again and refused", [true, false], [1, 0], false, 2],
    ["two notices across two questions, live throughout: asked three times", [true, true, true], [1, 1, 0], true, 3],
  ] as const)("%s", async (_, answers, noticesDuring, live, questions) => {
    let asked = 0;
    const watch: RevocationWatch = new RevocationWatch(
      answers === null
        ? undefined
        : async () => {
            const notices = noticesDuring[asked] ?? 0;
            const answer = answers[asked++]!;
            for (let i = 0; i < notices; i++) watch.noticed();
            return answer;
          },
    );
    expect([await watch.liveAfterStart("grant"), asked]).toEqual([live, questions]);
  });

  test("isRevoked asks once and says whether the grant is gone; without grantIsLive, never", async () => {
    expect(await new RevocationWatch(async () => false).isRevoked("g")).toBe(true);
    expect(await new RevocationWatch(async () => true).isRevoked("g")).toBe(false);
    expect(await new RevocationWatch(undefined).isRevoked("g")).toBe(false);
  });
});

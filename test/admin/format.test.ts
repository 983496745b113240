// The admin command's plain output: durations an operator reads at a glance, and columns that line up.
import { describe, expect, test } from "bun:test";
import type { SessionRow } from "../../src/admin/protocol.ts";
import { duration, mebibytes, sessionsTable, table } from "../../src/admin/format.ts";

describe("duration", () => {
  const cases: [number, string][] = [
    [0, "0s"],
    [59.9, "59s"],
    [60, "1m00s"],
    [723, "12m03s"],
    [3600, "1h00m"],
    [5 * 3600 + 59 * 60 + 59, "5h59m"],
    [86_400 * 3 + 4 * 3600, "3d04h"],
  ];
  test.each(cases)("%p s → %s", (seconds, text) => expect(duration(seconds)).toBe(text));
});

test("mebibytes: one decimal, a dash when /proc could not say", () => {
  expect(mebibytes(31_457_280)).toBe("30.0 MiB");
  expect(mebibytes(null)).toBe("-");
});

test("table: each column as wide as its widest cell, the last one unpadded", () => {
  expect(table(["ERA", "USER", "ID"], [["legacy", "al", "x"], ["modern", "bernadette", "yz"]]).split("\n")).toEqual([
    "ERA     USER        ID",
    "legacy  al          x",
    "modern  bernadette  yz",
  ]);
});

test("sessionsTable: another replica's session shows its URL, and a dash where only its owner knows (age, idle, pid, memory)", () => {
  const row: SessionRow = { era: "legacy", id: "s2", user: "bob", forgejoUserId: 8, clientId: "c1", clientName: "Claude", grantId: "g2", ageS: null, idleS: null, replica: "http://b", pid: null, rssBytes: null, state: "serving" };
  expect(sessionsTable([row]).split("\n")[1]!.split(/ {2,}/)).toEqual(["legacy", "bob", "Claude", "—", "—", "http://b", "—", "—", "serving", "s2"]);
});

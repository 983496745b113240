// Log hygiene: whatever a caller passes, no credential reaches a log line.
import { describe, expect, test } from "bun:test";
import { DrizzleQueryError } from "drizzle-orm/errors";
import { createLogger, createMemoryLogger, maskSecrets } from "../src/log.ts";

describe("logging", () => {
  test.each([
    ["debug", [true, true, true, true]],
    ["info", [false, true, true, true]],
    ["warn", [false, false, true, true]],
    ["error", [false, false, false, true]],
  ] as const)("at level %s, enabled() says which lines are written", (level, expected) => {
    const lines: string[] = [];
    const logger = createLogger({ level, write: (line) => lines.push(line) });
    const levels = ["debug", "info", "warn", "error"] as const;
    expect(levels.map((l) => logger.enabled(l))).toEqual([...expected]);
    for (const l of levels) logger[l]("m");
    expect(lines.map((line) => JSON.parse(line).level)).toEqual(levels.filter((_, i) => expected[i]));
  });

  test("one JSON object per line, with the fields given", () => {
    const logger = createMemoryLogger();
    logger.child({ session: "s1" }).info("hello", { n: 1 });
    expect(logger.lines).toHaveLength(1);
    expect(JSON.parse(logger.lines[0]!)).toMatchObject({ level: "info", msg: "hello", session: "s1", n: 1 });
  });

  test("secret-named fields and credential-shaped text are masked; public ids are not", () => {
    const logger = createMemoryLogger();
    const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXZhbHVl";
    logger.info("x", {
      access_token: "anything",
      client_secret: "s3cr3t",
      cookie: "fmb_browser=abc",
      client_id: "fmb_client_public123456",
      stderr: `failed with token fmb_at_${"A".repeat(43)} and ${jwt} and Authorization: Bearer xyz123`,
      error: new Error(`bad gto_${"b".repeat(40)}`),
    });
    const line = logger.lines[0]!;
    for (const secret of ["anything", "s3cr3t", "fmb_browser=abc", "A".repeat(43), jwt, "xyz123", "b".repeat(40)]) {
      expect(line).not.toContain(secret);
    }
    expect(JSON.parse(line).client_id).toBe("fmb_client_public123456");
  });

  test("a failed database query is logged by its reason, without the statement's parameters", () => {
    const logger = createMemoryLogger();
    const sealed = `v1.${"i".repeat(16)}.${"c".repeat(40)}`;
    const cause = new Error("terminating connection due to administrator command");
    logger.error("admin command failed", { error: new DrizzleQueryError("select * from upstream_credentials where token = $1", [sealed, "hash-of-a-token"], cause) });
    const line = JSON.parse(logger.lines[0]!) as { error: string };
    expect(line.error).toBe("database query failed: terminating connection due to administrator command");
  });

  test("maskSecrets keeps the surrounding text readable", () => {
    expect(maskSecrets(`token fmb_rt_${"x".repeat(43)} refused`)).toBe("token fmb_rt_*** refused");
  });
});

import { describe, expect, test } from "bun:test";
import { acceptedReplies, accepts } from "../../src/http/accept.ts";

describe("Accept header", () => {
  test.each([
    [null, true, true],
    ["", true, true],
    ["application/json, text/event-stream", true, true],
    ["application/json", true, false],
    ["text/event-stream", false, true],
    ["*/*", true, true],
    ["application/*", true, false],
    ["text/*;q=0.5", false, true],
    ["Application/JSON", true, false],
    ["application/json;q=0, text/event-stream", false, true],
    ["application/json; q=0.0", false, false],
    ["text/html", false, false],
    ["application/jsonx", false, false],
  ])("%p → json %p, sse %p", (header, json, sse) => {
    expect(accepts(header, "application/json")).toBe(json);
    expect(accepts(header, "text/event-stream")).toBe(sse);
    expect(acceptedReplies(header)).toEqual({ json, sse });
  });

  test("a remembered header gives the same answer again, and many distinct headers still each get their own", () => {
    for (let i = 0; i < 200; i++) expect(acceptedReplies(`text/event-stream, x/${i}`)).toEqual({ json: false, sse: true });
    expect(acceptedReplies("application/json")).toEqual({ json: true, sse: false });
    expect(acceptedReplies("application/json")).toEqual({ json: true, sse: false });
  });
});

// The child's era: the probe's verdict over every outcome (table), the probe run on a fake child, and the
// per-command cache — single-flight, the operator's setting skipping the probe, a guessed legacy verdict re-probed later.
import { describe, expect, test } from "bun:test";
import { ChildEras, LEGACY_VERDICT_TTL_MS, PROBE_ID, probeRequest, probeVerdict, runProbe, type ProbeOutcome } from "../../src/modern/child-era.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { FakeChild, FakeTimers, settle } from "../bridge/fakes.ts";

const answer = (body: Record<string, unknown>): ProbeOutcome => ({ kind: "answer", message: { jsonrpc: "2.0", id: PROBE_ID, ...body } });
const refusal = (code: number, data?: unknown) => answer({ error: { code, message: "no", ...(data === undefined ? {} : { data }) } });

describe("the probe's verdict", () => {
  test.each<[string, ProbeOutcome, ReturnType<typeof probeVerdict>]>([
    ["a DiscoverResult sharing 2026-07-28", answer({ result: { supportedVersions: ["2026-07-28"], capabilities: {} } }), { era: "modern" }],
    ["a dual-era DiscoverResult", answer({ result: { supportedVersions: ["2025-11-25", "2026-07-28"], capabilities: {} } }), { era: "modern" }],
    ["a DiscoverResult sharing no version (initialize may still work)", answer({ result: { supportedVersions: ["2027-03-01"] } }), { era: "legacy" }],
    ["a result that is no DiscoverResult", answer({ result: {} }), { era: "legacy" }],
    ["-32022 naming 2026-07-28 (a modern error)", refusal(-32022, { supported: ["2026-07-28"], requested: "2026-07-28" }), { era: "modern" }],
    ["-32022 naming only a later modern version", refusal(-32022, { supported: ["2027-03-01"] }), { era: "unsupported", why: "the MCP server speaks only 2027-03-01, which this broker does not" }],
    ["-32022 naming only legacy versions", refusal(-32022, { supported: ["2025-06-18"] }), { era: "legacy" }],
    ["-32022 without data", refusal(-32022), { era: "legacy" }],
    ["method not found", refusal(-32601), { era: "legacy" }],
    ["server not initialized", refusal(-32002), { era: "legacy" }],
    ["header mismatch (not era evidence on stdio)", refusal(-32020), { era: "legacy" }],
    ["an implementation-defined error", refusal(-32000), { era: "legacy" }],
    ["silence within the timeout", { kind: "silence" }, { era: "legacy" }],
    ["the child exiting", { kind: "exit" }, { era: "legacy" }],
  ])("%s", (_, outcome, verdict) => {
    expect(probeVerdict(outcome)).toEqual(verdict);
  });

  test("the probe is server/discover with the modern envelope", () => {
    expect(JSON.parse(probeRequest())).toEqual({
      jsonrpc: "2.0",
      id: PROBE_ID,
      method: "server/discover",
      params: { _meta: { "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": { name: "forgejo-mcp-broker", version: "1" } } },
    });
  });
});

describe("running the probe", () => {
  const deps = (timers: FakeTimers) => ({ logger: createMemoryLogger(), timers, maxMessageBytes: 100_000, timeoutMs: 1000 });

  test("the child's answer is the outcome, and the child is stopped", async () => {
    const timers = new FakeTimers();
    const child = new FakeChild({ onMessage: (message, self) => self.send({ jsonrpc: "2.0", id: message.id, result: { supportedVersions: ["2026-07-28"] } }) });
    const outcome = await runProbe(child, deps(timers));
    expect(outcome).toEqual(answer({ result: { supportedVersions: ["2026-07-28"] } }));
    expect(child.messages.map((message) => message.method)).toEqual(["server/discover"]);
    expect(child.stopCalls).toBe(1);
  });

  test("an error with a null id answers the probe (its one request), without waiting out the timeout", async () => {
    const child = new FakeChild({ onMessage: (_message, self) => self.send({ jsonrpc: "2.0", id: null, error: { code: -32700, message: "Parse error" } }) });
    expect(await runProbe(child, deps(new FakeTimers()))).toEqual({ kind: "answer", message: { jsonrpc: "2.0", id: null, error: { code: -32700, message: "Parse error" } } });
  });

  test("a child that exits on the probe", async () => {
    const child = new FakeChild({ onMessage: (_message, self) => self.exit({ code: 1 }) });
    expect(await runProbe(child, deps(new FakeTimers()))).toEqual({ kind: "exit" });
  });

  test("a silent child is stopped at the timeout", async () => {
    const timers = new FakeTimers();
    const child = new FakeChild();
    const outcome = runProbe(child, deps(timers));
    await settle();
    timers.advance(999);
    await settle();
    expect(child.stopCalls).toBe(0);
    timers.advance(1);
    expect(await outcome).toEqual({ kind: "silence" });
    expect(child.stopCalls).toBe(1);
  });
});

describe("the era of a child command", () => {
  const modern = answer({ result: { supportedVersions: ["2026-07-28"] } });

  test("concurrent first callers share one probe, and later ones none", async () => {
    const eras = new ChildEras({ setting: "auto", timers: new FakeTimers() });
    let probes = 0;
    let finish!: (outcome: ProbeOutcome) => void;
    const probe = () => {
      probes++;
      return new Promise<ProbeOutcome>((resolve) => (finish = resolve));
    };
    const first = Array.from({ length: 10 }, () => eras.verdictFor("child --stdio", probe));
    await settle();
    finish(modern);
    expect(await Promise.all(first)).toEqual(Array(10).fill({ era: "modern" }));
    expect(await eras.verdictFor("child --stdio", probe)).toEqual({ era: "modern" });
    expect(probes).toBe(1);
  });

  test("each command has its own verdict", async () => {
    const eras = new ChildEras({ setting: "auto", timers: new FakeTimers() });
    expect(await eras.verdictFor("a", async () => modern)).toEqual({ era: "modern" });
    expect(await eras.verdictFor("b", async () => ({ kind: "exit" }))).toEqual({ era: "legacy" });
  });

  test.each(["legacy", "modern"] as const)("BROKER_CHILD_ERA=%s: no probe", async (setting) => {
    const eras = new ChildEras({ setting, timers: new FakeTimers() });
    expect(await eras.verdictFor("a", () => Promise.reject(new Error("probed")))).toEqual({ era: setting });
  });

  test("a legacy verdict from silence or an exit is a guess, probed again after its TTL; one from an answer is kept", async () => {
    const timers = new FakeTimers();
    const eras = new ChildEras({ setting: "auto", timers });
    let probes = 0;
    const exits = async (): Promise<ProbeOutcome> => (probes++, { kind: "exit" });
    const refuses = async (): Promise<ProbeOutcome> => (probes++, refusal(-32601));
    await eras.verdictFor("guessed", exits);
    await eras.verdictFor("answered", refuses);
    timers.advance(LEGACY_VERDICT_TTL_MS - 1);
    await eras.verdictFor("guessed", exits);
    expect(probes).toBe(2);
    timers.advance(1);
    await eras.verdictFor("guessed", exits);
    await eras.verdictFor("answered", refuses);
    expect(probes).toBe(3);
  });

  test("a probe that could not run is not cached: the next caller probes again", async () => {
    const eras = new ChildEras({ setting: "auto", timers: new FakeTimers() });
    expect(await eras.verdictFor("a", () => Promise.reject(new Error("not found")).then(() => modern)).catch((error: Error) => error.message)).toBe("not found");
    expect(await eras.verdictFor("a", async () => modern)).toEqual({ era: "modern" });
  });
});

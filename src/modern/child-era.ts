// Which MCP era a modern caller's child speaks, per the 2026-07-28 stdio rule: a server/discover probe in a
// disposable sibling process, its outcome judged by a pure verdict, and the verdict cached per child command.
import { ChildLink } from "../bridge/child-link.ts";
import type { JsonRpcMessage } from "../bridge/jsonrpc.ts";
import type { ChildEraSetting } from "../config.ts";
import type { Logger } from "../log.ts";
import type { ChildProcess } from "../supervisor/child.ts";
import type { Timers } from "../supervisor/timers.ts";
import { UNSUPPORTED_VERSION } from "./request-rules.ts";
import { META, MODERN_PROTOCOL_VERSIONS } from "./versions.ts";

/** How the broker speaks to a child: initialize first (legacy), or 2026-07-28 per request (modern). */
export type ChildEra = "legacy" | "modern";

/** What became of the probe: the child's answer to it, or no answer (silence within the timeout, or its exit). */
export type ProbeOutcome = { kind: "answer"; message: JsonRpcMessage } | { kind: "silence" } | { kind: "exit" };

/** A modern child that speaks none of the broker's modern versions cannot be served, and must not be initialized either ("do not fall back"). */
export type ProbeVerdict = { era: ChildEra } | { era: "unsupported"; why: string };

export const PROBE_ID = "fmb-era-probe";
/** How long a silent child is waited for before it counts as legacy: long enough for a cold start on a busy host. */
export const PROBE_TIMEOUT_MS = 10_000;
/** A legacy verdict may come from a child that failed for another reason (a slow start, Forgejo down): it is tried again after this. */
export const LEGACY_VERDICT_TTL_MS = 60 * 60_000;

/** The probe: server/discover with the modern envelope, declaring no client capabilities (discovery needs none). */
export function probeRequest(): string {
  return JSON.stringify({
    jsonrpc: "2.0",
    id: PROBE_ID,
    method: "server/discover",
    params: { _meta: { [META.protocolVersion]: MODERN_PROTOCOL_VERSIONS[0], [META.clientCapabilities]: {}, [META.clientInfo]: { name: "forgejo-mcp-broker", version: "1" } } },
  });
}

/**
 * The era a probe outcome shows (the stdio rule, read as the SDK 2.4.0 client reads it): a DiscoverResult
 * sharing a version is modern; -32022 naming one of the broker's modern versions is modern, naming only
 * other modern versions is a modern child the broker cannot serve; any other error, silence or exit is
 * legacy — never keyed to one error code. A DiscoverResult without a shared version falls back to legacy,
 * as the SDK does when it can: a dual-era child still takes initialize, and a modern-only one says so then.
 */
export function probeVerdict(outcome: ProbeOutcome): ProbeVerdict {
  if (outcome.kind !== "answer") return { era: "legacy" };
  const { message } = outcome;
  if ("result" in message) {
    const versions = stringsOf((message.result as { supportedVersions?: unknown } | null)?.supportedVersions);
    return { era: versions.some(isBrokerModern) ? "modern" : "legacy" };
  }
  const error = message.error as { code?: unknown; data?: { supported?: unknown } } | undefined;
  if (error?.code !== UNSUPPORTED_VERSION) return { era: "legacy" };
  const supported = stringsOf(error.data?.supported);
  if (supported.some(isBrokerModern)) return { era: "modern" };
  // Revisions are dated: every one from the first stateless revision on is of the modern era.
  const otherModern = supported.filter((version) => version >= MODERN_PROTOCOL_VERSIONS[0]);
  if (otherModern.length === 0) return { era: "legacy" };
  return { era: "unsupported", why: `the MCP server speaks only ${otherModern.join(", ")}, which this broker does not` };
}

const isBrokerModern = (version: string) => (MODERN_PROTOCOL_VERSIONS as readonly string[]).includes(version);

function stringsOf(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((item): item is string => typeof item === "string") : [];
}

/**
 * Runs the probe on a freshly started child and stops it: the outcome is its answer to the probe, its
 * exit, or silence after `timeoutMs`. Whatever else it writes is ignored.
 */
export async function runProbe(child: ChildProcess, deps: { logger: Logger; timers: Timers; maxMessageBytes: number; timeoutMs: number }): Promise<ProbeOutcome> {
  const outcome = await new Promise<ProbeOutcome>((resolve) => {
    const timer = deps.timers.setTimeout(() => resolve({ kind: "silence" }), deps.timeoutMs);
    const settle = (outcome: ProbeOutcome) => {
      deps.timers.clearTimeout(timer);
      resolve(outcome);
    };
    const link = new ChildLink(child, deps.logger, deps.maxMessageBytes, {
      onMessage: (_link, incoming, kind) => {
        // An error with a null id (the child could not read the probe) can only be about the probe, its one request.
        if (kind === "response" && (incoming.message.id === PROBE_ID || incoming.message.id === null)) settle({ kind: "answer", message: incoming.message });
      },
      onExit: () => settle({ kind: "exit" }),
    });
    if (link.write(probeRequest()) !== "written") settle({ kind: "exit" });
  });
  await child.stop();
  return outcome;
}

interface CachedVerdict {
  verdict: ProbeVerdict;
  /** When it is probed again; null: never (a child's answer, not a guess from its silence or exit). */
  expiresAt: number | null;
}

/**
 * The era of each child command: the operator's, or probed once (single-flight: concurrent first callers
 * share one probe) and cached. A probe that could not run (the child did not start) is not cached.
 */
export class ChildEras {
  private readonly verdicts = new Map<string, CachedVerdict>();
  private readonly probes = new Map<string, Promise<ProbeVerdict>>();

  constructor(private readonly deps: { setting: ChildEraSetting; timers: Timers }) {}

  /** The verdict for `command`, running `probe` only in auto mode and only when none is cached. */
  async verdictFor(command: string, probe: () => Promise<ProbeOutcome>): Promise<ProbeVerdict> {
    if (this.deps.setting !== "auto") return { era: this.deps.setting };
    const cached = this.verdicts.get(command);
    if (cached !== undefined && (cached.expiresAt === null || this.deps.timers.now() < cached.expiresAt)) return cached.verdict;
    let running = this.probes.get(command);
    if (running === undefined) {
      running = probe().then((outcome) => {
        const verdict = probeVerdict(outcome);
        // A legacy verdict from an answer (an error) is as sure as a modern one; from silence or an exit it is a guess.
        const guessed = outcome.kind !== "answer";
        this.verdicts.set(command, { verdict, expiresAt: guessed ? this.deps.timers.now() + LEGACY_VERDICT_TTL_MS : null });
        return verdict;
      });
      this.probes.set(command, running);
      const forget = () => this.probes.delete(command);
      running.then(forget, forget);
    }
    return running;
  }
}

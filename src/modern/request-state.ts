// The MRTR requestState a modern caller echoes on its retry: HMAC-sealed, bound to the grant, the original
// method and params (a hash) and a deadline; it points to the broker's continuation, or wraps a modern child's own requestState.
import { createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * What a requestState stands for, as the broker sealed it: the continuation (a legacy child's call kept
 * open) the retry resumes, or a modern child's own requestState, handed back to it on the retry.
 */
export type SealedState = ContinuationState | { childState: string; continuationId?: undefined; deadline: number };

/**
 * A continuation, with what a replica other than its holder needs: which replica holds it (set when states
 * are shared by replicas) and the keys its caller was asked, so a re-run of the call can match its child's requests to the answers.
 */
export interface ContinuationState {
  continuationId: string;
  childState?: undefined;
  deadline: number;
  holder?: string;
  asked?: string[];
}

/** What a retry must match: who sends it, and the request it repeats. */
export interface StateBinding {
  grantId: string;
  method: string;
  paramsHash: string;
}

const VERSION = "m1";
const SHARED_KEY_PURPOSE = "forgejo-mcp-broker mrtr request state v1";

/** The key replicas share for requestStates: derived from the sealing key under its own label, so it unseals nothing else. */
export function requestStateKeyFrom(sealingKey: Uint8Array): Uint8Array {
  return new Uint8Array(hkdfSync("sha256", sealingKey, new Uint8Array(0), SHARED_KEY_PURPOSE, 32));
}
/** The params a retry adds or may change: the rest must equal the original request's. */
const RETRY_ONLY_PARAMS = new Set(["_meta", "inputResponses", "requestState"]);

/** A hash of a request's params without _meta, inputResponses and requestState, independent of key order. */
export function paramsHash(params: unknown): string {
  const own = params !== null && typeof params === "object" && !Array.isArray(params) ? (params as Record<string, unknown>) : {};
  const kept = Object.fromEntries(Object.entries(own).filter(([key]) => !RETRY_ONLY_PARAMS.has(key)));
  return createHash("sha256").update(canonicalJson(kept)).digest("base64url");
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, item]) => item !== undefined);
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([key, item]) => `${JSON.stringify(key)}:${canonicalJson(item)}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

/**
 * Seals and opens requestStates. Alone, the key is random per process: a continuation is a call held open on
 * one broker's child, so a state from before a restart has nothing to resume and is refused like a forged
 * one. Among replicas the key is shared and each continuation names its `holder`, where the retry is routed.
 */
export class RequestStateSealer {
  constructor(
    private readonly key: Uint8Array = randomBytes(32),
    private readonly holder?: string,
  ) {}

  seal(state: SealedState, binding: StateBinding): string {
    const continuation = state.continuationId === undefined ? {} : { r: this.holder, k: state.asked };
    const body = Buffer.from(JSON.stringify({ c: state.continuationId, s: state.childState, d: state.deadline, ...continuation })).toString("base64url");
    return `${VERSION}.${body}.${this.mac(body, binding)}`;
  }

  /** The state if `token` was sealed here for `binding` and its deadline has not passed; otherwise why not. */
  open(token: string, binding: StateBinding, now: number): { ok: true; state: SealedState } | { ok: false; problem: string } {
    const [version, body, mac, extra] = token.split(".");
    if (version !== VERSION || body === undefined || mac === undefined || extra !== undefined) return { ok: false, problem: "requestState is not one this broker issued" };
    const expected = Buffer.from(this.mac(body, binding));
    const given = Buffer.from(mac);
    // One answer for a forged state, another grant's, and a retry of another method or other params: none is this request's.
    if (expected.length !== given.length || !timingSafeEqual(expected, given)) {
      return { ok: false, problem: "requestState does not belong to this request (tampered, another sign-in's, or the method or params differ)" };
    }
    const { c, s, d, r, k } = JSON.parse(Buffer.from(body, "base64url").toString()) as { c?: string; s?: string; d: number; r?: string; k?: string[] };
    if (now > d) return { ok: false, problem: "requestState has expired" };
    return { ok: true, state: s !== undefined ? { childState: s, deadline: d } : { continuationId: c!, deadline: d, holder: r, asked: k } };
  }

  private mac(body: string, binding: StateBinding): string {
    const bound = JSON.stringify([VERSION, binding.grantId, binding.method, binding.paramsHash, body]);
    return createHmac("sha256", this.key).update(bound).digest("base64url");
  }
}

// The MRTR requestState a modern caller echoes on its retry: HMAC-sealed, bound to the grant, the original
// method and params (a hash) and a deadline; it points to the broker's continuation, or wraps a modern child's own requestState.
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * What a requestState stands for, as the broker sealed it: the continuation (a legacy child's call kept
 * open) the retry resumes, or a modern child's own requestState, handed back to it on the retry.
 */
export type SealedState = { continuationId: string; childState?: undefined; deadline: number } | { childState: string; continuationId?: undefined; deadline: number };

/** What a retry must match: who sends it, and the request it repeats. */
export interface StateBinding {
  grantId: string;
  method: string;
  paramsHash: string;
}

const VERSION = "m1";
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
 * Seals and opens requestStates. The key is random per process: a continuation is a call held open on
 * one broker's child, so a state from before a restart (or from another replica) has nothing to resume
 * and is refused like a forged one.
 */
export class RequestStateSealer {
  constructor(private readonly key: Uint8Array = randomBytes(32)) {}

  seal(state: SealedState, binding: StateBinding): string {
    const body = Buffer.from(JSON.stringify({ c: state.continuationId, s: state.childState, d: state.deadline })).toString("base64url");
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
    const { c, s, d } = JSON.parse(Buffer.from(body, "base64url").toString()) as { c?: string; s?: string; d: number };
    if (now > d) return { ok: false, problem: "requestState has expired" };
    return { ok: true, state: s !== undefined ? { childState: s, deadline: d } : { continuationId: c!, deadline: d } };
  }

  private mac(body: string, binding: StateBinding): string {
    const bound = JSON.stringify([VERSION, binding.grantId, binding.method, binding.paramsHash, body]);
    return createHmac("sha256", this.key).update(bound).digest("base64url");
  }
}

// The replica-to-replica hop's proof: an HMAC over method, path, session id and a timestamp, keyed by a key
// derived from the sealing key (HKDF, its own purpose label), so only a replica can mark a request as forwarded.
import { createHash, createHmac, hkdfSync } from "node:crypto";
import { constantTimeEqual } from "../crypto.ts";

export const HOP_HEADER = "x-fmb-replica-hop";
/** A forwarded request older (or further ahead) than this is refused: a captured header is not replayable for long. */
export const HOP_MAX_SKEW_MS = 30_000;
const PURPOSE = "forgejo-mcp-broker replica hop v1";

/** The hop key: never the sealing key itself, so a leaked hop key unseals nothing. */
export function hopKeyFrom(sealingKey: Uint8Array): Uint8Array {
  return new Uint8Array(hkdfSync("sha256", sealingKey, new Uint8Array(0), PURPOSE, 32));
}

export interface HopTarget {
  method: string;
  path: string;
  /** The session the request is for, or for a request of no session (an MRTR retry) its bodySubject. */
  sessionId: string;
}

/** What a hop of no session is bound to: its body, so a captured header carries no other request. */
export function bodySubject(body: string): string {
  return `body:${createHash("sha256").update(body).digest("base64url")}`;
}

function mac(key: Uint8Array, target: HopTarget, timestampMs: number): string {
  return createHmac("sha256", key).update(`${target.method.toUpperCase()}\n${target.path}\n${target.sessionId}\n${timestampMs}`).digest("base64url");
}

export function signHop(key: Uint8Array, target: HopTarget, nowMs: number): string {
  return `t=${nowMs}, sig=${mac(key, target, nowMs)}`;
}

export type HopVerdict = "ok" | "stale" | "invalid";

export function verifyHop(key: Uint8Array, header: string, target: HopTarget, nowMs: number): HopVerdict {
  const parts = /^t=(\d{1,15}), sig=([A-Za-z0-9_-]{43})$/.exec(header);
  if (parts === null) return "invalid";
  const timestampMs = Number(parts[1]);
  if (!constantTimeEqual(parts[2]!, mac(key, target, timestampMs))) return "invalid";
  return Math.abs(nowMs - timestampMs) > HOP_MAX_SKEW_MS ? "stale" : "ok";
}

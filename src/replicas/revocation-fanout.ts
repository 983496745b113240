// Revocation across replicas: a grant revoked here is announced on one Redis channel, and an
// announcement from another replica is handed to this replica's own revocation path.
import type { Logger } from "../log.ts";
import { parseJsonObject } from "./json-object.ts";

/** What travels on the channel: the grant (an id, never a token) and who revoked it, so a replica skips its own. */
export interface RevocationNotice {
  replica: string;
  grantId: string;
}

export function encodeRevocation(notice: RevocationNotice): string {
  return JSON.stringify({ replica: notice.replica, grant: notice.grantId });
}

/** The notice in a channel message; undefined for anything else (another version, a stray publish). */
export function decodeRevocation(message: string): RevocationNotice | undefined {
  const parsed = parseJsonObject(message);
  if (parsed === undefined) return undefined;
  const { replica, grant } = parsed;
  if (typeof replica !== "string" || typeof grant !== "string" || grant === "") return undefined;
  return { replica, grantId: grant };
}

export interface RevocationFanoutDeps {
  replicaId: string;
  /** Sends a message on the revocation channel; rejects when Redis cannot take it. */
  publish: (message: string) => Promise<unknown>;
  /** This replica's handling of a grant revoked elsewhere. */
  revokedElsewhere: (grantId: string) => void;
  logger: Logger;
}

/** Revocations kept for a Redis that is down; past this the oldest is given up (its tokens still fail every bearer check). */
export const MAX_UNANNOUNCED = 1_000;

export class RevocationFanout {
  /** Grants revoked here while Redis could not take the notice: announced when it is back. */
  private readonly unannounced = new Set<string>();

  constructor(private readonly deps: RevocationFanoutDeps) {}

  /** A grant was revoked on this replica (already handled here): tell the others. Never throws. */
  announce(grantId: string): void {
    this.deps.publish(encodeRevocation({ replica: this.deps.replicaId, grantId })).catch((error: unknown) => {
      this.unannounced.add(grantId);
      if (this.unannounced.size > MAX_UNANNOUNCED) this.unannounced.delete(this.unannounced.values().next().value!);
      this.deps.logger.warn("revocation not yet announced to other replicas: Redis unavailable; announcing it when Redis is back", {
        grant_id: grantId,
        error: error instanceof Error ? error.message : String(error),
      });
    });
  }

  /** How many revocations wait for Redis. */
  get waiting(): number {
    return this.unannounced.size;
  }

  /** Runs on each (re)connection, with that connection's publish: the revocations Redis missed go out now. */
  async announceMissed(publish: (message: string) => Promise<unknown>): Promise<void> {
    for (const grantId of [...this.unannounced]) {
      await publish(encodeRevocation({ replica: this.deps.replicaId, grantId }));
      this.unannounced.delete(grantId);
    }
  }

  /** The subscriber's listener: a notice from another replica is handled here; its own and malformed ones are not. */
  readonly heard = (message: string): void => {
    const notice = decodeRevocation(message);
    if (notice === undefined) {
      this.deps.logger.warn("ignored a malformed message on the revocation channel");
      return;
    }
    if (notice.replica === this.deps.replicaId) return;
    this.deps.revokedElsewhere(notice.grantId);
  };
}

// Revocation across replicas: a grant revoked here is announced on one Redis channel, and an
// announcement from another replica is handed to this replica's own revocation path.
import type { Logger } from "../log.ts";

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
  let parsed: unknown;
  try {
    parsed = JSON.parse(message);
  } catch {
    return undefined;
  }
  if (typeof parsed !== "object" || parsed === null) return undefined;
  const { replica, grant } = parsed as Record<string, unknown>;
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

export class RevocationFanout {
  constructor(private readonly deps: RevocationFanoutDeps) {}

  /** A grant was revoked on this replica (already handled here): tell the others. Never throws. */
  announce(grantId: string): void {
    this.deps.publish(encodeRevocation({ replica: this.deps.replicaId, grantId })).catch((error: unknown) => {
      // The revocation holds in the database; other replicas' sessions of the grant run on until their own checks end them.
      this.deps.logger.error("revocation not announced to other replicas: Redis unavailable", {
        grant_id: grantId,
        error: error instanceof Error ? error.message : String(error),
      });
    });
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

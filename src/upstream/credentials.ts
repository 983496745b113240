// The one sealed upstream Forgejo credential per Forgejo user: stored at sign-in, handed out unsealed,
// refreshed by one caller at a time and stored before use, dropped with the user's grants when Forgejo says no.
import type { TokenSealer } from "../crypto.ts";
import type { Logger } from "../log.ts";
import type { LockedCredentialWork, Store, UpstreamCredentialRow } from "../store/store.ts";
import type { Timers } from "../supervisor/timers.ts";
import { waitAtMost } from "./deadline.ts";
import { forgejoTimedOut, UpstreamRefusedError, type ForgejoClient, type ForgejoUser, type UpstreamTokens } from "./forgejo.ts";
import { earliestRefreshAt, refreshDueAt, type RefreshTiming } from "./refresh-timing.ts";

export interface UpstreamAccess {
  accessToken: string;
  accessExpiresAt: number | null;
}

/** "when-due": only if the stored pair is due; "forced": unless it was stored within the minimum spacing. */
type RefreshUrgency = "when-due" | "forced";

export type CredentialLossReason = "missing" | "refused" | "unreadable";

/** The user has no usable Forgejo credential any more: their grants are revoked, they must sign in again. */
export class UpstreamCredentialLostError extends Error {
  constructor(
    readonly forgejoUserId: number,
    readonly reason: CredentialLossReason,
    readonly revokedGrantIds: string[],
    /** Forgejo's OAuth error code when it refused the refresh. */
    readonly upstreamCode: string | null = null,
  ) {
    super(`Forgejo credential of user ${forgejoUserId} is gone (${reason}${upstreamCode ? `: ${upstreamCode}` : ""})`);
    this.name = "UpstreamCredentialLostError";
  }
}

export type CredentialEvent =
  | { type: "rotated"; forgejoUserId: number; accessExpiresAt: number | null }
  | { type: "lost"; forgejoUserId: number; reason: CredentialLossReason; revokedGrantIds: string[] };

/** What a refresh under the credential's lock came to; its consequences are drawn once the lock is released. */
type RefreshOutcome =
  | { kind: "current"; row: UpstreamCredentialRow }
  | { kind: "refreshed"; tokens: UpstreamTokens }
  | { kind: "refused"; row: UpstreamCredentialRow; code: string }
  | { kind: "lost"; reason: CredentialLossReason };

export interface UpstreamCredentialsOptions {
  store: Store;
  sealer: TokenSealer;
  forgejo: Pick<ForgejoClient, "refresh">;
  logger: Logger;
  now: () => number;
  /** How long a caller waits for a refresh; the refresh itself runs on and is stored when it ends. */
  waitMs: number;
  timers: Pick<Timers, "setTimeout" | "clearTimeout">;
  /** When a stored pair is due for a refresh, and how soon after the last one a refresh may come. */
  timing: RefreshTiming;
}

// The associated data ties each ciphertext to its user and its role, so a sealed token copied into
// another row or the other column fails to unseal instead of being used as someone else's token.
const accessAad = (forgejoUserId: number) => `upstream:${forgejoUserId}:access`;
const refreshAad = (forgejoUserId: number) => `upstream:${forgejoUserId}:refresh`;

export class UpstreamCredentials {
  /** Forgejo retires a refresh token when it is used, so two refreshes of one user would cost them their grant. */
  private readonly inFlight = new Map<number, Promise<UpstreamAccess>>();
  private readonly listeners = new Set<(event: CredentialEvent) => void>();

  constructor(private readonly options: UpstreamCredentialsOptions) {}

  /** After a code exchange: the new pair replaces the user's credential, which Forgejo has just retired. */
  async saveFromSignIn(user: ForgejoUser, tokens: UpstreamTokens): Promise<void> {
    const { sealer, store, now } = this.options;
    await store.putUpstreamCredential({
      forgejoUserId: user.id,
      forgejoLogin: user.login,
      accessTokenSealed: await sealer.sealUpstreamToken(tokens.accessToken, accessAad(user.id)),
      refreshTokenSealed: tokens.refreshToken === null ? null : await sealer.sealUpstreamToken(tokens.refreshToken, refreshAad(user.id)),
      accessExpiresAt: tokens.accessExpiresAt,
      updatedAt: now(),
    });
    this.emit({ type: "rotated", forgejoUserId: user.id, accessExpiresAt: tokens.accessExpiresAt });
  }

  /** The user's access token, refreshed first when its refresh is due (refresh-timing's rule). */
  async accessTokenFor(forgejoUserId: number): Promise<UpstreamAccess> {
    const row = await this.options.store.getUpstreamCredential(forgejoUserId);
    if (row && !this.isDue(row, "when-due")) return this.unsealAccess(row);
    return this.waitFor(this.singleFlight(forgejoUserId, "when-due"));
  }

  /**
   * A refresh now, whatever the expiry (the data plane rotating a child's token); joins one in flight.
   * A pair stored less than the minimum spacing ago is handed out instead: it is as new as a refresh would give.
   */
  async refreshNow(forgejoUserId: number): Promise<UpstreamAccess> {
    return this.waitFor(this.singleFlight(forgejoUserId, "forced"));
  }

  /**
   * A stalled Forgejo must not hold session starts for minutes. The flight is not abandoned: it stays
   * the user's one refresh until Forgejo answers, so no second refresh spends the token it carries,
   * and a late new pair is stored as usual instead of being lost with the retired one.
   */
  private waitFor(flight: Promise<UpstreamAccess>): Promise<UpstreamAccess> {
    const { waitMs, timers } = this.options;
    return waitAtMost(flight, waitMs, timers, () => forgejoTimedOut("Forgejo's token endpoint (refreshing the user's token)", waitMs));
  }

  /** Learns of every new token and every loss; returns the unsubscribe function. */
  onChange(listener: (event: CredentialEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private singleFlight(forgejoUserId: number, urgency: RefreshUrgency): Promise<UpstreamAccess> {
    const running = this.inFlight.get(forgejoUserId);
    if (running) return running;
    const flight = this.refresh(forgejoUserId, urgency).finally(() => this.inFlight.delete(forgejoUserId));
    this.inFlight.set(forgejoUserId, flight);
    return flight;
  }

  /**
   * Refreshes with the user's credential locked against every other replica's refresh of it: the row is
   * read again under the lock and refreshed only if still due, so a replica that lost the race uses the
   * pair the winner stored. What follows from the outcome (a loss revokes grants) runs after the lock.
   */
  private async refresh(forgejoUserId: number, urgency: RefreshUrgency): Promise<UpstreamAccess> {
    const { store, sealer, forgejo, now, logger } = this.options;
    const { result: outcome, stored } = await store.withUpstreamCredentialLocked(forgejoUserId, async (row): Promise<LockedCredentialWork<RefreshOutcome>> => {
      if (!row) return { result: { kind: "lost", reason: "missing" } };
      // Another writer (a replica, a sign-in) may have stored a fresh pair since the caller looked.
      if (!this.isDue(row, urgency)) return { result: { kind: "current", row } };
      if (row.refreshTokenSealed === null) return { result: { kind: "lost", reason: "missing" } };
      let refreshToken: string;
      try {
        refreshToken = await sealer.unsealUpstreamToken(row.refreshTokenSealed, refreshAad(forgejoUserId));
      } catch {
        return { result: { kind: "lost", reason: "unreadable" } };
      }
      let tokens: UpstreamTokens;
      try {
        tokens = await forgejo.refresh(refreshToken);
      } catch (error) {
        if (!(error instanceof UpstreamRefusedError)) throw error;
        return { result: { kind: "refused", row, code: error.code } };
      }
      // Stored before anyone uses it: a new pair we failed to keep would leave only retired tokens behind.
      const update = {
        accessTokenSealed: await sealer.sealUpstreamToken(tokens.accessToken, accessAad(forgejoUserId)),
        refreshTokenSealed: tokens.refreshToken === null ? row.refreshTokenSealed : await sealer.sealUpstreamToken(tokens.refreshToken, refreshAad(forgejoUserId)),
        accessExpiresAt: tokens.accessExpiresAt,
        updatedAt: now(),
      };
      return { result: { kind: "refreshed", tokens }, update };
    });

    switch (outcome.kind) {
      case "lost":
        return this.lose(forgejoUserId, outcome.reason);
      case "current":
        return this.unsealAccess(outcome.row);
      case "refused": {
        // A sign-in during our request retires the token we sent: the newer row is good, keep it.
        const current = await store.getUpstreamCredential(forgejoUserId);
        if (current && current.version !== outcome.row.version) return this.unsealAccess(current);
        return this.lose(forgejoUserId, "refused", outcome.code);
      }
      case "refreshed": {
        const { tokens } = outcome;
        if (!stored) {
          // Someone stored a newer credential meanwhile (a sign-in); it supersedes ours, so use it.
          logger.info("upstream refresh superseded by a newer credential", { forgejo_user_id: forgejoUserId });
          const current = await store.getUpstreamCredential(forgejoUserId);
          if (!current) return this.lose(forgejoUserId, "missing");
          return this.unsealAccess(current);
        }
        logger.info("upstream credential refreshed", { forgejo_user_id: forgejoUserId, access_expires_at: tokens.accessExpiresAt });
        this.emit({ type: "rotated", forgejoUserId, accessExpiresAt: tokens.accessExpiresAt });
        return { accessToken: tokens.accessToken, accessExpiresAt: tokens.accessExpiresAt };
      }
    }
  }

  /** The pair was stored (issued) at updatedAt: that and its expiry give its lifetime, and the last refresh. */
  private isDue(row: UpstreamCredentialRow, urgency: RefreshUrgency): boolean {
    const { timing, now } = this.options;
    if (urgency === "forced") return now() >= earliestRefreshAt(row.updatedAt, timing);
    return row.accessExpiresAt !== null && now() >= refreshDueAt(row.updatedAt, row.accessExpiresAt, timing);
  }

  private async unsealAccess(row: UpstreamCredentialRow): Promise<UpstreamAccess> {
    let accessToken: string;
    try {
      accessToken = await this.options.sealer.unsealUpstreamToken(row.accessTokenSealed, accessAad(row.forgejoUserId));
    } catch {
      return this.lose(row.forgejoUserId, "unreadable");
    }
    return { accessToken, accessExpiresAt: row.accessExpiresAt };
  }

  /** Without a usable credential the user's grants would only lead to failing sessions: revoke them, so the client re-authorizes. */
  private async lose(forgejoUserId: number, reason: CredentialLossReason, upstreamCode: string | null = null): Promise<never> {
    const { store, now, logger } = this.options;
    await store.deleteUpstreamCredential(forgejoUserId);
    const revokedGrantIds = await store.revokeGrantsOfUser(forgejoUserId, now());
    logger.warn("upstream credential lost; grants revoked", {
      forgejo_user_id: forgejoUserId,
      reason,
      upstream_error: upstreamCode,
      revoked_grants: revokedGrantIds.length,
    });
    this.emit({ type: "lost", forgejoUserId, reason, revokedGrantIds });
    throw new UpstreamCredentialLostError(forgejoUserId, reason, revokedGrantIds, upstreamCode);
  }

  private emit(event: CredentialEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch (error) {
        this.options.logger.error("credential listener failed", { event: event.type, error: error instanceof Error ? error : String(error) });
      }
    }
  }
}

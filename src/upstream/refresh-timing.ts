// When a user's upstream Forgejo token is due for a refresh: the configured lead before it expires, cut
// to half the token's lifetime, and never sooner than a minimum spacing after the token was issued.

/** Two refreshes of one user are at least this far apart, whatever the expiry says. */
export const MIN_REFRESH_INTERVAL_MS = 5_000;

export interface RefreshTiming {
  /** How long before expiry a token is refreshed (BROKER_REFRESH_LEAD_S). */
  leadMs: number;
  /** The least time between a token's issuance and its refresh. */
  minIntervalMs: number;
}

/** The earliest a token issued at `issuedAt` may be refreshed, even when something forces a refresh. */
export function earliestRefreshAt(issuedAt: number, timing: RefreshTiming): number {
  return issuedAt + timing.minIntervalMs;
}

/**
 * When a token issued at `issuedAt` and expiring at `expiresAt` (epoch ms) is due for a refresh. A lead
 * as long as the token's whole life would make every new token due the moment it arrives, so the lead
 * is at most half the lifetime: a token living 20 s is refreshed after about 10 s.
 */
export function refreshDueAt(issuedAt: number, expiresAt: number, timing: RefreshTiming): number {
  const lifetime = Math.max(0, expiresAt - issuedAt);
  const lead = Math.min(timing.leadMs, Math.floor(lifetime / 2));
  return Math.max(expiresAt - lead, earliestRefreshAt(issuedAt, timing));
}

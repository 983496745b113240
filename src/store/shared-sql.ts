// The conditions both dialects write the same way in SQL: whether a grant is live, whether a client
// is in use or signing in, and whether a revoked grant still has rows that need it. Kept once so they cannot drift.
import { sql, type Column } from "drizzle-orm";

/** Inside an exchange's UPDATE: the code's or token's grant was not revoked meanwhile. */
export function grantIsLive(grantId: Column) {
  return sql`EXISTS (SELECT 1 FROM grants WHERE grants.id = ${grantId} AND grants.revoked_at IS NULL)`;
}

/** The client holds something live at `now`: an unexpired, unrevoked access token, unrotated refresh token or unused code of an active grant. */
export function clientInUse(clientId: Column, now: number) {
  return sql`(
      EXISTS (SELECT 1 FROM access_tokens a JOIN grants g ON g.id = a.grant_id
              WHERE g.client_id = ${clientId} AND g.revoked_at IS NULL AND a.revoked_at IS NULL AND a.expires_at > ${now})
      OR EXISTS (SELECT 1 FROM refresh_tokens r JOIN grants g ON g.id = r.grant_id
              WHERE g.client_id = ${clientId} AND g.revoked_at IS NULL AND r.revoked_at IS NULL AND r.rotated_at IS NULL AND r.expires_at > ${now})
      OR EXISTS (SELECT 1 FROM auth_codes k JOIN grants g ON g.id = k.grant_id
              WHERE g.client_id = ${clientId} AND g.revoked_at IS NULL AND k.used_at IS NULL AND k.expires_at > ${now}))`;
}

/** A sign-in of the client is in progress at `now`. */
export function clientSigningIn(clientId: Column, now: number) {
  return sql`EXISTS (SELECT 1 FROM authorizations z WHERE z.client_id = ${clientId} AND z.consumed_at IS NULL AND z.expires_at > ${now})`;
}

/** A revoked grant nothing needs any more: no refresh token (kept for replay detection) and no code refers to it. */
export function revokedGrantUnreferenced(revokedAt: Column, grantId: Column) {
  return sql`${revokedAt} IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM refresh_tokens WHERE refresh_tokens.grant_id = ${grantId})
    AND NOT EXISTS (SELECT 1 FROM auth_codes WHERE auth_codes.grant_id = ${grantId})`;
}

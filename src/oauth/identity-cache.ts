// Remembers, for a few seconds, which identity a live access token hash stands for, so that the
// bearer guard does not ask the database again on every /mcp message of a busy session.
import type { Store, TokenIdentity } from "../store/store.ts";

export interface AccessIdentityCacheOptions {
  /**
   * How long an answer is trusted. Revocations made through this process's store end it at once, and
   * so do other replicas' on PostgreSQL (announced to the store); this bound is for any other writer.
   */
  ttlMs: number;
  /** Beyond this many tokens the oldest answer is forgotten, so memory stays bounded. */
  maxEntries: number;
}

export const DEFAULT_IDENTITY_CACHE: AccessIdentityCacheOptions = { ttlMs: 5_000, maxEntries: 10_000 };

interface CachedIdentity {
  identity: TokenIdentity;
  /** Never past the token's own expiry, so an expired token is refused to the millisecond. */
  validUntil: number;
  revocationCount: number;
}

export class AccessIdentityCache {
  private readonly entries = new Map<string, CachedIdentity>();
  /** How many grants other replicas have revoked: a lookup that saw one land while it asked keeps no answer. */
  private forgottenGrants = 0;

  constructor(
    private readonly store: Pick<Store, "findAccessIdentity" | "revocationCount">,
    private readonly options: AccessIdentityCacheOptions = DEFAULT_IDENTITY_CACHE,
  ) {}

  /** The identity behind a live access token, or undefined for unknown, expired or revoked ones. */
  async lookup(tokenHash: string, now: number): Promise<TokenIdentity | undefined> {
    const cached = this.entries.get(tokenHash);
    if (cached !== undefined && now < cached.validUntil && cached.revocationCount === this.store.revocationCount) return cached.identity;
    if (cached !== undefined) this.entries.delete(tokenHash);
    const revocationCount = this.store.revocationCount;
    const forgottenBefore = this.forgottenGrants;
    const identity = await this.store.findAccessIdentity(tokenHash, now);
    if (identity === undefined) return undefined;
    // Its answer may predate that revocation (forgetGrant found nothing to forget yet): not kept.
    if (this.forgottenGrants !== forgottenBefore) return identity;
    if (this.entries.size >= this.options.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(tokenHash, { identity, validUntil: Math.min(now + this.options.ttlMs, identity.expiresAt), revocationCount });
    return identity;
  }

  /** A grant was revoked by another replica, which this store's counter never sees: its tokens are looked up again. */
  forgetGrant(grantId: string): void {
    this.forgottenGrants++;
    for (const [tokenHash, cached] of this.entries) if (cached.identity.grantId === grantId) this.entries.delete(tokenHash);
  }
}

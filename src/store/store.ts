// The broker's repository functions over Drizzle and bun:sqlite: every read and write of OAuth
// state goes through here, and every single-use rule is one atomic statement, never read-then-write.
import { Database } from "bun:sqlite";
import { and, desc, eq, gt, isNull, lt, notInArray, sql } from "drizzle-orm";
import { drizzle, type BunSQLiteDatabase } from "drizzle-orm/bun-sqlite";
import { migrate } from "drizzle-orm/bun-sqlite/migrator";
import { join } from "node:path";
import * as schema from "./schema.ts";

export type ClientRow = typeof schema.clients.$inferSelect;
export type AuthorizationRow = typeof schema.authorizations.$inferSelect;
export type GrantRow = typeof schema.grants.$inferSelect;
export type AuthCodeRow = typeof schema.authCodes.$inferSelect;
export type AccessTokenRow = typeof schema.accessTokens.$inferSelect;
export type RefreshTokenRow = typeof schema.refreshTokens.$inferSelect;
export type UpstreamCredentialRow = typeof schema.upstreamCredentials.$inferSelect;

/** What the bearer guard hands to a protected route. */
export interface TokenIdentity {
  grantId: string;
  clientId: string;
  forgejoUserId: number;
  forgejoLogin: string;
  scopes: string[];
  resource: string;
  expiresAt: number;
}

export type CodeRedemption =
  | { status: "redeemed"; code: AuthCodeRow }
  | { status: "replayed"; code: AuthCodeRow }
  | { status: "expired" | "unknown" };

export type RefreshRotation =
  | { status: "rotated"; token: RefreshTokenRow }
  | { status: "replayed"; token: RefreshTokenRow; grantRevoked: boolean }
  | { status: "invalid" };

export interface IssuedTokenHashes {
  grantId: string;
  familyId: string;
  clientId: string;
  resource: string;
  scope: string;
  accessTokenHash: string;
  accessExpiresAt: number;
  refreshTokenHash: string;
  refreshExpiresAt: number;
}

const MIGRATIONS = join(import.meta.dir, "..", "..", "drizzle");

/** Opens (creating if needed) the SQLite file and brings its schema up to date. */
export function openSqlite(path: string): Database {
  const db = new Database(path, { create: true, strict: true });
  db.exec("PRAGMA journal_mode = WAL");
  db.exec("PRAGMA busy_timeout = 5000");
  db.exec("PRAGMA foreign_keys = ON");
  db.exec("PRAGMA synchronous = NORMAL");
  return db;
}

export class Store {
  readonly db: BunSQLiteDatabase<typeof schema>;

  constructor(private readonly sqlite: Database) {
    this.db = drizzle({ client: sqlite, schema });
    migrate(this.db, { migrationsFolder: MIGRATIONS });
    this.accessIdentityQuery = this.prepareAccessIdentityQuery();
    this.upstreamCredentialQuery = this.db
      .select()
      .from(schema.upstreamCredentials)
      .where(eq(schema.upstreamCredentials.forgejoUserId, sql.placeholder("forgejoUserId")))
      .prepare();
    this.liveAccessTokenQuery = this.prepareLiveTokenQuery(schema.accessTokens);
    this.liveRefreshTokenQuery = this.prepareLiveTokenQuery(schema.refreshTokens);
  }

  /** Every /mcp request runs this lookup: prepared once, not rebuilt and recompiled per request. */
  private readonly accessIdentityQuery;
  /** Every new session reads its user's Forgejo credential: prepared once as well. */
  private readonly upstreamCredentialQuery;
  /** Every session start asks whether its grant is still live: prepared once as well. */
  private readonly liveAccessTokenQuery;
  private readonly liveRefreshTokenQuery;
  private revocations = 0;
  private readonly revocationListeners = new Set<(grantId: string) => void>();

  /** Goes up whenever this store revokes an access token, so a cache of identities knows to look again. */
  get revocationCount(): number {
    return this.revocations;
  }

  /**
   * Hears the grant of every revocation once it is committed, whatever asked for it (RFC 7009, a
   * replayed code or refresh token, a lost upstream credential); returns the unsubscribe function.
   */
  onRevocation(listener: (grantId: string) => void): () => void {
    this.revocationListeners.add(listener);
    return () => this.revocationListeners.delete(listener);
  }

  /** The one place a committed revocation is marked: the identity cache's counter and the listeners. */
  private revoked(grantId: string): void {
    this.revocations++;
    for (const listener of this.revocationListeners) listener(grantId);
  }

  private prepareAccessIdentityQuery() {
    const a = schema.accessTokens;
    const g = schema.grants;
    return this.db
      .select({
        grantId: a.grantId,
        clientId: a.clientId,
        scope: a.scope,
        resource: a.resource,
        expiresAt: a.expiresAt,
        forgejoUserId: g.forgejoUserId,
        forgejoLogin: g.forgejoLogin,
      })
      .from(a)
      .innerJoin(g, eq(g.id, a.grantId))
      .where(
        and(
          eq(a.tokenHash, sql.placeholder("tokenHash")),
          isNull(a.revokedAt),
          gt(a.expiresAt, sql.placeholder("now")),
          isNull(g.revokedAt),
        ),
      )
      .prepare();
  }

  static open(path: string): Store {
    return new Store(openSqlite(path));
  }

  close(): void {
    this.sqlite.close();
  }

  /** For health checks: a query that touches the file. */
  ping(): void {
    this.sqlite.query("SELECT count(*) FROM clients").get();
  }

  // Clients

  createClient(row: ClientRow): void {
    this.db.insert(schema.clients).values(row).run();
  }

  getClient(id: string): ClientRow | undefined {
    return this.db.select().from(schema.clients).where(eq(schema.clients.id, id)).get();
  }

  // Browser flows

  /**
   * Starts a browser flow and keeps only that browser's `maxPerBrowser` newest unfinished ones, so
   * one browser cookie cannot pile rows up however often it opens the authorize URL.
   */
  createAuthorization(row: AuthorizationRow, maxPerBrowser: number): void {
    const t = schema.authorizations;
    this.db.transaction((tx) => {
      tx.insert(t).values(row).run();
      const unfinished = and(eq(t.browserHash, row.browserHash), isNull(t.consumedAt));
      const newest = tx.select({ id: t.id }).from(t).where(unfinished).orderBy(desc(t.createdAt), desc(sql`rowid`)).limit(maxPerBrowser);
      tx.delete(t).where(and(unfinished, notInArray(t.id, newest))).run();
    });
  }

  getAuthorization(id: string, now: number): AuthorizationRow | undefined {
    const t = schema.authorizations;
    return this.db
      .select()
      .from(t)
      .where(and(eq(t.id, id), isNull(t.consumedAt), gt(t.expiresAt, now)))
      .get();
  }

  /** Records the user's Allow: only once, and only while the flow is live. */
  allowAuthorization(id: string, upstreamStateHash: string, upstreamVerifierSealed: string, now: number): boolean {
    const t = schema.authorizations;
    const updated = this.db
      .update(t)
      .set({ upstreamStateHash, upstreamVerifierSealed })
      .where(and(eq(t.id, id), isNull(t.consumedAt), isNull(t.upstreamStateHash), gt(t.expiresAt, now)))
      .returning({ id: t.id })
      .all();
    return updated.length === 1;
  }

  /** Ends a flow (Deny); returns it if it was live. */
  consumeAuthorization(id: string, now: number): AuthorizationRow | undefined {
    const t = schema.authorizations;
    return this.db
      .update(t)
      .set({ consumedAt: now })
      .where(and(eq(t.id, id), isNull(t.consumedAt), gt(t.expiresAt, now)))
      .returning()
      .get();
  }

  /** Forgejo's callback: the state is single-use, so the first caller wins and replays find nothing. */
  consumeAuthorizationByUpstreamState(upstreamStateHash: string, now: number): AuthorizationRow | undefined {
    const t = schema.authorizations;
    return this.db
      .update(t)
      .set({ consumedAt: now })
      .where(and(eq(t.upstreamStateHash, upstreamStateHash), isNull(t.consumedAt), gt(t.expiresAt, now)))
      .returning()
      .get();
  }

  // Grants

  /** The active grant of (client, Forgejo user), created when there is none. */
  findOrCreateGrant(input: { id: string; clientId: string; forgejoUserId: number; forgejoLogin: string; scope: string; now: number }): GrantRow {
    const t = schema.grants;
    return this.db.transaction((tx) => {
      const existing = tx
        .select()
        .from(t)
        .where(and(eq(t.clientId, input.clientId), eq(t.forgejoUserId, input.forgejoUserId), isNull(t.revokedAt)))
        .get();
      if (existing) {
        return tx
          .update(t)
          .set({ forgejoLogin: input.forgejoLogin, scope: input.scope })
          .where(eq(t.id, existing.id))
          .returning()
          .get()!;
      }
      const row: GrantRow = {
        id: input.id,
        clientId: input.clientId,
        forgejoUserId: input.forgejoUserId,
        forgejoLogin: input.forgejoLogin,
        scope: input.scope,
        createdAt: input.now,
        revokedAt: null,
      };
      tx.insert(t).values(row).run();
      return row;
    });
  }

  getGrant(id: string): GrantRow | undefined {
    return this.db.select().from(schema.grants).where(eq(schema.grants.id, id)).get();
  }

  /** Revokes a grant and every token issued under it. */
  revokeGrant(grantId: string, now: number): void {
    this.db.transaction((tx) => {
      tx.update(schema.grants).set({ revokedAt: now }).where(and(eq(schema.grants.id, grantId), isNull(schema.grants.revokedAt))).run();
      tx.update(schema.accessTokens).set({ revokedAt: now }).where(and(eq(schema.accessTokens.grantId, grantId), isNull(schema.accessTokens.revokedAt))).run();
      tx.update(schema.refreshTokens).set({ revokedAt: now }).where(and(eq(schema.refreshTokens.grantId, grantId), isNull(schema.refreshTokens.revokedAt))).run();
    });
    this.revoked(grantId);
  }

  /**
   * Whether a client can still act under the grant: it holds a live access token, or a refresh
   * token that can still be exchanged for one. A rotated refresh token does not count: its successor does.
   */
  grantHasLiveTokens(grantId: string, now: number): boolean {
    return this.liveAccessTokenQuery.get({ grantId, now }) !== undefined || this.liveRefreshTokenQuery.get({ grantId, now }) !== undefined;
  }

  private prepareLiveTokenQuery(table: typeof schema.accessTokens | typeof schema.refreshTokens) {
    // Only refresh tokens rotate, and a rotated one lives on only in its successor.
    const unrotated = "rotatedAt" in table ? isNull(table.rotatedAt) : undefined;
    return this.db
      .select({ one: sql`1` })
      .from(table)
      .where(
        and(
          eq(table.grantId, sql.placeholder("grantId")),
          isNull(table.revokedAt),
          unrotated,
          gt(table.expiresAt, sql.placeholder("now")),
        ),
      )
      .limit(1)
      .prepare();
  }

  /** Revokes every active grant of a Forgejo user (their upstream credential is gone); returns the grant ids. */
  revokeGrantsOfUser(forgejoUserId: number, now: number): string[] {
    const active = this.db
      .select({ id: schema.grants.id })
      .from(schema.grants)
      .where(and(eq(schema.grants.forgejoUserId, forgejoUserId), isNull(schema.grants.revokedAt)))
      .all();
    for (const { id } of active) this.revokeGrant(id, now);
    return active.map((g) => g.id);
  }

  // Authorization codes

  createAuthCode(row: AuthCodeRow): void {
    this.db.insert(schema.authCodes).values(row).run();
  }

  /** Single use through one UPDATE … WHERE used_at IS NULL; a replay revokes what the first use issued. */
  redeemAuthCode(codeHash: string, now: number): CodeRedemption {
    const t = schema.authCodes;
    const redeemed = this.db
      .update(t)
      .set({ usedAt: now })
      .where(and(eq(t.codeHash, codeHash), isNull(t.usedAt), gt(t.expiresAt, now)))
      .returning()
      .get();
    if (redeemed) return { status: "redeemed", code: redeemed };
    const existing = this.db.select().from(t).where(eq(t.codeHash, codeHash)).get();
    if (!existing) return { status: "unknown" };
    if (existing.usedAt === null) return { status: "expired" };
    this.revokeFamily(existing.familyId, existing.grantId, now);
    return { status: "replayed", code: existing };
  }

  // Tokens

  insertTokenPair(issued: IssuedTokenHashes, now: number): void {
    const common = {
      grantId: issued.grantId,
      familyId: issued.familyId,
      clientId: issued.clientId,
      resource: issued.resource,
      scope: issued.scope,
      createdAt: now,
      revokedAt: null,
    };
    this.db.transaction((tx) => {
      tx.insert(schema.accessTokens)
        .values({ ...common, tokenHash: issued.accessTokenHash, expiresAt: issued.accessExpiresAt })
        .run();
      tx.insert(schema.refreshTokens)
        .values({ ...common, tokenHash: issued.refreshTokenHash, expiresAt: issued.refreshExpiresAt, rotatedAt: null })
        .run();
    });
  }

  /** The identity behind a live access token, or undefined for unknown, expired or revoked ones. */
  findAccessIdentity(tokenHash: string, now: number): TokenIdentity | undefined {
    const row = this.accessIdentityQuery.get({ tokenHash, now });
    if (!row) return undefined;
    const { scope, ...rest } = row;
    return { ...rest, scopes: scope.split(" ").filter(Boolean) };
  }

  /**
   * Marks a refresh token rotated in one statement, so of N concurrent callers exactly one wins.
   * A token rotated longer than `graceMs` ago and presented again is a replay: the grant is revoked.
   */
  rotateRefreshToken(tokenHash: string, clientId: string, now: number, graceMs: number): RefreshRotation {
    const r = schema.refreshTokens;
    const rotated = this.db
      .update(r)
      .set({ rotatedAt: now })
      .where(
        and(
          eq(r.tokenHash, tokenHash),
          eq(r.clientId, clientId),
          isNull(r.rotatedAt),
          isNull(r.revokedAt),
          gt(r.expiresAt, now),
          sql`EXISTS (SELECT 1 FROM grants WHERE grants.id = ${r.grantId} AND grants.revoked_at IS NULL)`,
        ),
      )
      .returning()
      .get();
    if (rotated) return { status: "rotated", token: rotated };
    const existing = this.db
      .select()
      .from(r)
      .where(and(eq(r.tokenHash, tokenHash), eq(r.clientId, clientId)))
      .get();
    if (!existing || existing.rotatedAt === null) return { status: "invalid" };
    const outsideGrace = now - existing.rotatedAt > graceMs;
    if (outsideGrace) this.revokeGrant(existing.grantId, now);
    return { status: "replayed", token: existing, grantRevoked: outsideGrace };
  }

  /** RFC 7009: revoking a refresh token ends its family; an access token ends alone. Unknown is fine. */
  revokeToken(tokenHash: string, clientId: string, now: number): "access" | "refresh" | "unknown" {
    const refresh = this.db
      .select({ familyId: schema.refreshTokens.familyId, grantId: schema.refreshTokens.grantId })
      .from(schema.refreshTokens)
      .where(and(eq(schema.refreshTokens.tokenHash, tokenHash), eq(schema.refreshTokens.clientId, clientId)))
      .get();
    if (refresh) {
      this.revokeFamily(refresh.familyId, refresh.grantId, now);
      return "refresh";
    }
    const access = this.db
      .update(schema.accessTokens)
      .set({ revokedAt: now })
      .where(and(eq(schema.accessTokens.tokenHash, tokenHash), eq(schema.accessTokens.clientId, clientId)))
      .returning({ grantId: schema.accessTokens.grantId })
      .get();
    if (!access) return "unknown";
    this.revoked(access.grantId);
    return "access";
  }

  private revokeFamily(familyId: string, grantId: string, now: number): void {
    this.db.transaction((tx) => {
      tx.update(schema.accessTokens).set({ revokedAt: now }).where(and(eq(schema.accessTokens.familyId, familyId), isNull(schema.accessTokens.revokedAt))).run();
      tx.update(schema.refreshTokens).set({ revokedAt: now }).where(and(eq(schema.refreshTokens.familyId, familyId), isNull(schema.refreshTokens.revokedAt))).run();
    });
    this.revoked(grantId);
  }

  // Upstream credentials

  getUpstreamCredential(forgejoUserId: number): UpstreamCredentialRow | undefined {
    return this.upstreamCredentialQuery.get({ forgejoUserId });
  }

  /** Stores a credential from a fresh sign-in: it replaces whatever the user had (Forgejo invalidated it). */
  putUpstreamCredential(row: Omit<UpstreamCredentialRow, "version">): UpstreamCredentialRow {
    const t = schema.upstreamCredentials;
    return this.db
      .insert(t)
      .values({ ...row, version: 1 })
      .onConflictDoUpdate({
        target: t.forgejoUserId,
        set: {
          forgejoLogin: row.forgejoLogin,
          accessTokenSealed: row.accessTokenSealed,
          refreshTokenSealed: row.refreshTokenSealed,
          accessExpiresAt: row.accessExpiresAt,
          updatedAt: row.updatedAt,
          version: sql`${t.version} + 1`,
        },
      })
      .returning()
      .get();
  }

  /** Stores a refreshed credential only if nobody else wrote since `expectedVersion` was read. */
  replaceUpstreamCredential(
    forgejoUserId: number,
    expectedVersion: number,
    next: Pick<UpstreamCredentialRow, "accessTokenSealed" | "refreshTokenSealed" | "accessExpiresAt" | "updatedAt">,
  ): UpstreamCredentialRow | undefined {
    const t = schema.upstreamCredentials;
    return this.db
      .update(t)
      .set({ ...next, version: expectedVersion + 1 })
      .where(and(eq(t.forgejoUserId, forgejoUserId), eq(t.version, expectedVersion)))
      .returning()
      .get();
  }

  deleteUpstreamCredential(forgejoUserId: number): void {
    this.db.delete(schema.upstreamCredentials).where(eq(schema.upstreamCredentials.forgejoUserId, forgejoUserId)).run();
  }

  // Housekeeping

  /** Deletes rows past their life; rotated and revoked tokens are kept until they expire, for replay detection. */
  purgeExpired(now: number): number {
    const a = schema.authorizations, c = schema.authCodes, at = schema.accessTokens, rt = schema.refreshTokens, g = schema.grants;
    return this.db.transaction((tx) => {
      let removed = tx.delete(a).where(lt(a.expiresAt, now)).returning({ id: a.id }).all().length;
      removed += tx.delete(c).where(lt(c.expiresAt, now)).returning({ id: c.codeHash }).all().length;
      removed += tx.delete(at).where(lt(at.expiresAt, now)).returning({ id: at.tokenHash }).all().length;
      removed += tx.delete(rt).where(lt(rt.expiresAt, now)).returning({ id: rt.tokenHash }).all().length;
      removed += tx
        .delete(g)
        .where(
          and(
            sql`${g.revokedAt} IS NOT NULL`,
            sql`NOT EXISTS (SELECT 1 FROM refresh_tokens WHERE refresh_tokens.grant_id = ${g.id})`,
            sql`NOT EXISTS (SELECT 1 FROM auth_codes WHERE auth_codes.grant_id = ${g.id})`,
          ),
        )
        .returning({ id: g.id })
        .all().length;
      return removed;
    });
  }
}

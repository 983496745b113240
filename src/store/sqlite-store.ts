// The embedded store, over Drizzle and bun:sqlite: one box's OAuth state in a file of its data directory.
// Its statements run synchronously inside each async method, so every method is atomic as it was.
import { Database } from "bun:sqlite";
import { and, desc, eq, gt, inArray, isNull, lt, notInArray, sql } from "drizzle-orm";
import { drizzle, type BunSQLiteDatabase } from "drizzle-orm/bun-sqlite";
import { migrate } from "drizzle-orm/bun-sqlite/migrator";
import { chmodSync, closeSync, existsSync, openSync } from "node:fs";
import { join } from "node:path";
import { clientInUse, clientSigningIn, grantIsLive, revokedGrantUnreferenced } from "./shared-sql.ts";
import * as schema from "./schema.ts";
import {
  exchangeCode,
  exchangeRefresh,
  type AuthCodeRow,
  type AuthorizationRow,
  type ClientRow,
  type CodeExchangeRequest,
  type Exchange,
  type ExchangeStatements,
  type GrantRow,
  type IssuedTokenHashes,
  type LockedCredentialWork,
  type NewClientRow,
  type RefreshExchangeRequest,
  type RefreshTokenRow,
  RevocationNotices,
  type RevocationListener,
  type Store,
  type TokenIdentity,
  type UpstreamCredentialRow,
  type UpstreamCredentialUpdate,
} from "./store.ts";

const MIGRATIONS = join(import.meta.dir, "..", "..", "drizzle");

/** Opens (creating if needed) the SQLite file and brings its schema up to date. */
export function openSqlite(path: string): Database {
  // Readable by the broker's user only. SQLite gives the -wal and -shm files it creates later the
  // database file's mode, so creating that one 0600 is enough; files an older version left 0644 are tightened.
  if (path !== ":memory:") {
    closeSync(openSync(path, "a", 0o600));
    for (const file of [path, `${path}-wal`, `${path}-shm`]) if (existsSync(file)) chmodSync(file, 0o600);
  }
  const db = new Database(path, { create: true, strict: true });
  db.exec("PRAGMA journal_mode = WAL");
  db.exec("PRAGMA busy_timeout = 5000");
  db.exec("PRAGMA foreign_keys = ON");
  db.exec("PRAGMA synchronous = NORMAL");
  return db;
}

export class SqliteStore implements Store, ExchangeStatements {
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
  private readonly revocations = new RevocationNotices();

  get revocationCount(): number {
    return this.revocations.count;
  }

  onRevocation(listener: RevocationListener): () => void {
    return this.revocations.listen(listener);
  }

  private revoked(grantId: string): void {
    this.revocations.committedFor(grantId);
  }

  private prepareAccessIdentityQuery() {
    const a = schema.accessTokens;
    const g = schema.grants;
    return this.db
      .select({
        tokenHash: a.tokenHash,
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

  static open(path: string): SqliteStore {
    return new SqliteStore(openSqlite(path));
  }

  async close(): Promise<void> {
    this.sqlite.close();
  }

  /** For health checks: a query that touches the file. */
  async ping(): Promise<void> {
    this.sqlite.query("SELECT count(*) FROM clients").get();
  }

  // Clients

  async createClient(row: NewClientRow): Promise<void> {
    this.db.insert(schema.clients).values(row).run();
  }

  async getClient(id: string): Promise<ClientRow | undefined> {
    return this.db.select().from(schema.clients).where(eq(schema.clients.id, id)).get();
  }

  /**
   * Keeps the client a metadata document describes, keyed by its URL: created on first sight, its
   * name, redirect URIs and metadata replaced by each fresh document; when it was first seen stays.
   */
  async putDocumentClient(row: NewClientRow): Promise<ClientRow> {
    const t = schema.clients;
    return this.db
      .insert(t)
      .values(row)
      .onConflictDoUpdate({
        target: t.id,
        set: { name: row.name, redirectUris: row.redirectUris, metadata: row.metadata, tokenEndpointAuthMethod: row.tokenEndpointAuthMethod, secretHash: null },
      })
      .returning()
      .get();
  }

  // Browser flows

  /**
   * Starts a browser flow and keeps only that browser's `maxPerBrowser` newest unfinished ones, so
   * one browser cookie cannot pile rows up however often it opens the authorize URL.
   */
  async createAuthorization(row: AuthorizationRow, maxPerBrowser: number): Promise<void> {
    const t = schema.authorizations;
    this.db.transaction((tx) => {
      tx.insert(t).values(row).run();
      const unfinished = and(eq(t.browserHash, row.browserHash), isNull(t.consumedAt));
      const newest = tx.select({ id: t.id }).from(t).where(unfinished).orderBy(desc(t.createdAt), desc(sql`rowid`)).limit(maxPerBrowser);
      tx.delete(t).where(and(unfinished, notInArray(t.id, newest))).run();
    });
  }

  async getAuthorization(id: string, now: number): Promise<AuthorizationRow | undefined> {
    const t = schema.authorizations;
    return this.db
      .select()
      .from(t)
      .where(and(eq(t.id, id), isNull(t.consumedAt), gt(t.expiresAt, now)))
      .get();
  }

  /** Records the user's Allow: only once, and only while the flow is live. */
  async allowAuthorization(id: string, upstreamStateHash: string, upstreamVerifierSealed: string, now: number): Promise<boolean> {
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
  async consumeAuthorization(id: string, now: number): Promise<AuthorizationRow | undefined> {
    const t = schema.authorizations;
    return this.db
      .update(t)
      .set({ consumedAt: now })
      .where(and(eq(t.id, id), isNull(t.consumedAt), gt(t.expiresAt, now)))
      .returning()
      .get();
  }

  /** Forgejo's callback: the state is single-use, so the first caller wins and replays find nothing. */
  async consumeAuthorizationByUpstreamState(upstreamStateHash: string, now: number): Promise<AuthorizationRow | undefined> {
    const t = schema.authorizations;
    return this.db
      .update(t)
      .set({ consumedAt: now })
      .where(and(eq(t.upstreamStateHash, upstreamStateHash), isNull(t.consumedAt), gt(t.expiresAt, now)))
      .returning()
      .get();
  }

  // Grants

  /** The active grant of (client, Forgejo user), created when there is none; either way the client was used now. */
  async findOrCreateGrant(input: { id: string; clientId: string; forgejoUserId: number; forgejoLogin: string; scope: string; now: number }): Promise<GrantRow> {
    const t = schema.grants;
    return this.db.transaction((tx) => {
      tx.update(schema.clients).set({ lastUsedAt: input.now }).where(eq(schema.clients.id, input.clientId)).run();
      // The partial unique index on active grants decides, so two sign-ins at once share one grant.
      return tx
        .insert(t)
        .values({ id: input.id, clientId: input.clientId, forgejoUserId: input.forgejoUserId, forgejoLogin: input.forgejoLogin, scope: input.scope, createdAt: input.now, revokedAt: null })
        .onConflictDoUpdate({ target: [t.clientId, t.forgejoUserId], targetWhere: isNull(t.revokedAt), set: { forgejoLogin: input.forgejoLogin, scope: input.scope } })
        .returning()
        .get();
    });
  }

  /** Revokes a grant and every token issued under it. */
  async revokeGrant(grantId: string, now: number): Promise<void> {
    this.revokeGrants([grantId], now);
  }

  /** The grants and every token under them, in one transaction; then each is announced. */
  private revokeGrants(grantIds: string[], now: number): void {
    if (grantIds.length === 0) return;
    this.db.transaction((tx) => {
      tx.update(schema.grants).set({ revokedAt: now }).where(and(inArray(schema.grants.id, grantIds), isNull(schema.grants.revokedAt))).run();
      tx.update(schema.accessTokens).set({ revokedAt: now }).where(and(inArray(schema.accessTokens.grantId, grantIds), isNull(schema.accessTokens.revokedAt))).run();
      tx.update(schema.refreshTokens).set({ revokedAt: now }).where(and(inArray(schema.refreshTokens.grantId, grantIds), isNull(schema.refreshTokens.revokedAt))).run();
    });
    for (const grantId of grantIds) this.revoked(grantId);
  }

  /**
   * Whether a client can still act under the grant: it holds a live access token, or a refresh
   * token that can still be exchanged for one. A rotated refresh token does not count: its successor does.
   */
  async grantHasLiveTokens(grantId: string, now: number): Promise<boolean> {
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
  async revokeGrantsOfUser(forgejoUserId: number, now: number): Promise<string[]> {
    const active = this.db
      .select({ id: schema.grants.id })
      .from(schema.grants)
      .where(and(eq(schema.grants.forgejoUserId, forgejoUserId), isNull(schema.grants.revokedAt)))
      .all()
      .map((grant) => grant.id);
    // Read and revoked without a pause between: nothing else runs on this connection meanwhile.
    this.revokeGrants(active, now);
    return active;
  }

  // Authorization codes

  async createAuthCode(row: AuthCodeRow): Promise<void> {
    this.db.insert(schema.authCodes).values(row).run();
  }

  // Token exchanges

  exchangeCode(request: CodeExchangeRequest): Promise<Exchange> {
    return exchangeCode(this, request);
  }

  exchangeRefresh(request: RefreshExchangeRequest): Promise<Exchange> {
    return exchangeRefresh(this, request);
  }

  async findCode(codeHash: string): Promise<AuthCodeRow | undefined> {
    return this.db.select().from(schema.authCodes).where(eq(schema.authCodes.codeHash, codeHash)).get();
  }

  async spendCode(codeHash: string, now: number, issued: IssuedTokenHashes): Promise<boolean> {
    const c = schema.authCodes;
    return this.db.transaction(
      (tx) => {
        const marked = tx
          .update(c)
          .set({ usedAt: now })
          .where(and(eq(c.codeHash, codeHash), isNull(c.usedAt), gt(c.expiresAt, now), grantIsLive(c.grantId)))
          .returning({ codeHash: c.codeHash })
          .get();
        if (!marked) return false;
        this.insertPair(issued, now);
        return true;
      },
      { behavior: "immediate" },
    );
  }

  async findRefreshToken(tokenHash: string, clientId: string): Promise<RefreshTokenRow | undefined> {
    const r = schema.refreshTokens;
    return this.db.select().from(r).where(and(eq(r.tokenHash, tokenHash), eq(r.clientId, clientId))).get();
  }

  async rotateRefreshToken(tokenHash: string, clientId: string, now: number, issued: IssuedTokenHashes): Promise<boolean> {
    const r = schema.refreshTokens;
    return this.db.transaction(
      (tx) => {
        const rotated = tx
          .update(r)
          .set({ rotatedAt: now })
          .where(and(eq(r.tokenHash, tokenHash), eq(r.clientId, clientId), isNull(r.rotatedAt), isNull(r.revokedAt), gt(r.expiresAt, now), grantIsLive(r.grantId)))
          .returning({ tokenHash: r.tokenHash })
          .get();
        if (!rotated) return false;
        this.insertPair(issued, now);
        return true;
      },
      { behavior: "immediate" },
    );
  }

  // Tokens

  /** Inserts a new access token and, unless the client may not refresh, its refresh token; both or neither. */
  async insertTokenPair(issued: IssuedTokenHashes, now: number): Promise<void> {
    this.insertPair(issued, now);
  }

  private insertPair(issued: IssuedTokenHashes, now: number): void {
    const common = {
      grantId: issued.grantId,
      familyId: issued.familyId,
      clientId: issued.clientId,
      resource: issued.resource,
      scope: issued.scope,
      createdAt: now,
      revokedAt: null,
    };
    // Inside an exchange's transaction this nests as a savepoint of it.
    this.db.transaction((tx) => {
      tx.insert(schema.accessTokens)
        .values({ ...common, tokenHash: issued.accessTokenHash, expiresAt: issued.accessExpiresAt })
        .run();
      if (issued.refreshTokenHash !== null && issued.refreshExpiresAt !== null) {
        tx.insert(schema.refreshTokens)
          .values({ ...common, tokenHash: issued.refreshTokenHash, expiresAt: issued.refreshExpiresAt, rotatedAt: null })
          .run();
      }
    });
  }

  /** The identity behind a live access token, or undefined for unknown, expired or revoked ones. */
  async findAccessIdentity(tokenHash: string, now: number): Promise<TokenIdentity | undefined> {
    const row = this.accessIdentityQuery.get({ tokenHash, now });
    if (!row) return undefined;
    const { scope, ...rest } = row;
    return { ...rest, scopes: scope.split(" ").filter(Boolean) };
  }

  /** RFC 7009: revoking a refresh token ends its family; an access token ends alone. Unknown is fine. */
  async revokeToken(tokenHash: string, clientId: string, now: number): Promise<"access" | "refresh" | "unknown"> {
    const refresh = this.db
      .select({ familyId: schema.refreshTokens.familyId, grantId: schema.refreshTokens.grantId })
      .from(schema.refreshTokens)
      .where(and(eq(schema.refreshTokens.tokenHash, tokenHash), eq(schema.refreshTokens.clientId, clientId)))
      .get();
    if (refresh) {
      this.revokeFamilyNow(refresh.familyId, refresh.grantId, now);
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

  async revokeFamily(familyId: string, grantId: string, now: number): Promise<void> {
    this.revokeFamilyNow(familyId, grantId, now);
  }

  private revokeFamilyNow(familyId: string, grantId: string, now: number): void {
    this.db.transaction((tx) => {
      tx.update(schema.accessTokens).set({ revokedAt: now }).where(and(eq(schema.accessTokens.familyId, familyId), isNull(schema.accessTokens.revokedAt))).run();
      tx.update(schema.refreshTokens).set({ revokedAt: now }).where(and(eq(schema.refreshTokens.familyId, familyId), isNull(schema.refreshTokens.revokedAt))).run();
    });
    this.revoked(grantId);
  }

  // Upstream credentials

  async getUpstreamCredential(forgejoUserId: number): Promise<UpstreamCredentialRow | undefined> {
    return this.upstreamCredentialQuery.get({ forgejoUserId });
  }

  /** Stores a credential from a fresh sign-in: it replaces whatever the user had (Forgejo invalidated it). */
  async putUpstreamCredential(row: Omit<UpstreamCredentialRow, "version">): Promise<UpstreamCredentialRow> {
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
  async replaceUpstreamCredential(
    forgejoUserId: number,
    expectedVersion: number,
    next: UpstreamCredentialUpdate,
  ): Promise<UpstreamCredentialRow | undefined> {
    const t = schema.upstreamCredentials;
    return this.db
      .update(t)
      .set({ ...next, version: expectedVersion + 1 })
      .where(and(eq(t.forgejoUserId, forgejoUserId), eq(t.version, expectedVersion)))
      .returning()
      .get();
  }

  /** One process holds the file: the credentials' own single flight is the lock, and the version check catches a sign-in meanwhile. */
  async withUpstreamCredentialLocked<T>(
    forgejoUserId: number,
    work: (row: UpstreamCredentialRow | undefined) => Promise<LockedCredentialWork<T>>,
  ): Promise<{ result: T; stored: UpstreamCredentialRow | undefined }> {
    const row = await this.getUpstreamCredential(forgejoUserId);
    const { result, update } = await work(row);
    const stored = row !== undefined && update !== undefined ? await this.replaceUpstreamCredential(forgejoUserId, row.version, update) : undefined;
    return { result, stored };
  }

  async deleteUpstreamCredential(forgejoUserId: number): Promise<void> {
    this.db.delete(schema.upstreamCredentials).where(eq(schema.upstreamCredentials.forgejoUserId, forgejoUserId)).run();
  }

  // Housekeeping

  /**
   * Deletes the clients nobody uses, with whatever they still hold: one that never got a grant within
   * `unusedMs` of registering, and one with nothing live (no unexpired token or code) for `idleMs`.
   * Neither while a sign-in of it is in progress. A client seen in use is stamped now, at most once per `stampEveryMs`.
   */
  async reapClients(now: number, rules: { unusedMs: number; idleMs: number; stampEveryMs: number }): Promise<{ unused: number; idle: number }> {
    const c = schema.clients;
    const inUse = clientInUse(c.id, now);
    const signingIn = clientSigningIn(c.id, now);
    return this.db.transaction((tx) => {
      tx.update(c)
        .set({ lastUsedAt: now })
        .where(and(sql`coalesce(${c.lastUsedAt}, 0) < ${now - rules.stampEveryMs}`, inUse))
        .run();
      const unused = tx
        .delete(c)
        .where(and(isNull(c.lastUsedAt), lt(c.createdAt, now - rules.unusedMs), sql`NOT EXISTS (SELECT 1 FROM grants g WHERE g.client_id = ${c.id})`, sql`NOT ${signingIn}`))
        .returning({ id: c.id })
        .all().length;
      const idle = tx
        .delete(c)
        // A client from before last_used_at was kept counts from its registration.
        .where(and(sql`coalesce(${c.lastUsedAt}, ${c.createdAt}) < ${now - rules.idleMs}`, sql`NOT ${inUse}`, sql`NOT ${signingIn}`))
        .returning({ id: c.id })
        .all().length;
      return { unused, idle };
    });
  }

  /** Deletes rows past their life; rotated and revoked tokens are kept until they expire, for replay detection. */
  async purgeExpired(now: number): Promise<number> {
    const a = schema.authorizations, c = schema.authCodes, at = schema.accessTokens, rt = schema.refreshTokens, g = schema.grants;
    return this.db.transaction((tx) => {
      let removed = tx.delete(a).where(lt(a.expiresAt, now)).returning({ id: a.id }).all().length;
      removed += tx.delete(c).where(lt(c.expiresAt, now)).returning({ id: c.codeHash }).all().length;
      removed += tx.delete(at).where(lt(at.expiresAt, now)).returning({ id: at.tokenHash }).all().length;
      removed += tx.delete(rt).where(lt(rt.expiresAt, now)).returning({ id: rt.tokenHash }).all().length;
      removed += tx
        .delete(g)
        .where(revokedGrantUnreferenced(g.revokedAt, g.id))
        .returning({ id: g.id })
        .all().length;
      return removed;
    });
  }
}

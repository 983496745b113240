// The broker's repository functions over Drizzle and bun:sqlite: every read and write of OAuth
// state goes through here, and every single-use rule is decided by one conditional UPDATE, never by a read.
import { Database } from "bun:sqlite";
import { and, desc, eq, gt, isNull, lt, notInArray, sql } from "drizzle-orm";
import { drizzle, type BunSQLiteDatabase } from "drizzle-orm/bun-sqlite";
import { migrate } from "drizzle-orm/bun-sqlite/migrator";
import { chmodSync, closeSync, existsSync, openSync } from "node:fs";
import { join } from "node:path";
import { verifyS256 } from "../oauth/pkce.ts";
import { narrowScope } from "../oauth/scope.ts";
import * as schema from "./schema.ts";

export type ClientRow = typeof schema.clients.$inferSelect;
/** A client as created: when it was last used is the store's to track. */
export type NewClientRow = Omit<ClientRow, "lastUsedAt">;
export type AuthorizationRow = typeof schema.authorizations.$inferSelect;
export type GrantRow = typeof schema.grants.$inferSelect;
export type AuthCodeRow = typeof schema.authCodes.$inferSelect;
export type AccessTokenRow = typeof schema.accessTokens.$inferSelect;
export type RefreshTokenRow = typeof schema.refreshTokens.$inferSelect;
export type UpstreamCredentialRow = typeof schema.upstreamCredentials.$inferSelect;

/** What the bearer guard hands to a protected route. */
export interface TokenIdentity {
  /** The access token's own hash: which of the grant's tokens this is, for what must end with it. */
  tokenHash: string;
  grantId: string;
  clientId: string;
  forgejoUserId: number;
  forgejoLogin: string;
  scopes: string[];
  resource: string;
  expiresAt: number;
}

export interface IssuedTokenHashes {
  grantId: string;
  familyId: string;
  clientId: string;
  resource: string;
  scope: string;
  accessTokenHash: string;
  accessExpiresAt: number;
  /** Null when the client did not register the refresh_token grant: it gets an access token only. */
  refreshTokenHash: string | null;
  refreshExpiresAt: number | null;
}

/** A new pair minted by the caller: the store sees only hashes, and decides whether the refresh token is issued. */
export interface NewTokenHashes {
  accessTokenHash: string;
  accessExpiresAt: number;
  refreshTokenHash: string;
  refreshExpiresAt: number;
}

/** The client as authenticated by the token endpoint: its id and the grant types it registered. */
export type ExchangingClient = Pick<ClientRow, "id" | "metadata">;

export interface CodeExchangeRequest {
  client: ExchangingClient;
  codeHash: string;
  codeVerifier: string;
  redirectUri: string | undefined;
  resource: string | undefined;
  tokens: NewTokenHashes;
  now: number;
}

export interface RefreshExchangeRequest {
  client: ExchangingClient;
  refreshTokenHash: string;
  scope: string | undefined;
  resource: string | undefined;
  tokens: NewTokenHashes;
  now: number;
  /** How long a rotated refresh token may be presented again (a retry after a lost response) before that counts as theft. */
  graceMs: number;
}

export type ExchangeErrorCode = "invalid_grant" | "invalid_target" | "invalid_scope" | "unauthorized_client";

/** What a token exchange ended in: the pair was issued, or nothing was, and why (RFC 6749 §5.2). */
export type Exchange =
  | { ok: true; scope: string; refreshIssued: boolean }
  | { ok: false; error: ExchangeErrorCode; description: string; revoked?: "family" | "grant" };

const refused = (error: ExchangeErrorCode, description: string, revoked?: "family" | "grant"): Exchange => ({ ok: false, error, description, revoked });

/** The grant types a client registered; rows from before registration recorded them get both. */
function registeredGrantTypes(client: ExchangingClient): string[] {
  return (client.metadata.grant_types as string[] | undefined) ?? ["authorization_code", "refresh_token"];
}

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

  createClient(row: NewClientRow): void {
    this.db.insert(schema.clients).values(row).run();
  }

  getClient(id: string): ClientRow | undefined {
    return this.db.select().from(schema.clients).where(eq(schema.clients.id, id)).get();
  }

  /**
   * Keeps the client a metadata document describes, keyed by its URL: created on first sight, its
   * name, redirect URIs and metadata replaced by each fresh document; when it was first seen stays.
   */
  putDocumentClient(row: NewClientRow): ClientRow {
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

  /** The active grant of (client, Forgejo user), created when there is none; either way the client was used now. */
  findOrCreateGrant(input: { id: string; clientId: string; forgejoUserId: number; forgejoLogin: string; scope: string; now: number }): GrantRow {
    const t = schema.grants;
    return this.db.transaction((tx) => {
      tx.update(schema.clients).set({ lastUsedAt: input.now }).where(eq(schema.clients.id, input.clientId)).run();
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

  // Token exchanges

  /**
   * The authorization-code grant (RFC 6749 §4.1.3, RFC 7636 §4.6) in one place: every check runs
   * before anything changes, then marking the code used and inserting the new pair commit together.
   * The mark is a conditional UPDATE, so of N concurrent callers exactly one wins on any database.
   *
   * A presentation that fails a check (another client, a wrong verifier, redirect_uri or resource)
   * changes nothing, and the code stays spendable by its rightful client. Such a caller holds the
   * code and nothing more, which PKCE already makes useless; burning the code or revoking what it
   * issued would let anyone who glimpsed a code (a proxy log, a browser history) break the real
   * client's sign-in, while guessing a verifier within the code's 60 s under the rate limit is out of
   * reach. A used code presented again with its verifier is a replay (OAuth 2.1 §4.1.3): the family
   * it was exchanged for is revoked.
   */
  exchangeCode(request: CodeExchangeRequest): Exchange {
    const { client, now } = request;
    const grantTypes = registeredGrantTypes(client);
    if (!grantTypes.includes("authorization_code")) return refused("unauthorized_client", "This client did not register the authorization_code grant type");
    const c = schema.authCodes;
    const read = () => this.db.select().from(c).where(eq(c.codeHash, request.codeHash)).get();
    const code = read();
    if (!code) return refused("invalid_grant", "The authorization code is invalid or expired");
    if (code.clientId !== client.id) return refused("invalid_grant", "The authorization code was issued to another client");
    if (!verifyS256(request.codeVerifier, code.codeChallenge)) return refused("invalid_grant", "code_verifier does not match the code_challenge");
    // The caller holds the code and its verifier: if the code was spent already, this is the replay.
    if (code.usedAt !== null) return this.codeReplayed(code, now);
    const mismatch = codeRequestMismatch(code, request);
    if (mismatch) return mismatch;
    if (code.expiresAt <= now) return refused("invalid_grant", "The authorization code is invalid or expired");

    const refreshIssued = grantTypes.includes("refresh_token");
    const won = this.db.transaction(
      (tx) => {
        const marked = tx
          .update(c)
          .set({ usedAt: now })
          .where(and(eq(c.codeHash, code.codeHash), isNull(c.usedAt), gt(c.expiresAt, now), grantIsLive(c.grantId)))
          .returning({ codeHash: c.codeHash })
          .get();
        if (!marked) return false;
        this.insertTokenPair(issuedFor(code, code.scope, request.tokens, refreshIssued), now);
        return true;
      },
      { behavior: "immediate" },
    );
    if (won) return { ok: true, scope: code.scope, refreshIssued };
    // Another caller spent the code between our read and our update: this presentation is the replay.
    const spent = read();
    return spent?.usedAt != null ? this.codeReplayed(spent, now) : refused("invalid_grant", "The authorization code is invalid or expired");
  }

  private codeReplayed(code: AuthCodeRow, now: number): Exchange {
    this.revokeFamily(code.familyId, code.grantId, now);
    return refused("invalid_grant", "The authorization code was already used", "family");
  }

  /**
   * The refresh-token grant (RFC 6749 §6) in one place, with the same shape as exchangeCode: a
   * refused request (a scope never granted, another resource) leaves the refresh token as it was;
   * only a request that gets a new pair rotates it, in the transaction that inserts the pair. A
   * token rotated longer than `graceMs` ago and presented again is a replay: the grant is revoked.
   */
  exchangeRefresh(request: RefreshExchangeRequest): Exchange {
    const { client, now } = request;
    if (!registeredGrantTypes(client).includes("refresh_token")) return refused("unauthorized_client", "This client did not register the refresh_token grant type");
    const r = schema.refreshTokens;
    const read = () =>
      this.db
        .select()
        .from(r)
        .where(and(eq(r.tokenHash, request.refreshTokenHash), eq(r.clientId, client.id)))
        .get();
    const token = read();
    const invalid = refused("invalid_grant", "The refresh token is invalid, expired or revoked");
    if (!token) return invalid;
    if (token.rotatedAt !== null) return this.refreshReplayed(token, now, request.graceMs);
    if (token.revokedAt !== null || token.expiresAt <= now) return invalid;
    if (request.resource !== undefined && request.resource !== token.resource) return refused("invalid_target", `resource must be ${token.resource}`);
    const scope = narrowScope(token.scope, request.scope);
    if (!scope.ok) return refused("invalid_scope", scope.reason);

    const won = this.db.transaction(
      (tx) => {
        const rotated = tx
          .update(r)
          .set({ rotatedAt: now })
          .where(
            and(
              eq(r.tokenHash, token.tokenHash),
              eq(r.clientId, client.id),
              isNull(r.rotatedAt),
              isNull(r.revokedAt),
              gt(r.expiresAt, now),
              grantIsLive(r.grantId),
            ),
          )
          .returning({ tokenHash: r.tokenHash })
          .get();
        if (!rotated) return false;
        this.insertTokenPair(issuedFor(token, scope.scope, request.tokens, true), now);
        return true;
      },
      { behavior: "immediate" },
    );
    if (won) return { ok: true, scope: scope.scope, refreshIssued: true };
    // Another caller rotated it between our read and our update (a retry within the grace window, or a theft).
    const spent = read();
    return spent?.rotatedAt != null ? this.refreshReplayed(spent, now, request.graceMs) : invalid;
  }

  private refreshReplayed(token: RefreshTokenRow, now: number, graceMs: number): Exchange {
    const outsideGrace = now - token.rotatedAt! > graceMs;
    if (outsideGrace) this.revokeGrant(token.grantId, now);
    return refused("invalid_grant", "The refresh token was already used", outsideGrace ? "grant" : undefined);
  }

  // Tokens

  /** Inserts a new access token and, unless the client may not refresh, its refresh token; both or neither. */
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
  findAccessIdentity(tokenHash: string, now: number): TokenIdentity | undefined {
    const row = this.accessIdentityQuery.get({ tokenHash, now });
    if (!row) return undefined;
    const { scope, ...rest } = row;
    return { ...rest, scopes: scope.split(" ").filter(Boolean) };
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

  /**
   * Deletes the clients nobody uses, with whatever they still hold: one that never got a grant within
   * `unusedMs` of registering, and one with nothing live (no unexpired token or code) for `idleMs`.
   * Neither while a sign-in of it is in progress. A client seen in use is stamped now, at most once per `stampEveryMs`.
   */
  reapClients(now: number, rules: { unusedMs: number; idleMs: number; stampEveryMs: number }): { unused: number; idle: number } {
    const c = schema.clients;
    const inUse = sql`(
      EXISTS (SELECT 1 FROM access_tokens a JOIN grants g ON g.id = a.grant_id
              WHERE g.client_id = ${c.id} AND g.revoked_at IS NULL AND a.revoked_at IS NULL AND a.expires_at > ${now})
      OR EXISTS (SELECT 1 FROM refresh_tokens r JOIN grants g ON g.id = r.grant_id
              WHERE g.client_id = ${c.id} AND g.revoked_at IS NULL AND r.revoked_at IS NULL AND r.rotated_at IS NULL AND r.expires_at > ${now})
      OR EXISTS (SELECT 1 FROM auth_codes k JOIN grants g ON g.id = k.grant_id
              WHERE g.client_id = ${c.id} AND g.revoked_at IS NULL AND k.used_at IS NULL AND k.expires_at > ${now}))`;
    const signingIn = sql`EXISTS (SELECT 1 FROM authorizations z WHERE z.client_id = ${c.id} AND z.consumed_at IS NULL AND z.expires_at > ${now})`;
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

/** The condition, inside an exchange's UPDATE, that the code's or token's grant was not revoked meanwhile. */
function grantIsLive(grantId: typeof schema.authCodes.grantId | typeof schema.refreshTokens.grantId) {
  return sql`EXISTS (SELECT 1 FROM grants WHERE grants.id = ${grantId} AND grants.revoked_at IS NULL)`;
}

/** What the rest of a code's request must match (RFC 6749 §4.1.3, RFC 8707): the first thing it does not. */
function codeRequestMismatch(code: AuthCodeRow, request: CodeExchangeRequest): Exchange | undefined {
  if (request.redirectUri !== undefined && request.redirectUri !== code.redirectUri) {
    return refused("invalid_grant", "redirect_uri does not match the authorization request");
  }
  if (request.resource !== undefined && request.resource !== code.resource) return refused("invalid_target", `resource must be ${code.resource}`);
  return undefined;
}

/** The rows of the pair an exchange issues, in the family and grant of the code or token it spends. */
function issuedFor(
  spent: { grantId: string; familyId: string; clientId: string; resource: string },
  scope: string,
  tokens: NewTokenHashes,
  refreshIssued: boolean,
): IssuedTokenHashes {
  return {
    grantId: spent.grantId,
    familyId: spent.familyId,
    clientId: spent.clientId,
    resource: spent.resource,
    scope,
    accessTokenHash: tokens.accessTokenHash,
    accessExpiresAt: tokens.accessExpiresAt,
    refreshTokenHash: refreshIssued ? tokens.refreshTokenHash : null,
    refreshExpiresAt: refreshIssued ? tokens.refreshExpiresAt : null,
  };
}

// The shared store, over Drizzle and Bun's PostgreSQL client: the OAuth state every replica reads and
// writes. Each single-use rule is one conditional UPDATE inside one transaction, so replicas racing on a row get one winner;
// each revocation is announced to every replica's store through LISTEN/NOTIFY, on commit.
import { SQL } from "bun";
import { and, desc, eq, gt, inArray, isNull, lt, notInArray, sql } from "drizzle-orm";
import { drizzle, type BunSQLDatabase } from "drizzle-orm/bun-sql";
import { migrate } from "drizzle-orm/bun-sql/migrator";
import { join } from "node:path";
import { clientInUse, clientSigningIn, grantIsLive, revokedGrantUnreferenced } from "./shared-sql.ts";
import * as schema from "./pg-schema.ts";
import {
  exchangeCode,
  exchangeRefresh,
  RevocationNotices,
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
  type RevocationListener,
  type Store,
  type TokenIdentity,
  type UpstreamCredentialRow,
  type UpstreamCredentialUpdate,
} from "./store.ts";

const MIGRATIONS = join(import.meta.dir, "..", "..", "drizzle", "pg");
/** The advisory lock every replica takes around its migration, so replicas starting at once on an empty database migrate one after another. */
const MIGRATION_LOCK = 0x666d_6231; // "fmb1"
/** Where revocations are announced: payload `<store tag>:<grant id>`, so a store skips its own. */
const REVOCATIONS_CHANNEL = "fmb_revocations";

type Db = BunSQLDatabase<typeof schema>;
type Tx = Parameters<Parameters<Db["transaction"]>[0]>[0];

/**
 * Brings the database's schema up to date on one connection holding the advisory lock: the migrator
 * creates its own bookkeeping table before its transaction, which two replicas at once would both try.
 */
export async function migratePostgres(url: string): Promise<void> {
  const client = new SQL({ url, max: 1 });
  try {
    await client`SELECT pg_advisory_lock(${MIGRATION_LOCK})`;
    try {
      await migrate(drizzle({ client, schema }), { migrationsFolder: MIGRATIONS });
    } finally {
      await client`SELECT pg_advisory_unlock(${MIGRATION_LOCK})`;
    }
  } finally {
    await client.close();
  }
}

export class PgStore implements Store, ExchangeStatements {
  private readonly revocations = new RevocationNotices();
  /** Tells this store's own announcements from other replicas'. */
  private readonly tag = crypto.randomUUID();
  private subscription: SQL.ListenSubscription | undefined;

  private constructor(
    private readonly client: SQL,
    readonly db: Db,
    /** Connections of their own for credential locks, which stay open while Forgejo answers: /mcp's lookups never wait behind them. */
    private readonly lockClient: SQL,
    private readonly locks: Db,
    /** False when Redis carries revocations between replicas: a second fan-out would make each replica hear each one twice. */
    private readonly notifies: boolean,
  ) {}

  /**
   * Connects, migrates under the advisory lock, and returns the store; with `notifyRevocations` (the default, for
   * replicas without Redis) it announces its revocations through NOTIFY and listens for other replicas'.
   */
  static async open(url: string, options: { maxConnections?: number; maxLockConnections?: number; notifyRevocations?: boolean } = {}): Promise<PgStore> {
    await migratePostgres(url);
    // A database that stopped answering fails /healthz within seconds rather than Bun's default 30.
    const client = new SQL({ url, max: options.maxConnections ?? 10, connectionTimeout: 5 });
    const lockClient = new SQL({ url, max: options.maxLockConnections ?? 4, connectionTimeout: 5 });
    const notifies = options.notifyRevocations ?? true;
    const store = new PgStore(client, drizzle({ client, schema }), lockClient, drizzle({ client: lockClient, schema }), notifies);
    if (notifies) store.subscription = await client.listen(REVOCATIONS_CHANNEL, (payload) => store.heard(payload));
    return store;
  }

  /** Another replica committed a revocation: this replica's caches and sessions learn of it as of their own. */
  private heard(payload: string): void {
    const separator = payload.indexOf(":");
    if (separator < 0 || payload.slice(0, separator) === this.tag) return;
    this.revocations.committedFor(payload.slice(separator + 1));
  }

  /** Queued in the revoking transaction, so other replicas hear only what was committed. */
  private async announce(tx: Tx, grantIds: string[]): Promise<void> {
    if (!this.notifies) return;
    for (const grantId of grantIds) await tx.execute(sql`SELECT pg_notify(${REVOCATIONS_CHANNEL}, ${`${this.tag}:${grantId}`})`);
  }

  get revocationCount(): number {
    return this.revocations.count;
  }

  onRevocation(listener: RevocationListener): () => void {
    return this.revocations.listen(listener);
  }

  async close(): Promise<void> {
    await this.subscription?.unlisten();
    await Promise.all([this.client.close(), this.lockClient.close()]);
  }

  async ping(): Promise<void> {
    await this.client`SELECT 1`;
  }

  // Clients

  async createClient(row: NewClientRow): Promise<void> {
    await this.db.insert(schema.clients).values(row);
  }

  async getClient(id: string): Promise<ClientRow | undefined> {
    const [row] = await this.db.select().from(schema.clients).where(eq(schema.clients.id, id));
    return row;
  }

  async putDocumentClient(row: NewClientRow): Promise<ClientRow> {
    const t = schema.clients;
    const [stored] = await this.db
      .insert(t)
      .values(row)
      .onConflictDoUpdate({
        target: t.id,
        set: { name: row.name, redirectUris: row.redirectUris, metadata: row.metadata, tokenEndpointAuthMethod: row.tokenEndpointAuthMethod, secretHash: null },
      })
      .returning();
    return stored!;
  }

  // Browser flows

  async createAuthorization(row: AuthorizationRow, maxPerBrowser: number): Promise<void> {
    const t = schema.authorizations;
    await this.db.transaction(async (tx) => {
      await tx.insert(t).values(row);
      const unfinished = and(eq(t.browserHash, row.browserHash), isNull(t.consumedAt));
      // No rowid here: the flow just created is kept first, whatever its millisecond ties with.
      const newest = tx.select({ id: t.id }).from(t).where(unfinished).orderBy(desc(sql`${t.id} = ${row.id}`), desc(t.createdAt)).limit(maxPerBrowser);
      await tx.delete(t).where(and(unfinished, notInArray(t.id, newest)));
    });
  }

  async getAuthorization(id: string, now: number): Promise<AuthorizationRow | undefined> {
    const t = schema.authorizations;
    const [row] = await this.db
      .select()
      .from(t)
      .where(and(eq(t.id, id), isNull(t.consumedAt), gt(t.expiresAt, now)));
    return row;
  }

  async allowAuthorization(id: string, upstreamStateHash: string, upstreamVerifierSealed: string, now: number): Promise<boolean> {
    const t = schema.authorizations;
    const updated = await this.db
      .update(t)
      .set({ upstreamStateHash, upstreamVerifierSealed })
      .where(and(eq(t.id, id), isNull(t.consumedAt), isNull(t.upstreamStateHash), gt(t.expiresAt, now)))
      .returning({ id: t.id });
    return updated.length === 1;
  }

  async consumeAuthorization(id: string, now: number): Promise<AuthorizationRow | undefined> {
    const t = schema.authorizations;
    const [row] = await this.db
      .update(t)
      .set({ consumedAt: now })
      .where(and(eq(t.id, id), isNull(t.consumedAt), gt(t.expiresAt, now)))
      .returning();
    return row;
  }

  async consumeAuthorizationByUpstreamState(upstreamStateHash: string, now: number): Promise<AuthorizationRow | undefined> {
    const t = schema.authorizations;
    const [row] = await this.db
      .update(t)
      .set({ consumedAt: now })
      .where(and(eq(t.upstreamStateHash, upstreamStateHash), isNull(t.consumedAt), gt(t.expiresAt, now)))
      .returning();
    return row;
  }

  // Grants

  async findOrCreateGrant(input: { id: string; clientId: string; forgejoUserId: number; forgejoLogin: string; scope: string; now: number }): Promise<GrantRow> {
    const t = schema.grants;
    return this.db.transaction(async (tx) => {
      await tx.update(schema.clients).set({ lastUsedAt: input.now }).where(eq(schema.clients.id, input.clientId));
      // The partial unique index on active grants decides, so two sign-ins at once share one grant.
      const [grant] = await tx
        .insert(t)
        .values({ id: input.id, clientId: input.clientId, forgejoUserId: input.forgejoUserId, forgejoLogin: input.forgejoLogin, scope: input.scope, createdAt: input.now, revokedAt: null })
        .onConflictDoUpdate({ target: [t.clientId, t.forgejoUserId], targetWhere: isNull(t.revokedAt), set: { forgejoLogin: input.forgejoLogin, scope: input.scope } })
        .returning();
      return grant!;
    });
  }

  async revokeGrant(grantId: string, now: number): Promise<void> {
    await this.db.transaction(async (tx) => {
      await revokeGrantsIn(tx, inArray(schema.grants.id, [grantId]), now);
      await this.announce(tx, [grantId]);
    });
    this.revocations.committedFor(grantId);
  }

  async grantHasLiveTokens(grantId: string, now: number): Promise<boolean> {
    const a = schema.accessTokens;
    const r = schema.refreshTokens;
    const [live] = await this.db.execute<{ live: boolean }>(sql`SELECT
      EXISTS (SELECT 1 FROM ${a} WHERE ${a.grantId} = ${grantId} AND ${a.revokedAt} IS NULL AND ${a.expiresAt} > ${now})
      OR EXISTS (SELECT 1 FROM ${r} WHERE ${r.grantId} = ${grantId} AND ${r.revokedAt} IS NULL AND ${r.rotatedAt} IS NULL AND ${r.expiresAt} > ${now}) AS live`);
    return live?.live === true;
  }

  async revokeGrantsOfUser(forgejoUserId: number, now: number): Promise<string[]> {
    const revoked = await this.db.transaction(async (tx) => {
      const grantIds = await revokeGrantsIn(tx, eq(schema.grants.forgejoUserId, forgejoUserId), now);
      await this.announce(tx, grantIds);
      return grantIds;
    });
    for (const grantId of revoked) this.revocations.committedFor(grantId);
    return revoked;
  }

  // Authorization codes and exchanges

  async createAuthCode(row: AuthCodeRow): Promise<void> {
    await this.db.insert(schema.authCodes).values(row);
  }

  exchangeCode(request: CodeExchangeRequest): Promise<Exchange> {
    return exchangeCode(this, request);
  }

  exchangeRefresh(request: RefreshExchangeRequest): Promise<Exchange> {
    return exchangeRefresh(this, request);
  }

  async findCode(codeHash: string): Promise<AuthCodeRow | undefined> {
    const [row] = await this.db.select().from(schema.authCodes).where(eq(schema.authCodes.codeHash, codeHash));
    return row;
  }

  async spendCode(codeHash: string, now: number, issued: IssuedTokenHashes): Promise<boolean> {
    const c = schema.authCodes;
    return this.db.transaction(async (tx) => {
      // A concurrent spender waits on the row and then finds used_at set: the UPDATE matches nothing for it.
      const marked = await tx
        .update(c)
        .set({ usedAt: now })
        .where(and(eq(c.codeHash, codeHash), isNull(c.usedAt), gt(c.expiresAt, now), grantIsLive(c.grantId)))
        .returning({ codeHash: c.codeHash });
      if (marked.length === 0) return false;
      await insertPairIn(tx, issued, now);
      return true;
    });
  }

  async findRefreshToken(tokenHash: string, clientId: string): Promise<RefreshTokenRow | undefined> {
    const r = schema.refreshTokens;
    const [row] = await this.db.select().from(r).where(and(eq(r.tokenHash, tokenHash), eq(r.clientId, clientId)));
    return row;
  }

  async rotateRefreshToken(tokenHash: string, clientId: string, now: number, issued: IssuedTokenHashes): Promise<boolean> {
    const r = schema.refreshTokens;
    return this.db.transaction(async (tx) => {
      const rotated = await tx
        .update(r)
        .set({ rotatedAt: now })
        .where(and(eq(r.tokenHash, tokenHash), eq(r.clientId, clientId), isNull(r.rotatedAt), isNull(r.revokedAt), gt(r.expiresAt, now), grantIsLive(r.grantId)))
        .returning({ tokenHash: r.tokenHash });
      if (rotated.length === 0) return false;
      await insertPairIn(tx, issued, now);
      return true;
    });
  }

  async revokeFamily(familyId: string, grantId: string, now: number): Promise<void> {
    await this.db.transaction(async (tx) => {
      await revokeFamilyIn(tx, familyId, now);
      await this.announce(tx, [grantId]);
    });
    this.revocations.committedFor(grantId);
  }

  // Tokens

  async insertTokenPair(issued: IssuedTokenHashes, now: number): Promise<void> {
    await this.db.transaction((tx) => insertPairIn(tx, issued, now));
  }

  async findAccessIdentity(tokenHash: string, now: number): Promise<TokenIdentity | undefined> {
    const a = schema.accessTokens;
    const g = schema.grants;
    const [row] = await this.db
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
      .where(and(eq(a.tokenHash, tokenHash), isNull(a.revokedAt), gt(a.expiresAt, now), isNull(g.revokedAt)));
    if (!row) return undefined;
    const { scope, ...rest } = row;
    return { ...rest, scopes: scope.split(" ").filter(Boolean) };
  }

  async revokeToken(tokenHash: string, clientId: string, now: number): Promise<"access" | "refresh" | "unknown"> {
    const r = schema.refreshTokens;
    const at = schema.accessTokens;
    const revoked = await this.db.transaction(async (tx) => {
      // The refresh token's own row names its family; revoking it and its family is one transaction.
      const [refresh] = await tx
        .update(r)
        .set({ revokedAt: sql`coalesce(${r.revokedAt}, ${now})` })
        .where(and(eq(r.tokenHash, tokenHash), eq(r.clientId, clientId)))
        .returning({ familyId: r.familyId, grantId: r.grantId });
      if (refresh) {
        await revokeFamilyIn(tx, refresh.familyId, now);
        await this.announce(tx, [refresh.grantId]);
        return { kind: "refresh" as const, grantId: refresh.grantId };
      }
      const [access] = await tx
        .update(at)
        .set({ revokedAt: now })
        .where(and(eq(at.tokenHash, tokenHash), eq(at.clientId, clientId)))
        .returning({ grantId: at.grantId });
      if (!access) return undefined;
      await this.announce(tx, [access.grantId]);
      return { kind: "access" as const, grantId: access.grantId };
    });
    if (!revoked) return "unknown";
    this.revocations.committedFor(revoked.grantId);
    return revoked.kind;
  }

  // Upstream credentials

  async getUpstreamCredential(forgejoUserId: number): Promise<UpstreamCredentialRow | undefined> {
    const [row] = await this.db.select().from(schema.upstreamCredentials).where(eq(schema.upstreamCredentials.forgejoUserId, forgejoUserId));
    return row;
  }

  async putUpstreamCredential(row: Omit<UpstreamCredentialRow, "version">): Promise<UpstreamCredentialRow> {
    const t = schema.upstreamCredentials;
    const [stored] = await this.db
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
      .returning();
    return stored!;
  }

  async replaceUpstreamCredential(forgejoUserId: number, expectedVersion: number, next: UpstreamCredentialUpdate): Promise<UpstreamCredentialRow | undefined> {
    const t = schema.upstreamCredentials;
    const [stored] = await this.db
      .update(t)
      .set({ ...next, version: expectedVersion + 1 })
      .where(and(eq(t.forgejoUserId, forgejoUserId), eq(t.version, expectedVersion)))
      .returning();
    return stored;
  }

  /** The row lock (SELECT … FOR UPDATE) is held across `work`, Forgejo's answer included, and released by the commit. */
  async withUpstreamCredentialLocked<T>(
    forgejoUserId: number,
    work: (row: UpstreamCredentialRow | undefined) => Promise<LockedCredentialWork<T>>,
  ): Promise<{ result: T; stored: UpstreamCredentialRow | undefined }> {
    const t = schema.upstreamCredentials;
    return this.locks.transaction(async (tx) => {
      const [row] = await tx.select().from(t).where(eq(t.forgejoUserId, forgejoUserId)).for("update");
      const { result, update } = await work(row);
      if (row === undefined || update === undefined) return { result, stored: undefined };
      const [stored] = await tx
        .update(t)
        .set({ ...update, version: sql`${t.version} + 1` })
        .where(eq(t.forgejoUserId, forgejoUserId))
        .returning();
      return { result, stored };
    });
  }

  async deleteUpstreamCredential(forgejoUserId: number): Promise<void> {
    await this.db.delete(schema.upstreamCredentials).where(eq(schema.upstreamCredentials.forgejoUserId, forgejoUserId));
  }

  // Housekeeping: the same rules as the SQLite store's (see there), in one transaction.

  async reapClients(now: number, rules: { unusedMs: number; idleMs: number; stampEveryMs: number }): Promise<{ unused: number; idle: number }> {
    const c = schema.clients;
    const inUse = clientInUse(c.id, now);
    const signingIn = clientSigningIn(c.id, now);
    return this.db.transaction(async (tx) => {
      await tx
        .update(c)
        .set({ lastUsedAt: now })
        .where(and(sql`coalesce(${c.lastUsedAt}, 0) < ${now - rules.stampEveryMs}`, inUse));
      const unused = await tx
        .delete(c)
        .where(and(isNull(c.lastUsedAt), lt(c.createdAt, now - rules.unusedMs), sql`NOT EXISTS (SELECT 1 FROM grants g WHERE g.client_id = ${c.id})`, sql`NOT ${signingIn}`))
        .returning({ id: c.id });
      const idle = await tx
        .delete(c)
        .where(and(sql`coalesce(${c.lastUsedAt}, ${c.createdAt}) < ${now - rules.idleMs}`, sql`NOT ${inUse}`, sql`NOT ${signingIn}`))
        .returning({ id: c.id });
      return { unused: unused.length, idle: idle.length };
    });
  }

  async purgeExpired(now: number): Promise<number> {
    const a = schema.authorizations, c = schema.authCodes, at = schema.accessTokens, rt = schema.refreshTokens, g = schema.grants;
    return this.db.transaction(async (tx) => {
      const removed = [
        await tx.delete(a).where(lt(a.expiresAt, now)).returning({ id: a.id }),
        await tx.delete(c).where(lt(c.expiresAt, now)).returning({ id: c.codeHash }),
        await tx.delete(at).where(lt(at.expiresAt, now)).returning({ id: at.tokenHash }),
        await tx.delete(rt).where(lt(rt.expiresAt, now)).returning({ id: rt.tokenHash }),
        await tx
          .delete(g)
          .where(revokedGrantUnreferenced(g.revokedAt, g.id))
          .returning({ id: g.id }),
      ];
      return removed.reduce((sum, rows) => sum + rows.length, 0);
    });
  }
}


/** Revokes the active grants `which` selects, with every token under them; returns their ids. */
async function revokeGrantsIn(tx: Tx, which: ReturnType<typeof eq>, now: number): Promise<string[]> {
  const g = schema.grants;
  const revoked = (await tx.update(g).set({ revokedAt: now }).where(and(which, isNull(g.revokedAt))).returning({ id: g.id })).map((grant) => grant.id);
  if (revoked.length === 0) return revoked;
  await tx.update(schema.accessTokens).set({ revokedAt: now }).where(and(inArray(schema.accessTokens.grantId, revoked), isNull(schema.accessTokens.revokedAt)));
  await tx.update(schema.refreshTokens).set({ revokedAt: now }).where(and(inArray(schema.refreshTokens.grantId, revoked), isNull(schema.refreshTokens.revokedAt)));
  return revoked;
}

async function revokeFamilyIn(tx: Tx, familyId: string, now: number): Promise<void> {
  await tx.update(schema.accessTokens).set({ revokedAt: now }).where(and(eq(schema.accessTokens.familyId, familyId), isNull(schema.accessTokens.revokedAt)));
  await tx.update(schema.refreshTokens).set({ revokedAt: now }).where(and(eq(schema.refreshTokens.familyId, familyId), isNull(schema.refreshTokens.revokedAt)));
}

/** Inserts a new access token and, unless the client may not refresh, its refresh token, in the caller's transaction. */
async function insertPairIn(tx: Tx, issued: IssuedTokenHashes, now: number): Promise<void> {
  const common = {
    grantId: issued.grantId,
    familyId: issued.familyId,
    clientId: issued.clientId,
    resource: issued.resource,
    scope: issued.scope,
    createdAt: now,
    revokedAt: null,
  };
  await tx.insert(schema.accessTokens).values({ ...common, tokenHash: issued.accessTokenHash, expiresAt: issued.accessExpiresAt });
  if (issued.refreshTokenHash !== null && issued.refreshExpiresAt !== null) {
    await tx.insert(schema.refreshTokens).values({ ...common, tokenHash: issued.refreshTokenHash, expiresAt: issued.refreshExpiresAt, rotatedAt: null });
  }
}

// The admin command's reads and deletes over the store: grants with their client's name, clients with their
// grants and last use, and a client's removal. Revocations go through Store.revokeGrant, as /oauth/revoke's do.
import { and, count, eq, inArray, isNull, max, type SQL } from "drizzle-orm";
import * as schema from "./schema.ts";
import * as pgSchema from "./pg-schema.ts";
import type { PgStore } from "./pg-store.ts";
import type { SqliteStore } from "./sqlite-store.ts";

export interface GrantSummary {
  grantId: string;
  clientId: string;
  clientName: string;
  forgejoUserId: number;
  forgejoLogin: string;
  createdAt: number;
}

export interface ClientSummary {
  clientId: string;
  name: string;
  tokenEndpointAuthMethod: string;
  createdAt: number;
  /** Grants not revoked. */
  activeGrants: number;
  /** When a token was last issued to it (a sign-in or a refresh); null if never. */
  lastTokenIssuedAt: number | null;
}

/** Which active grants an operator means: every filter given must match. */
export interface GrantFilter {
  forgejoLogin?: string;
  clientId?: string;
  grantId?: string;
}

/** What the admin command reads and deletes beyond the Store's own methods. */
export interface AdminQueries {
  /** Active (not revoked) grants matching `filter`, oldest first. */
  activeGrants(filter?: GrantFilter): Promise<GrantSummary[]>;
  /** The grants of these ids, revoked or not (a session may outlive its grant by the moment its revocation takes). */
  grantsById(grantIds: string[]): Promise<Map<string, GrantSummary>>;
  /** Every registered client, with its active grants and when a token was last issued to it, newest first. */
  clients(): Promise<ClientSummary[]>;
  /** Revokes the client's active grants, then removes it with everything that references it. */
  deleteClient(clientId: string, now: number): Promise<{ deleted: boolean; revokedGrants: string[] }>;
}

/** A client's row as both dialects' queries read it: counts and times still null where nothing joined. */
type ClientRow = Omit<ClientSummary, "activeGrants" | "lastTokenIssuedAt"> & { activeGrants: number | null; lastTokenIssuedAt: number | null };

/**
 * The queries' rules, once: which grants a filter means, how client rows become summaries, the order of a
 * client's removal. Each dialect supplies only the three statements, since Drizzle's builders differ by dialect
 * in their types (a union of the two databases has no callable `select`), not in what they say.
 */
abstract class DrizzleAdminQueries implements AdminQueries {
  constructor(private readonly store: Pick<SqliteStore | PgStore, "getClient" | "revokeGrant">) {}

  /** Grants with their client's name, matching `where`, oldest first. */
  protected abstract grantRows(where: SQL | undefined): Promise<GrantSummary[]>;
  /** Every client with its active grants counted and its last token's time. */
  protected abstract clientRows(): Promise<ClientRow[]>;
  protected abstract deleteClientRow(clientId: string): Promise<void>;
  /** The dialect's grants table, for the conditions below. */
  protected abstract readonly grants: typeof schema.grants | typeof pgSchema.grants;

  /** Active (not revoked) grants matching `filter`, oldest first. */
  activeGrants(filter: GrantFilter = {}): Promise<GrantSummary[]> {
    const g = this.grants;
    return this.grantRows(
      and(
        isNull(g.revokedAt),
        filter.forgejoLogin === undefined ? undefined : eq(g.forgejoLogin, filter.forgejoLogin),
        filter.clientId === undefined ? undefined : eq(g.clientId, filter.clientId),
        filter.grantId === undefined ? undefined : eq(g.id, filter.grantId),
      ),
    );
  }

  /** The grants of these ids, revoked or not (a session may outlive its grant by the moment its revocation takes). */
  async grantsById(grantIds: string[]): Promise<Map<string, GrantSummary>> {
    if (grantIds.length === 0) return new Map();
    const rows = await this.grantRows(inArray(this.grants.id, [...new Set(grantIds)]));
    return new Map(rows.map((row) => [row.grantId, row]));
  }

  /** Every registered client, with its active grants and when a token was last issued to it, newest first. */
  async clients(): Promise<ClientSummary[]> {
    return (await this.clientRows())
      .map((row) => ({ ...row, activeGrants: row.activeGrants ?? 0, lastTokenIssuedAt: row.lastTokenIssuedAt ?? null }))
      .sort((x, y) => y.createdAt - x.createdAt);
  }

  /**
   * Removes a client: its active grants are revoked first (so their sessions and children end as on
   * /oauth/revoke), then the row goes with everything that references it. False when there is no such client.
   */
  async deleteClient(clientId: string, now: number): Promise<{ deleted: boolean; revokedGrants: string[] }> {
    if ((await this.store.getClient(clientId)) === undefined) return { deleted: false, revokedGrants: [] };
    const revokedGrants = (await this.activeGrants({ clientId })).map((grant) => grant.grantId);
    for (const grantId of revokedGrants) await this.store.revokeGrant(grantId, now);
    await this.deleteClientRow(clientId);
    return { deleted: true, revokedGrants };
  }
}

export class SqliteAdminQueries extends DrizzleAdminQueries {
  protected readonly grants = schema.grants;

  constructor(private readonly sqlite: SqliteStore) {
    super(sqlite);
  }

  protected async grantRows(where: SQL | undefined): Promise<GrantSummary[]> {
    const g = schema.grants;
    const c = schema.clients;
    return this.sqlite.db
      .select({ grantId: g.id, clientId: g.clientId, clientName: c.name, forgejoUserId: g.forgejoUserId, forgejoLogin: g.forgejoLogin, createdAt: g.createdAt })
      .from(g)
      .innerJoin(c, eq(c.id, g.clientId))
      .where(where)
      .orderBy(g.createdAt)
      .all();
  }

  protected async clientRows(): Promise<ClientRow[]> {
    const { clients: c, grants: g, accessTokens: a } = schema;
    const db = this.sqlite.db;
    const grantCounts = db.select({ clientId: g.clientId, active: count().as("active") }).from(g).where(isNull(g.revokedAt)).groupBy(g.clientId).as("grant_counts");
    const lastIssued = db.select({ clientId: a.clientId, last: max(a.createdAt).as("last") }).from(a).groupBy(a.clientId).as("last_issued");
    return db
      .select({ clientId: c.id, name: c.name, tokenEndpointAuthMethod: c.tokenEndpointAuthMethod, createdAt: c.createdAt, activeGrants: grantCounts.active, lastTokenIssuedAt: lastIssued.last })
      .from(c)
      .leftJoin(grantCounts, eq(grantCounts.clientId, c.id))
      .leftJoin(lastIssued, eq(lastIssued.clientId, c.id))
      .all();
  }

  protected async deleteClientRow(clientId: string): Promise<void> {
    this.sqlite.db.delete(schema.clients).where(eq(schema.clients.id, clientId)).run();
  }
}

/** The same statements over PostgreSQL's schema. */
export class PgAdminQueries extends DrizzleAdminQueries {
  protected readonly grants = pgSchema.grants;

  constructor(private readonly pg: PgStore) {
    super(pg);
  }

  protected grantRows(where: SQL | undefined): Promise<GrantSummary[]> {
    const g = pgSchema.grants;
    const c = pgSchema.clients;
    return this.pg.db
      .select({ grantId: g.id, clientId: g.clientId, clientName: c.name, forgejoUserId: g.forgejoUserId, forgejoLogin: g.forgejoLogin, createdAt: g.createdAt })
      .from(g)
      .innerJoin(c, eq(c.id, g.clientId))
      .where(where)
      .orderBy(g.createdAt);
  }

  protected clientRows(): Promise<ClientRow[]> {
    const { clients: c, grants: g, accessTokens: a } = pgSchema;
    const db = this.pg.db;
    const grantCounts = db.select({ clientId: g.clientId, active: count().as("active") }).from(g).where(isNull(g.revokedAt)).groupBy(g.clientId).as("grant_counts");
    const lastIssued = db.select({ clientId: a.clientId, last: max(a.createdAt).as("last") }).from(a).groupBy(a.clientId).as("last_issued");
    return db
      .select({ clientId: c.id, name: c.name, tokenEndpointAuthMethod: c.tokenEndpointAuthMethod, createdAt: c.createdAt, activeGrants: grantCounts.active, lastTokenIssuedAt: lastIssued.last })
      .from(c)
      .leftJoin(grantCounts, eq(grantCounts.clientId, c.id))
      .leftJoin(lastIssued, eq(lastIssued.clientId, c.id));
  }

  protected async deleteClientRow(clientId: string): Promise<void> {
    await this.pg.db.delete(pgSchema.clients).where(eq(pgSchema.clients.id, clientId));
  }
}

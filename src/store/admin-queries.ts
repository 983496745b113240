// The admin command's reads and deletes over the store: grants with their client's name, clients with their
// grants and last use, and a client's removal. Revocations go through Store.revokeGrant, as /oauth/revoke's do.
import { and, count, eq, inArray, isNull, max } from "drizzle-orm";
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

export class SqliteAdminQueries implements AdminQueries {
  constructor(private readonly store: SqliteStore) {}

  /** Active (not revoked) grants matching `filter`, oldest first. */
  async activeGrants(filter: GrantFilter = {}): Promise<GrantSummary[]> {
    const g = schema.grants;
    return this.grantQuery()
      .where(
        and(
          isNull(g.revokedAt),
          filter.forgejoLogin === undefined ? undefined : eq(g.forgejoLogin, filter.forgejoLogin),
          filter.clientId === undefined ? undefined : eq(g.clientId, filter.clientId),
          filter.grantId === undefined ? undefined : eq(g.id, filter.grantId),
        ),
      )
      .orderBy(g.createdAt)
      .all();
  }

  /** The grants of these ids, revoked or not (a session may outlive its grant by the moment its revocation takes). */
  async grantsById(grantIds: string[]): Promise<Map<string, GrantSummary>> {
    if (grantIds.length === 0) return new Map();
    const rows = this.grantQuery().where(inArray(schema.grants.id, [...new Set(grantIds)])).all();
    return new Map(rows.map((row) => [row.grantId, row]));
  }

  /** Every registered client, with its active grants and when a token was last issued to it, newest first. */
  async clients(): Promise<ClientSummary[]> {
    const c = schema.clients;
    const g = schema.grants;
    const a = schema.accessTokens;
    const grantCounts = this.store.db
      .select({ clientId: g.clientId, active: count().as("active") })
      .from(g)
      .where(isNull(g.revokedAt))
      .groupBy(g.clientId)
      .as("grant_counts");
    const lastIssued = this.store.db
      .select({ clientId: a.clientId, last: max(a.createdAt).as("last") })
      .from(a)
      .groupBy(a.clientId)
      .as("last_issued");
    const rows = this.store.db
      .select({
        clientId: c.id,
        name: c.name,
        tokenEndpointAuthMethod: c.tokenEndpointAuthMethod,
        createdAt: c.createdAt,
        activeGrants: grantCounts.active,
        lastTokenIssuedAt: lastIssued.last,
      })
      .from(c)
      .leftJoin(grantCounts, eq(grantCounts.clientId, c.id))
      .leftJoin(lastIssued, eq(lastIssued.clientId, c.id))
      .all();
    return rows
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
    this.store.db.delete(schema.clients).where(eq(schema.clients.id, clientId)).run();
    return { deleted: true, revokedGrants };
  }

  private grantQuery() {
    const g = schema.grants;
    return this.store.db
      .select({
        grantId: g.id,
        clientId: g.clientId,
        clientName: schema.clients.name,
        forgejoUserId: g.forgejoUserId,
        forgejoLogin: g.forgejoLogin,
        createdAt: g.createdAt,
      })
      .from(g)
      .innerJoin(schema.clients, eq(schema.clients.id, g.clientId))
      .$dynamic();
  }
}

/** The same queries over PostgreSQL's schema: Drizzle's builders differ by dialect in their types, not in what they say. */
export class PgAdminQueries implements AdminQueries {
  constructor(private readonly store: PgStore) {}

  /** Active (not revoked) grants matching `filter`, oldest first. */
  async activeGrants(filter: GrantFilter = {}): Promise<GrantSummary[]> {
    const g = pgSchema.grants;
    return this.grantQuery()
      .where(
        and(
          isNull(g.revokedAt),
          filter.forgejoLogin === undefined ? undefined : eq(g.forgejoLogin, filter.forgejoLogin),
          filter.clientId === undefined ? undefined : eq(g.clientId, filter.clientId),
          filter.grantId === undefined ? undefined : eq(g.id, filter.grantId),
        ),
      )
      .orderBy(g.createdAt);
  }

  /** The grants of these ids, revoked or not (a session may outlive its grant by the moment its revocation takes). */
  async grantsById(grantIds: string[]): Promise<Map<string, GrantSummary>> {
    if (grantIds.length === 0) return new Map();
    const rows = await this.grantQuery().where(inArray(pgSchema.grants.id, [...new Set(grantIds)]));
    return new Map(rows.map((row) => [row.grantId, row]));
  }

  /** Every registered client, with its active grants and when a token was last issued to it, newest first. */
  async clients(): Promise<ClientSummary[]> {
    const c = pgSchema.clients;
    const g = pgSchema.grants;
    const a = pgSchema.accessTokens;
    const grantCounts = this.store.db
      .select({ clientId: g.clientId, active: count().as("active") })
      .from(g)
      .where(isNull(g.revokedAt))
      .groupBy(g.clientId)
      .as("grant_counts");
    const lastIssued = this.store.db
      .select({ clientId: a.clientId, last: max(a.createdAt).as("last") })
      .from(a)
      .groupBy(a.clientId)
      .as("last_issued");
    const rows = await this.store.db
      .select({
        clientId: c.id,
        name: c.name,
        tokenEndpointAuthMethod: c.tokenEndpointAuthMethod,
        createdAt: c.createdAt,
        activeGrants: grantCounts.active,
        lastTokenIssuedAt: lastIssued.last,
      })
      .from(c)
      .leftJoin(grantCounts, eq(grantCounts.clientId, c.id))
      .leftJoin(lastIssued, eq(lastIssued.clientId, c.id));
    return rows
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
    await this.store.db.delete(pgSchema.clients).where(eq(pgSchema.clients.id, clientId));
    return { deleted: true, revokedGrants };
  }

  private grantQuery() {
    const g = pgSchema.grants;
    return this.store.db
      .select({
        grantId: g.id,
        clientId: g.clientId,
        clientName: pgSchema.clients.name,
        forgejoUserId: g.forgejoUserId,
        forgejoLogin: g.forgejoLogin,
        createdAt: g.createdAt,
      })
      .from(g)
      .innerJoin(pgSchema.clients, eq(pgSchema.clients.id, g.clientId))
      .$dynamic();
  }
}

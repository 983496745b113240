// The PostgreSQL dialect of schema.ts: the same tables, columns and indexes, so both stores hand out the
// same rows. Times are Unix milliseconds, which need 64-bit columns here (read back as JavaScript numbers).
import { sql } from "drizzle-orm";
import { bigint, index, integer, jsonb, pgTable, text, uniqueIndex } from "drizzle-orm/pg-core";

const ms = (name: string) => bigint(name, { mode: "number" });

export const clients = pgTable("clients", {
  id: text("id").primaryKey(),
  secretHash: text("secret_hash"),
  tokenEndpointAuthMethod: text("token_endpoint_auth_method").notNull(),
  name: text("name").notNull(),
  redirectUris: jsonb("redirect_uris").$type<string[]>().notNull(),
  metadata: jsonb("metadata").$type<Record<string, unknown>>().notNull(),
  createdAt: ms("created_at").notNull(),
  lastUsedAt: ms("last_used_at"),
});

export const authorizations = pgTable(
  "authorizations",
  {
    id: text("id").primaryKey(),
    clientId: text("client_id")
      .notNull()
      .references(() => clients.id, { onDelete: "cascade" }),
    redirectUri: text("redirect_uri").notNull(),
    codeChallenge: text("code_challenge").notNull(),
    clientState: text("client_state"),
    resource: text("resource").notNull(),
    scope: text("scope").notNull(),
    csrfHash: text("csrf_hash").notNull(),
    browserHash: text("browser_hash").notNull(),
    upstreamStateHash: text("upstream_state_hash"),
    upstreamVerifierSealed: text("upstream_verifier_sealed"),
    createdAt: ms("created_at").notNull(),
    expiresAt: ms("expires_at").notNull(),
    consumedAt: ms("consumed_at"),
  },
  (table) => [uniqueIndex("authorizations_upstream_state").on(table.upstreamStateHash), index("authorizations_expires").on(table.expiresAt), index("authorizations_browser").on(table.browserHash)],
);

export const grants = pgTable(
  "grants",
  {
    id: text("id").primaryKey(),
    clientId: text("client_id")
      .notNull()
      .references(() => clients.id, { onDelete: "cascade" }),
    forgejoUserId: bigint("forgejo_user_id", { mode: "number" }).notNull(),
    forgejoLogin: text("forgejo_login").notNull(),
    scope: text("scope").notNull(),
    createdAt: ms("created_at").notNull(),
    revokedAt: ms("revoked_at"),
  },
  (table) => [
    uniqueIndex("grants_active_client_user")
      .on(table.clientId, table.forgejoUserId)
      .where(sql`${table.revokedAt} IS NULL`),
    index("grants_user").on(table.forgejoUserId),
  ],
);

export const authCodes = pgTable(
  "auth_codes",
  {
    codeHash: text("code_hash").primaryKey(),
    grantId: text("grant_id")
      .notNull()
      .references(() => grants.id, { onDelete: "cascade" }),
    clientId: text("client_id").notNull(),
    redirectUri: text("redirect_uri").notNull(),
    codeChallenge: text("code_challenge").notNull(),
    resource: text("resource").notNull(),
    scope: text("scope").notNull(),
    familyId: text("family_id").notNull(),
    expiresAt: ms("expires_at").notNull(),
    usedAt: ms("used_at"),
  },
  (table) => [index("auth_codes_expires").on(table.expiresAt)],
);

const tokenColumns = () => ({
  tokenHash: text("token_hash").primaryKey(),
  grantId: text("grant_id")
    .notNull()
    .references(() => grants.id, { onDelete: "cascade" }),
  familyId: text("family_id").notNull(),
  clientId: text("client_id").notNull(),
  resource: text("resource").notNull(),
  scope: text("scope").notNull(),
  createdAt: ms("created_at").notNull(),
  expiresAt: ms("expires_at").notNull(),
  revokedAt: ms("revoked_at"),
});

export const accessTokens = pgTable("access_tokens", tokenColumns(), (table) => [
  index("access_tokens_grant").on(table.grantId),
  index("access_tokens_family").on(table.familyId),
  index("access_tokens_expires").on(table.expiresAt),
]);

export const refreshTokens = pgTable("refresh_tokens", { ...tokenColumns(), rotatedAt: ms("rotated_at") }, (table) => [
  index("refresh_tokens_grant").on(table.grantId),
  index("refresh_tokens_family").on(table.familyId),
  index("refresh_tokens_expires").on(table.expiresAt),
]);

export const upstreamCredentials = pgTable("upstream_credentials", {
  forgejoUserId: bigint("forgejo_user_id", { mode: "number" }).primaryKey(),
  forgejoLogin: text("forgejo_login").notNull(),
  accessTokenSealed: text("access_token_sealed").notNull(),
  refreshTokenSealed: text("refresh_token_sealed"),
  accessExpiresAt: ms("access_expires_at"),
  version: integer("version").notNull(),
  updatedAt: ms("updated_at").notNull(),
});

// Drizzle schema of the broker's state: registered clients, browser flows in progress, codes,
// grants, our tokens (hashes only) and the one sealed upstream Forgejo credential per Forgejo user.
import { sql } from "drizzle-orm";
import { index, integer, sqliteTable, text, uniqueIndex } from "drizzle-orm/sqlite-core";

/** Times are Unix milliseconds. */
const ms = (name: string) => integer(name, { mode: "number" });

export const clients = sqliteTable("clients", {
  id: text("id").primaryKey(),
  /** SHA-256 of the client secret; null for public clients. */
  secretHash: text("secret_hash"),
  tokenEndpointAuthMethod: text("token_endpoint_auth_method").notNull(),
  name: text("name").notNull(),
  redirectUris: text("redirect_uris", { mode: "json" }).$type<string[]>().notNull(),
  /** The registered metadata as echoed back to the client (RFC 7591 §3.2.1). */
  metadata: text("metadata", { mode: "json" }).$type<Record<string, unknown>>().notNull(),
  createdAt: ms("created_at").notNull(),
  /** When the client last held something live (a grant's token or code); null until its first grant. What client clean-up goes by. */
  lastUsedAt: ms("last_used_at"),
});

/** A browser flow between the consent page and Forgejo's callback; ten minutes to live. */
export const authorizations = sqliteTable(
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
    /** SHA-256 of the consent form's CSRF token. */
    csrfHash: text("csrf_hash").notNull(),
    /** SHA-256 of the browser-binding cookie set with the consent page. */
    browserHash: text("browser_hash").notNull(),
    /** SHA-256 of the state we sent to Forgejo; set when the user allows. */
    upstreamStateHash: text("upstream_state_hash"),
    /** Our PKCE verifier toward Forgejo, sealed. */
    upstreamVerifierSealed: text("upstream_verifier_sealed"),
    createdAt: ms("created_at").notNull(),
    expiresAt: ms("expires_at").notNull(),
    consumedAt: ms("consumed_at"),
  },
  (table) => [uniqueIndex("authorizations_upstream_state").on(table.upstreamStateHash), index("authorizations_expires").on(table.expiresAt), index("authorizations_browser").on(table.browserHash)],
);

/** One per (client, Forgejo user) while active: what token families and MCP sessions belong to. */
export const grants = sqliteTable(
  "grants",
  {
    id: text("id").primaryKey(),
    clientId: text("client_id")
      .notNull()
      .references(() => clients.id, { onDelete: "cascade" }),
    forgejoUserId: integer("forgejo_user_id").notNull(),
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

export const authCodes = sqliteTable(
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
    /** The token family the code was exchanged for, so a replayed code can revoke it. */
    familyId: text("family_id").notNull(),
    expiresAt: ms("expires_at").notNull(),
    usedAt: ms("used_at"),
  },
  (table) => [index("auth_codes_expires").on(table.expiresAt)],
);

const tokenColumns = {
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
};

export const accessTokens = sqliteTable("access_tokens", tokenColumns, (table) => [
  index("access_tokens_grant").on(table.grantId),
  index("access_tokens_family").on(table.familyId),
  index("access_tokens_expires").on(table.expiresAt),
]);

export const refreshTokens = sqliteTable(
  "refresh_tokens",
  { ...tokenColumns, rotatedAt: ms("rotated_at") },
  (table) => [
    index("refresh_tokens_grant").on(table.grantId),
    index("refresh_tokens_family").on(table.familyId),
    index("refresh_tokens_expires").on(table.expiresAt),
  ],
);

/** Forgejo keeps one grant per (app, user) and invalidates older refresh tokens: so one row per user. */
export const upstreamCredentials = sqliteTable("upstream_credentials", {
  forgejoUserId: integer("forgejo_user_id").primaryKey(),
  forgejoLogin: text("forgejo_login").notNull(),
  accessTokenSealed: text("access_token_sealed").notNull(),
  refreshTokenSealed: text("refresh_token_sealed"),
  /** When Forgejo's access token expires; null when Forgejo did not say. */
  accessExpiresAt: ms("access_expires_at"),
  /** Bumped on every write, so a replica can tell a concurrent refresh happened. */
  version: integer("version").notNull(),
  updatedAt: ms("updated_at").notNull(),
});

// The one interface every read and write of OAuth state goes through, whichever database holds it, and
// the exchange rules both implementations share: the checks and their order, over atomic statements each dialect supplies.
import { verifyS256 } from "../oauth/pkce.ts";
import { narrowScope } from "../oauth/scope.ts";
import type * as schema from "./schema.ts";

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


/** Every committed revocation's grant, whatever asked for it; see Store.onRevocation. */
export type RevocationListener = (grantId: string) => void;

/**
 * OAuth state, asynchronous so that it can live in a database across the network. Each method is one
 * statement or one transaction: a single-use rule is decided by a conditional UPDATE inside it, never by a read.
 */
export interface Store {
  /** Goes up whenever this store revokes an access token, so a cache of identities knows to look again. */
  readonly revocationCount: number;
  /** Hears the grant of every revocation this store commits; returns the unsubscribe function. */
  onRevocation(listener: RevocationListener): () => void;
  close(): Promise<void>;
  /** For health checks: a query that reaches the database. */
  ping(): Promise<void>;

  createClient(row: NewClientRow): Promise<void>;
  getClient(id: string): Promise<ClientRow | undefined>;
  /** Keeps the client a metadata document describes, keyed by its URL; its first sighting stays. */
  putDocumentClient(row: NewClientRow): Promise<ClientRow>;

  /** Starts a browser flow and keeps only that browser's `maxPerBrowser` newest unfinished ones. */
  createAuthorization(row: AuthorizationRow, maxPerBrowser: number): Promise<void>;
  getAuthorization(id: string, now: number): Promise<AuthorizationRow | undefined>;
  /** Records the user's Allow: only once, and only while the flow is live. */
  allowAuthorization(id: string, upstreamStateHash: string, upstreamVerifierSealed: string, now: number): Promise<boolean>;
  /** Ends a flow (Deny); returns it if it was live. */
  consumeAuthorization(id: string, now: number): Promise<AuthorizationRow | undefined>;
  /** Forgejo's callback: the state is single-use, so the first caller wins and replays find nothing. */
  consumeAuthorizationByUpstreamState(upstreamStateHash: string, now: number): Promise<AuthorizationRow | undefined>;

  /** The active grant of (client, Forgejo user), created when there is none; either way the client was used now. */
  findOrCreateGrant(input: { id: string; clientId: string; forgejoUserId: number; forgejoLogin: string; scope: string; now: number }): Promise<GrantRow>;
  /** Revokes a grant and every token issued under it. */
  revokeGrant(grantId: string, now: number): Promise<void>;
  /** Whether a client can still act under the grant: a live access token, or an unrotated live refresh token. */
  grantHasLiveTokens(grantId: string, now: number): Promise<boolean>;
  /** Revokes every active grant of a Forgejo user (their upstream credential is gone); returns the grant ids. */
  revokeGrantsOfUser(forgejoUserId: number, now: number): Promise<string[]>;

  createAuthCode(row: AuthCodeRow): Promise<void>;
  exchangeCode(request: CodeExchangeRequest): Promise<Exchange>;
  exchangeRefresh(request: RefreshExchangeRequest): Promise<Exchange>;
  /** Inserts a new access token and, unless the client may not refresh, its refresh token; both or neither. */
  insertTokenPair(issued: IssuedTokenHashes, now: number): Promise<void>;
  /** The identity behind a live access token, or undefined for unknown, expired or revoked ones. */
  findAccessIdentity(tokenHash: string, now: number): Promise<TokenIdentity | undefined>;
  /** RFC 7009: revoking a refresh token ends its family; an access token ends alone. Unknown is fine. */
  revokeToken(tokenHash: string, clientId: string, now: number): Promise<"access" | "refresh" | "unknown">;

  getUpstreamCredential(forgejoUserId: number): Promise<UpstreamCredentialRow | undefined>;
  /** Stores a credential from a fresh sign-in: it replaces whatever the user had (Forgejo invalidated it). */
  putUpstreamCredential(row: Omit<UpstreamCredentialRow, "version">): Promise<UpstreamCredentialRow>;
  /** Stores a refreshed credential only if nobody else wrote since `expectedVersion` was read. */
  replaceUpstreamCredential(forgejoUserId: number, expectedVersion: number, next: UpstreamCredentialUpdate): Promise<UpstreamCredentialRow | undefined>;
  deleteUpstreamCredential(forgejoUserId: number): Promise<void>;
  /**
   * Runs `work` on the user's credential as it is once locked against every other replica's refresh of it,
   * and stores the update `work` returns before the lock is released; `stored` is undefined when nothing was.
   * Forgejo retires a refresh token when it is used, so two replicas refreshing one user would cost them their grant.
   */
  withUpstreamCredentialLocked<T>(forgejoUserId: number, work: (row: UpstreamCredentialRow | undefined) => Promise<LockedCredentialWork<T>>): Promise<{ result: T; stored: UpstreamCredentialRow | undefined }>;

  /** Deletes the clients nobody uses (see the SQLite implementation for the rules); a client in use is stamped. */
  reapClients(now: number, rules: { unusedMs: number; idleMs: number; stampEveryMs: number }): Promise<{ unused: number; idle: number }>;
  /** Deletes rows past their life; rotated and revoked tokens are kept until they expire, for replay detection. */
  purgeExpired(now: number): Promise<number>;
}

/** The revocations a store committed: a count an identity cache compares, and the listeners it tells. */
export class RevocationNotices {
  private committed = 0;
  private readonly listeners = new Set<RevocationListener>();

  get count(): number {
    return this.committed;
  }

  listen(listener: RevocationListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The one place a committed revocation is marked: the identity cache's counter and the listeners. */
  committedFor(grantId: string): void {
    this.committed++;
    for (const listener of this.listeners) listener(grantId);
  }
}

/** What work on a locked credential decided: its result, and the new pair to store, if any. */
export interface LockedCredentialWork<T> {
  result: T;
  update?: UpstreamCredentialUpdate;
}

export type UpstreamCredentialUpdate = Pick<UpstreamCredentialRow, "accessTokenSealed" | "refreshTokenSealed" | "accessExpiresAt" | "updatedAt">;

/** The atomic statements an exchange is made of; exchangeCode and exchangeRefresh below order them. */
export interface ExchangeStatements {
  findCode(codeHash: string): Promise<AuthCodeRow | undefined>;
  /** In one transaction: marks the code used if it is still unused, unexpired and its grant live, and inserts the pair. False when it was not. */
  spendCode(codeHash: string, now: number, issued: IssuedTokenHashes): Promise<boolean>;
  findRefreshToken(tokenHash: string, clientId: string): Promise<RefreshTokenRow | undefined>;
  /** In one transaction: marks the token rotated if it is still unrotated, unrevoked, unexpired and its grant live, and inserts the pair. */
  rotateRefreshToken(tokenHash: string, clientId: string, now: number, issued: IssuedTokenHashes): Promise<boolean>;
  revokeFamily(familyId: string, grantId: string, now: number): Promise<void>;
  revokeGrant(grantId: string, now: number): Promise<void>;
}

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
export async function exchangeCode(statements: ExchangeStatements, request: CodeExchangeRequest): Promise<Exchange> {
  const { client, now } = request;
  const grantTypes = registeredGrantTypes(client);
  if (!grantTypes.includes("authorization_code")) return refused("unauthorized_client", "This client did not register the authorization_code grant type");
  const code = await statements.findCode(request.codeHash);
  if (!code) return refused("invalid_grant", "The authorization code is invalid or expired");
  if (code.clientId !== client.id) return refused("invalid_grant", "The authorization code was issued to another client");
  if (!verifyS256(request.codeVerifier, code.codeChallenge)) return refused("invalid_grant", "code_verifier does not match the code_challenge");
  // The caller holds the code and its verifier: if the code was spent already, this is the replay.
  if (code.usedAt !== null) return codeReplayed(statements, code, now);
  const mismatch = codeRequestMismatch(code, request);
  if (mismatch) return mismatch;
  if (code.expiresAt <= now) return refused("invalid_grant", "The authorization code is invalid or expired");

  const refreshIssued = grantTypes.includes("refresh_token");
  if (await statements.spendCode(code.codeHash, now, issuedFor(code, code.scope, request.tokens, refreshIssued))) return { ok: true, scope: code.scope, refreshIssued };
  // Another caller spent the code between our read and our update: this presentation is the replay.
  const spent = await statements.findCode(request.codeHash);
  return spent?.usedAt != null ? codeReplayed(statements, spent, now) : refused("invalid_grant", "The authorization code is invalid or expired");
}

async function codeReplayed(statements: ExchangeStatements, code: AuthCodeRow, now: number): Promise<Exchange> {
  await statements.revokeFamily(code.familyId, code.grantId, now);
  return refused("invalid_grant", "The authorization code was already used", "family");
}

/**
 * The refresh-token grant (RFC 6749 §6) in one place, with the same shape as exchangeCode: a
 * refused request (a scope never granted, another resource) leaves the refresh token as it was;
 * only a request that gets a new pair rotates it, in the transaction that inserts the pair. A
 * token rotated longer than `graceMs` ago and presented again is a replay: the grant is revoked.
 */
export async function exchangeRefresh(statements: ExchangeStatements, request: RefreshExchangeRequest): Promise<Exchange> {
  const { client, now } = request;
  if (!registeredGrantTypes(client).includes("refresh_token")) return refused("unauthorized_client", "This client did not register the refresh_token grant type");
  const token = await statements.findRefreshToken(request.refreshTokenHash, client.id);
  const invalid = refused("invalid_grant", "The refresh token is invalid, expired or revoked");
  if (!token) return invalid;
  if (token.rotatedAt !== null) return refreshReplayed(statements, token, now, request.graceMs);
  if (token.revokedAt !== null || token.expiresAt <= now) return invalid;
  if (request.resource !== undefined && request.resource !== token.resource) return refused("invalid_target", `resource must be ${token.resource}`);
  const scope = narrowScope(token.scope, request.scope);
  if (!scope.ok) return refused("invalid_scope", scope.reason);

  if (await statements.rotateRefreshToken(token.tokenHash, client.id, now, issuedFor(token, scope.scope, request.tokens, true))) {
    return { ok: true, scope: scope.scope, refreshIssued: true };
  }
  // Another caller rotated it between our read and our update (a retry within the grace window, or a theft).
  const spent = await statements.findRefreshToken(request.refreshTokenHash, client.id);
  return spent?.rotatedAt != null ? refreshReplayed(statements, spent, now, request.graceMs) : invalid;
}

async function refreshReplayed(statements: ExchangeStatements, token: RefreshTokenRow, now: number, graceMs: number): Promise<Exchange> {
  const outsideGrace = now - token.rotatedAt! > graceMs;
  if (outsideGrace) await statements.revokeGrant(token.grantId, now);
  return refused("invalid_grant", "The refresh token was already used", outsideGrace ? "grant" : undefined);
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

// The broker's OAuth client toward Forgejo (arctic's Gitea provider): authorization URL, code exchange,
// refresh and user lookup, with failures sorted into "Forgejo said no" and "Forgejo could not answer".
import { ArcticFetchError, Gitea, OAuth2RequestError, UnexpectedResponseError, type OAuth2Tokens } from "arctic";
import type { Timers } from "../supervisor/timers.ts";
import { waitAtMost } from "./deadline.ts";

export interface UpstreamTokens {
  accessToken: string;
  /** Null when Forgejo sent none; a refresh that sends none leaves the previous one in force (RFC 6749 §6). */
  refreshToken: string | null;
  /** Absolute Unix ms; null when Forgejo did not say. */
  accessExpiresAt: number | null;
}

export interface ForgejoUser {
  id: number;
  login: string;
}

/**
 * Forgejo answered with an OAuth error about the user's code or token (`unauthorized_client`,
 * `invalid_grant`, …): retrying will not help, the user has to sign in again.
 */
export class UpstreamRefusedError extends Error {
  constructor(
    readonly code: string,
    readonly description: string | null,
  ) {
    super(`Forgejo refused: ${code}${description ? ` (${description})` : ""}`);
    this.name = "UpstreamRefusedError";
  }
}

export type UnavailableReason = "network" | "status" | "malformed" | "client_rejected" | "timeout";

/**
 * Forgejo could not give an answer about the user (network, 5xx, a body we cannot read), or it
 * rejected the broker's own client credentials: nothing is wrong with the user's grant, try later.
 */
export class UpstreamUnavailableError extends Error {
  constructor(
    readonly reason: UnavailableReason,
    message: string,
    readonly status: number | null = null,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "UpstreamUnavailableError";
  }
}

export interface ForgejoClientOptions {
  /** Forgejo's base URL, without a trailing slash. */
  url: string;
  clientId: string;
  clientSecret: string;
  /** Our callback, exactly as registered on the Forgejo OAuth2 application. */
  redirectUri: string;
  /** Kept constant: Forgejo ignores a changed scope once the app holds a grant. */
  scopes: string[];
  /** For the API calls; arctic's token requests use the global fetch, it takes no other. */
  fetch: typeof fetch;
  now: () => number;
  /** How long a sign-in waits for each of Forgejo's answers (the code exchange, the user lookup). */
  timeoutMs: number;
  timers: Pick<Timers, "setTimeout" | "clearTimeout">;
}

/** What a wait for Forgejo that ran out says; the seconds help an operator tell a slow Forgejo from a down one. */
export function forgejoTimedOut(what: string, ms: number): UpstreamUnavailableError {
  return new UpstreamUnavailableError("timeout", `${what} did not answer within ${ms / 1000} s`);
}

export class ForgejoClient {
  private readonly gitea: Gitea;

  constructor(private readonly options: ForgejoClientOptions) {
    this.gitea = new Gitea(options.url, options.clientId, options.clientSecret, options.redirectUri);
  }

  /** Where to send the browser: S256 PKCE, our constant scope string. */
  authorizationUrl(state: string, codeVerifier: string): URL {
    return this.gitea.createAuthorizationURL(state, codeVerifier, this.options.scopes);
  }

  /**
   * arctic's request cannot be aborted, so the wait ends at the deadline and a late answer is
   * dropped: the user's code is spent either way, and signing in again gets a new one.
   */
  async exchangeCode(code: string, codeVerifier: string): Promise<UpstreamTokens> {
    const { timeoutMs, timers } = this.options;
    const exchange = this.tokens(() => this.gitea.validateAuthorizationCode(code, codeVerifier), false);
    return waitAtMost(exchange, timeoutMs, timers, () => forgejoTimedOut("Forgejo's token endpoint", timeoutMs));
  }

  /**
   * Forgejo retires `refreshToken` (and every older one of the grant) as soon as this succeeds, so
   * this waits for Forgejo's answer however long it takes (Bun ends an idle connection after 5
   * minutes): the caller that owns the refresh must get the new pair to store it. Callers that only
   * need a token bound their own wait (UpstreamCredentials).
   */
  async refresh(refreshToken: string): Promise<UpstreamTokens> {
    return this.tokens(() => this.gitea.refreshAccessToken(refreshToken), true);
  }

  async fetchUser(accessToken: string): Promise<ForgejoUser> {
    const { timeoutMs, timers } = this.options;
    const abort = new AbortController();
    const timer = timers.setTimeout(() => abort.abort(), timeoutMs);
    try {
      return await this.readUser(accessToken, abort.signal);
    } catch (error) {
      if (abort.signal.aborted) throw forgejoTimedOut("Forgejo's user API", timeoutMs);
      throw error;
    } finally {
      timers.clearTimeout(timer);
    }
  }

  private async readUser(accessToken: string, signal: AbortSignal): Promise<ForgejoUser> {
    let response: Response;
    try {
      response = await this.options.fetch(`${this.options.url}/api/v1/user`, {
        headers: { Authorization: `Bearer ${accessToken}`, Accept: "application/json" },
        signal,
      });
    } catch (error) {
      throw new UpstreamUnavailableError("network", "Forgejo's user API could not be reached", null, { cause: error });
    }
    if (response.status === 401) {
      await response.body?.cancel();
      throw new UpstreamRefusedError("invalid_token", "Forgejo's user API did not accept the access token");
    }
    if (response.status !== 200) {
      await response.body?.cancel();
      throw new UpstreamUnavailableError("status", `Forgejo's user API answered HTTP ${response.status}`, response.status);
    }
    const body: unknown = await response.json().catch(() => null);
    const { id, login } = (typeof body === "object" && body !== null ? body : {}) as Record<string, unknown>;
    if (typeof id !== "number" || !Number.isSafeInteger(id) || id <= 0 || typeof login !== "string" || login === "") {
      throw new UpstreamUnavailableError("malformed", "Forgejo's user API answered without a user id and login");
    }
    return { id, login };
  }

  private async tokens(request: () => Promise<OAuth2Tokens>, isRefresh: boolean): Promise<UpstreamTokens> {
    let tokens: OAuth2Tokens;
    try {
      tokens = await request();
    } catch (error) {
      throw classify(error, isRefresh);
    }
    // arctic's accessors throw on a missing or mistyped field; read the data ourselves instead.
    const data = tokens.data as Record<string, unknown>;
    if (typeof data.access_token !== "string" || data.access_token === "") {
      throw new UpstreamUnavailableError("malformed", "Forgejo's token response has no access_token");
    }
    return {
      accessToken: data.access_token,
      refreshToken: typeof data.refresh_token === "string" && data.refresh_token !== "" ? data.refresh_token : null,
      accessExpiresAt: typeof data.expires_in === "number" ? this.options.now() + data.expires_in * 1000 : null,
    };
  }
}

/** Messages carry Forgejo's error code and description only: never a token, code or secret. */
function classify(error: unknown, isRefresh: boolean): Error {
  if (error instanceof OAuth2RequestError) {
    // At refresh, invalid_client means the broker's own secret is wrong (Forgejo says unauthorized_client
    // for that at code exchange): the user's grant is fine, so this must not cost them their credential.
    if (isRefresh && error.code === "invalid_client") {
      return new UpstreamUnavailableError("client_rejected", "Forgejo rejected the broker's client credentials (check FORGEJO_CLIENT_ID and FORGEJO_CLIENT_SECRET or FORGEJO_CLIENT_SECRET_FILE)");
    }
    return new UpstreamRefusedError(error.code, error.description);
  }
  if (error instanceof ArcticFetchError) {
    return new UpstreamUnavailableError("network", "Forgejo's token endpoint could not be reached", null, { cause: error.cause });
  }
  // arctic reports a 200 (or 400/401) whose body is not JSON this way too; only other statuses are about HTTP.
  if (error instanceof UnexpectedResponseError && ![200, 400, 401].includes(error.status)) {
    return new UpstreamUnavailableError("status", `Forgejo's token endpoint answered HTTP ${error.status}`, error.status);
  }
  // An answer we cannot read is not a refusal.
  const status = typeof (error as { status?: unknown }).status === "number" ? (error as { status: number }).status : null;
  return new UpstreamUnavailableError("malformed", "Forgejo's token endpoint answered with a body we cannot read", status);
}

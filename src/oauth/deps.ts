// What the authorization server's handlers are given: configuration, store, clock, logger and
// the upstream Forgejo collaborators, so tests can assemble the server around stand-ins.
import type { BrokerConfig } from "../config.ts";
import type { TokenSealer } from "../crypto.ts";
import type { Logger } from "../log.ts";
import type { Store } from "../store/store.ts";
import type { UpstreamCredentials } from "../upstream/credentials.ts";
import type { ClientDirectory } from "./client-directory.ts";
import type { ForgejoClient } from "../upstream/forgejo.ts";
import type { BrokerMetrics } from "../observability/metrics.ts";
import type { AccessIdentityCache } from "./identity-cache.ts";
import type { RateLimiter, RateVerdict } from "./rate-limit.ts";

export interface OAuthDeps {
  config: BrokerConfig;
  store: Store;
  /** Registered clients and clients known by their metadata document's URL. */
  clients: ClientDirectory;
  sealer: TokenSealer;
  forgejo: ForgejoClient;
  credentials: UpstreamCredentials;
  logger: Logger;
  now: () => number;
  rateLimiter: RateLimiter;
  /** The edge guard's per-address limits counted with the other replicas (Redis); `rateLimiter` alone when absent. */
  sharedRateLimiter?: { take(key: string): Promise<RateVerdict> };
  /** The bearer guard's identity cache, when the broker must also clear it of revocations made elsewhere. */
  identities?: AccessIdentityCache;
  /** The peer address a rate limit is keyed on. */
  clientAddress: (request: Request) => string;
  lifetimes: TokenLifetimes;
  /** Tokens issued, replays detected, rate-limit refusals; none recorded without it. */
  metrics?: BrokerMetrics;
}

export interface TokenLifetimes {
  accessTokenMs: number;
  refreshTokenMs: number;
  authCodeMs: number;
  authorizationMs: number;
  /** How long a rotated refresh token may be presented again (a retry after a lost response) before that counts as theft. */
  refreshReuseGraceMs: number;
}

export const DEFAULT_LIFETIMES: TokenLifetimes = {
  accessTokenMs: 3600_000,
  refreshTokenMs: 30 * 24 * 3600_000,
  authCodeMs: 60_000,
  authorizationMs: 10 * 60_000,
  refreshReuseGraceMs: 10_000,
};

export const endpoints = (publicUrl: string) => ({
  authorization: `${publicUrl}/oauth/authorize`,
  token: `${publicUrl}/oauth/token`,
  registration: `${publicUrl}/oauth/register`,
  revocation: `${publicUrl}/oauth/revoke`,
  callback: `${publicUrl}/oauth/callback`,
  protectedResourceMetadata: `${publicUrl}/.well-known/oauth-protected-resource/mcp`,
});

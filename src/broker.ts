// Assembles a running broker from a validated configuration: store, sealing key, Forgejo client,
// the app and its listener, the purge timer, and an orderly stop; shared by the entry point and tests.
import { join } from "node:path";
import type { BrokerConfig } from "./config.ts";
import { TokenSealer, ensurePrivateDir, loadOrCreateSealingKey } from "./crypto.ts";
import { createApp, type AppDeps } from "./http/app.ts";
import type { Logger } from "./log.ts";
import { DEFAULT_LIFETIMES, endpoints, type OAuthDeps, type TokenLifetimes } from "./oauth/deps.ts";
import { RateLimiter, type RateLimitPolicy } from "./oauth/rate-limit.ts";
import { Store } from "./store/store.ts";
import { UpstreamCredentials } from "./upstream/credentials.ts";
import { ForgejoClient } from "./upstream/forgejo.ts";

export interface BrokerOptions {
  logger: Logger;
  now?: () => number;
  lifetimes?: Partial<TokenLifetimes>;
  rateLimit?: RateLimitPolicy;
  purgeIntervalMs?: number;
  protectedRoutes?: AppDeps["protectedRoutes"];
}

export interface RunningBroker {
  url: string;
  server: ReturnType<typeof Bun.serve>;
  store: Store;
  oauth: OAuthDeps;
  /** Stops accepting, lets in-flight requests finish, closes the database. */
  stop(): Promise<void>;
}

export const DEFAULT_RATE_LIMIT: RateLimitPolicy = { burst: 30, perSecond: 1 };

export async function startBroker(config: BrokerConfig, options: BrokerOptions): Promise<RunningBroker> {
  const now = options.now ?? Date.now;
  const { logger } = options;
  ensurePrivateDir(config.dataDir);
  const store = Store.open(join(config.dataDir, "broker.sqlite"));
  const sealer = await TokenSealer.fromRawKey(loadOrCreateSealingKey(config.dataDir, config.sealingKey));
  const forgejo = new ForgejoClient({
    url: config.forgejo.url,
    clientId: config.forgejo.clientId,
    clientSecret: config.forgejo.clientSecret,
    redirectUri: endpoints(config.publicUrl).callback,
    scopes: config.forgejo.scopes,
    fetch,
    now,
  });
  const credentials = new UpstreamCredentials({ store, sealer, forgejo, logger, now });

  let server: ReturnType<typeof Bun.serve> | undefined;
  const oauth: OAuthDeps = {
    config,
    store,
    sealer,
    forgejo,
    credentials,
    logger,
    now,
    rateLimiter: new RateLimiter(options.rateLimit ?? DEFAULT_RATE_LIMIT, now),
    clientAddress: (request) => server?.requestIP(request)?.address ?? "unknown",
    lifetimes: { ...DEFAULT_LIFETIMES, ...options.lifetimes },
  };
  const app = createApp({ oauth, logger, health: [{ name: "store", check: () => store.ping() }], protectedRoutes: options.protectedRoutes });
  server = Bun.serve({ hostname: config.host, port: config.port, fetch: (request) => app.handle(request), idleTimeout: 30 });

  const purge = setInterval(() => {
    try {
      const removed = store.purgeExpired(now());
      if (removed > 0) logger.debug("purged expired rows", { removed });
    } catch (error) {
      logger.error("purge failed", { error: error instanceof Error ? error : String(error) });
    }
  }, options.purgeIntervalMs ?? 60_000);
  purge.unref();

  let stopping: Promise<void> | undefined;
  return {
    url: `http://${config.host.includes(":") ? `[${config.host}]` : config.host}:${server.port}`,
    server,
    store,
    oauth,
    stop: () =>
      (stopping ??= (async () => {
        clearInterval(purge);
        await server.stop();
        store.close();
      })()),
  };
}

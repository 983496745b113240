// Assembles a running broker from a validated configuration: store, sealing key, Forgejo client, the
// session registry and its children, the app and its listener, the purge timer, and an orderly stop.
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { join } from "node:path";
import { AdminService } from "./admin/service.ts";
import { adminSocketPath } from "./admin/protocol.ts";
import { listenAdminSocket } from "./admin/socket-server.ts";
import type { BrokerConfig } from "./config.ts";
import { TokenSealer, ensurePrivateDir, loadOrCreateSealingKey } from "./crypto.ts";
import { createApp } from "./http/app.ts";
import { clientAddressOf } from "./http/client-address.ts";
import { mcpRoutes } from "./http/mcp-routes.ts";
import { StreamTokens } from "./http/stream-tokens.ts";
import type { Logger } from "./log.ts";
import { PrincipalChildren } from "./modern/principals.ts";
import { requestStateKeyFrom } from "./modern/request-state.ts";
import { DEFAULT_LIFETIMES, endpoints, type OAuthDeps, type TokenLifetimes } from "./oauth/deps.ts";
import { ClientDirectory } from "./oauth/client-directory.ts";
import { AccessIdentityCache } from "./oauth/identity-cache.ts";
import { MAX_OAUTH_BODY_BYTES } from "./oauth/edge-guard.ts";
import { directConnect, systemLookup, type MetadataFetchDeps } from "./oauth/metadata-fetch.ts";
import { RateLimiter, type RateLimitPolicy } from "./oauth/rate-limit.ts";
import { hopKeyFrom } from "./replicas/internal-hop.ts";
import { startReplicaLink } from "./replicas/replica-link.ts";
import { retryForwarding } from "./replicas/retry-forwarding.ts";
import { sessionForwarding } from "./replicas/session-forwarding.ts";
import { sessionRestore } from "./replicas/session-restore.ts";
import { ForgejoUnreachableError, SignInEndedError } from "./session/errors.ts";
import { SessionRegistry, type UpstreamRefresher, type UpstreamTokenProvider } from "./session/registry.ts";
import { openStore } from "./store/open.ts";
import type { Store } from "./store/store.ts";
import { createSpawnChild } from "./supervisor/child.ts";
import { processRssBytes } from "./supervisor/process-rss.ts";
import type { SandboxPlan } from "./supervisor/sandbox.ts";
import { realTimers, type TimerHandle, type Timers } from "./supervisor/timers.ts";
import { UpstreamCredentialLostError, UpstreamCredentials } from "./upstream/credentials.ts";
import { ForgejoClient, UpstreamUnavailableError } from "./upstream/forgejo.ts";
import { MIN_REFRESH_INTERVAL_MS } from "./upstream/refresh-timing.ts";
import { observeRequests } from "./observability/http-requests.ts";
import { childStartSpans, LiveChildren } from "./observability/live-children.ts";
import { METRICS_PATH, metricsBehindToken, serveMetrics } from "./observability/metrics-endpoint.ts";
import { noMetrics } from "./observability/metrics.ts";
import type { PrometheusMetrics } from "./observability/prometheus.ts";
import { tracedStore } from "./observability/traced-store.ts";
import { noTracing, untracedTimers, type Tracing } from "./observability/tracing.ts";
import { observeForgejo } from "./observability/upstream-calls.ts";
import { requestPath } from "./http/request-path.ts";

export interface BrokerOptions {
  logger: Logger;
  /** How children are wrapped, as probeSandbox found it works on this host. */
  sandbox: SandboxPlan;
  now?: () => number;
  lifetimes?: Partial<TokenLifetimes>;
  rateLimit?: RateLimitPolicy;
  purgeIntervalMs?: number;
  /** How client metadata documents are fetched; tests give a connect that trusts their own certificate authority, and their own clock. */
  metadataFetch?: Partial<Pick<MetadataFetchDeps, "lookup" | "connect" | "timers">>;
  /** SSE comment heartbeat period; 15 s by default. */
  heartbeatMs?: number;
  /** How long a new child has to answer initialize; the registry's 30 s by default. */
  initializeTimeoutMs?: number;
  /** How long a modern caller has to retry after an input_required result; 10 minutes by default (tests shorten it). */
  continuationDeadlineMs?: number;
  /** The listener's idle timeout in seconds (Bun allows 1 to 255); 30 by default. */
  idleTimeoutS?: number;
  /** How long finished spans wait to be sent in a batch (OTEL_EXPORTER_OTLP_ENDPOINT set); 5 s by default. */
  traceExportDelayMs?: number;
  /** The SQLite file instead of broker.sqlite in the data directory: tests share one between two brokers, as replicas share PostgreSQL. */
  storePath?: string;
  /** How long a stop waits for the calls in flight, then for the streams left open; 10 s each by default (DRAIN_GRACE_MS). */
  drainGraceMs?: number;
}

export interface RunningBroker {
  url: string;
  server: ReturnType<typeof Bun.serve>;
  /** The broker's Elysia app, which the server hands every request but /metrics: tests call its handle in-process. */
  app: { handle(request: Request): Promise<Response> };
  store: Store;
  oauth: OAuthDeps;
  registry: SessionRegistry;
  /** The modern era's children, one per grant. */
  principals: PrincipalChildren;
  /** This broker's metrics registry; null when neither BROKER_METRICS_ADDR nor BROKER_METRICS_TOKEN is set. */
  metrics: PrometheusMetrics | null;
  /** The metrics listener's base URL (BROKER_METRICS_ADDR); null without one. */
  metricsUrl: string | null;
  tracing: Tracing;
  /**
   * Starts no new session nor modern call (/healthz says draining), removes the liveness key (the other replicas restore its
   * sessions from then on), stops accepting, lets the calls in flight of both eras finish (drainGraceMs at most), stops every
   * child and waits for it, closes the database.
   */
  stop(): Promise<void>;
}

export const DEFAULT_RATE_LIMIT: RateLimitPolicy = { burst: 30, perSecond: 1 };

/**
 * How long a stopping broker waits for its calls in flight, and again for the streams left open: with the
 * children's 5 s stop grace within the 30 s TimeoutStopSec of deploy/'s units.
 */
const DRAIN_GRACE_MS = 10_000;

/** Waits for `promise`, at most `ms`; false when the time ran out first. */
async function within(timers: Timers, ms: number, promise: Promise<unknown>): Promise<boolean> {
  let timer: TimerHandle | undefined;
  const timedOut = new Promise<false>((resolve) => (timer = timers.setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true), timedOut]);
  } finally {
    timers.clearTimeout(timer!);
  }
}

/** A registered client with no grant this long after registering is deleted. */
const UNUSED_CLIENT_MS = 24 * 3600_000;
/** How often a client in use has that written down: idleness is counted in days, so hours are precise enough. */
const CLIENT_USE_STAMP_MS = 3600_000;

export async function startBroker(config: BrokerConfig, options: BrokerOptions): Promise<RunningBroker> {
  const now = options.now ?? Date.now;
  const idleTimeoutS = options.idleTimeoutS ?? 30;
  const drainGraceMs = options.drainGraceMs ?? DRAIN_GRACE_MS;
  const { logger } = options;
  const { metricsAddr, metricsToken, otlpEndpoint, serviceName } = config.observability;
  // prom-client and the OpenTelemetry SDK are loaded only when asked for: a broker without them carries neither.
  const prometheus = metricsAddr !== null || metricsToken !== null ? new (await import("./observability/prometheus.ts")).PrometheusMetrics() : null;
  const tracing: Tracing =
    otlpEndpoint === null
      ? noTracing
      : new (await import("./observability/otlp-tracing.ts")).OtlpTracing({ endpoint: otlpEndpoint, serviceName, exportDelayMs: options.traceExportDelayMs });
  const metrics = childStartSpans(prometheus ?? noMetrics, tracing);
  const timers = untracedTimers(realTimers, tracing);
  const scrape = () => prometheus!.scrape();
  // Before anything else is opened: an address it cannot listen on ends the start-up with nothing to undo.
  const metricsServer = metricsAddr === null ? null : serveMetrics(metricsAddr, scrape);
  if (config.clients.insecureMetadataHosts.length > 0) {
    logger.warn("client metadata documents may be fetched over http and from loopback on these hosts: for tests and local development only", {
      hosts: config.clients.insecureMetadataHosts.join(","),
    });
  }
  ensurePrivateDir(config.dataDir);
  const opened = await openStore(config, options.storePath);
  const store = tracing.enabled ? tracedStore(opened.store, tracing) : opened.store;
  const { queries } = opened;
  const sealingKey = loadOrCreateSealingKey(config.dataDir, config.sealingKey);
  const sealer = await TokenSealer.fromRawKey(sealingKey);
  const forgejoClient = new ForgejoClient({
    url: config.forgejo.url,
    clientId: config.forgejo.clientId,
    clientSecret: config.forgejo.clientSecret,
    redirectUri: endpoints(config.publicUrl).callback,
    scopes: config.forgejo.scopes,
    fetch,
    now,
    timeoutMs: config.forgejo.timeoutMs,
    timers: realTimers,
  });
  const forgejo = prometheus === null && !tracing.enabled ? forgejoClient : observeForgejo(forgejoClient, metrics, tracing);
  const credentials = new UpstreamCredentials({
    store,
    sealer,
    forgejo,
    logger,
    now,
    waitMs: config.forgejo.timeoutMs,
    timers: realTimers,
    timing: { leadMs: config.sessions.refreshLeadMs, minIntervalMs: MIN_REFRESH_INTERVAL_MS },
  });

  let server: ReturnType<typeof Bun.serve> | undefined;
  const identities = new AccessIdentityCache(store);
  const oauth: OAuthDeps = {
    config,
    store,
    sealer,
    forgejo,
    credentials,
    logger,
    now,
    clients: new ClientDirectory({
      store,
      now,
      fetch: {
        lookup: options.metadataFetch?.lookup ?? systemLookup,
        connect: options.metadataFetch?.connect ?? directConnect(),
        timers: options.metadataFetch?.timers ?? realTimers,
        insecureHosts: new Set(config.clients.insecureMetadataHosts),
      },
    }),
    rateLimiter: new RateLimiter(options.rateLimit ?? DEFAULT_RATE_LIMIT, now),
    identities,
    clientAddress: (request) => clientAddressOf(server?.requestIP(request)?.address, request.headers.get("x-forwarded-for"), config.trustedProxies),
    lifetimes: { ...DEFAULT_LIFETIMES, ...options.lifetimes },
    metrics,
  };
  // Children take only PATH and the passthrough variables from the broker's environment.
  const liveChildren = new LiveChildren();
  const spawn = liveChildren.track(createSpawnChild({ config: config.child, sandbox: options.sandbox, forgejoUrl: config.forgejo.url, env: process.env, logger }));
  const grantIsLive = (grantId: string) => store.grantHasLiveTokens(grantId, now());
  const upstreamToken = upstreamTokenFrom(credentials);
  const registry = new SessionRegistry({
    config: config.sessions,
    spawn,
    upstreamToken,
    refresh: refresherFrom(credentials),
    grantIsLive,
    logger,
    timers,
    initializeTimeoutMs: options.initializeTimeoutMs,
    metrics,
    // The replica link is made below; a session only starts once the broker serves.
    lifecycle: config.redis === undefined ? undefined : {
      started: (sessionId, session) => replicas?.sessions.started(sessionId, session),
      ended: (sessionId) => void replicas?.sessions.ended(sessionId),
      left: (sessionId) => void replicas?.sessions.left(sessionId),
    },
    userSlots: config.redis === undefined ? undefined : {
      take: (forgejoUserId, holding, cap) => replicas!.userSlots.take(forgejoUserId, holding, cap),
      update: (forgejoUserId, holding) => replicas?.userSlots.update(forgejoUserId, holding),
    },
  });
  const replicaId = randomUUID();
  const principals: PrincipalChildren = new PrincipalChildren({
    config: config.sessions,
    spawn,
    childEra: config.child.era,
    childCommand: config.child.command.join(" "),
    upstreamToken,
    // One set of caps over both eras' children, and one drain: no new session, no new modern call.
    limits: registry.shareLimits(() => principals.capped()),
    grantIsLive,
    logger,
    timers,
    initializeTimeoutMs: options.initializeTimeoutMs,
    continuationDeadlineMs: options.continuationDeadlineMs,
    metrics,
    // The replica link is made below; a child only starts once the broker serves.
    lifecycle: config.redis === undefined ? undefined : {
      running: (entry) => replicas?.principals.running(entry),
      exited: (entry) => replicas?.principals.exited(entry),
    },
    // Among replicas an MRTR retry may reach any of them: its state must open everywhere and name where its call is held.
    sharedStates: config.redis === undefined ? undefined : { key: requestStateKeyFrom(sealingKey), replicaId },
  });
  prometheus?.sample({
    sessions: () => ({ legacy: registry.size, modern: principals.size }),
    childPids: () => liveChildren.pids(),
    continuations: () => principals.continuations.size,
  });
  // However a credential is lost (a refused refresh, an unreadable row), its grants are revoked: end the sessions too.
  const unsubscribe = credentials.onChange((event) => {
    if (event.type === "lost") void registry.endUser(event.forgejoUserId, "the sign-in to Forgejo has ended");
    // A principal's child never holds a token past its refresh: the next call starts one with the new token.
    if (event.type === "rotated") principals.userTokenRotated(event.forgejoUserId);
  });
  const streamTokens = new StreamTokens({
    timers: { ...realTimers, now },
    isLive: async (tokenHash) => (await store.findAccessIdentity(tokenHash, now())) !== undefined,
  });
  // One path for a revoked grant, whichever replica revoked it.
  const grantRevoked = (grantId: string) => {
    void streamTokens.grantRevoked(grantId);
    void registry.grantRevoked(grantId);
    void principals.grantRevoked(grantId);
  };
  const replicas =
    config.redis === undefined
      ? undefined
      : startReplicaLink({
          config: config.redis,
          replicaId,
          logger,
          timers: realTimers,
          revokedElsewhere: (grantId) => {
            identities.forgetGrant(grantId);
            grantRevoked(grantId);
          },
          rateLimit: options.rateLimit ?? DEFAULT_RATE_LIMIT,
          localRateLimiter: oauth.rateLimiter,
          sessionIdleMs: config.sessions.idleTimeoutMs,
          principalChildren: () => principals.list(),
          rssOf: processRssBytes,
        });
  if (replicas !== undefined) {
    oauth.sharedRateLimiter = replicas.rateLimiter;
    logger.info("replica linked to the others through Redis", { replica: replicaId, replica_url: config.redis?.replicaUrl, prefix: config.redis?.prefix });
  }
  const unwatchRevocations = store.onRevocation((grantId) => {
    grantRevoked(grantId);
    replicas?.announceRevocation(grantId);
  });
  const keepOpen = (request: Request) => {
    server?.timeout(request, 0);
    // Bun keeps a request's timeout on its keep-alive socket: without this an ended stream's connection stays open forever.
    return () => server?.timeout(request, idleTimeoutS);
  };
  const hopKey = hopKeyFrom(sealingKey);
  const mcp = mcpRoutes({
    registry,
    retryElsewhere: replicas === undefined ? undefined : retryForwarding({ replicaUrl: (id) => replicas.replicaUrl(id), hopKey, now, fetch: (url, init) => fetch(url, init), metrics, keepOpen, logger }),
    elsewhere:
      replicas === undefined
        ? undefined
        : sessionForwarding({
            directory: replicas.sessions,
            restore: sessionRestore({
              directory: replicas.sessions,
              restore: (sessionId, identity, initialize) => registry.restore(sessionId, identity, initialize),
              claimMs: options.initializeTimeoutMs ?? 30_000,
              timers: realTimers,
              logger,
              metrics,
            }),
            holds: (sessionId) => registry.holds(sessionId),
            replicaId,
            hopKey,
            now,
            fetch: (url, init) => fetch(url, init),
            logger,
            metrics,
            keepOpen,
          }),
    principals,
    sessions: config.sessions,
    publicUrl: config.publicUrl,
    logger,
    keepOpen,
    inFlight: config.inFlight,
    streamTokens,
    heartbeatMs: options.heartbeatMs,
    metrics,
    tracing,
  });
  const health = [...opened.health];
  if (replicas !== undefined) health.push({ name: "redis", check: () => replicas.ping() });
  const app = createApp({ oauth, logger, health, protectedRoutes: mcp, draining: () => registry.isDraining });
  const metricsOnMain = metricsToken === null ? null : metricsBehindToken(metricsToken, scrape);
  const handle = observeRequests(
    metricsOnMain === null ? (request) => app.handle(request) : (request) => (requestPath(request.url) === METRICS_PATH ? metricsOnMain(request) : app.handle(request)),
    prometheus === null ? null : metrics,
    tracing,
  );
  server = Bun.serve({
    hostname: config.host,
    port: config.port,
    fetch: handle,
    idleTimeout: idleTimeoutS,
    // Bun's default is 128 MB. The largest body a route takes is one MCP message; the headroom lets
    // /mcp answer a slightly larger one with its own JSON-RPC error rather than Bun's bare 413.
    maxRequestBodySize: config.sessions.maxMessageBytes + MAX_OAUTH_BODY_BYTES,
  });
  // A broker that finds another one on its data directory (its admin socket answers) stops listening and refuses to start.
  const adminSocket = await listenAdminSocket(
    adminSocketPath(config.dataDir),
    new AdminService({ registry, principals, queries, store, timers: realTimers, now, replica: `${hostname()}:${process.pid}`, rssOf: processRssBytes, directory: replicas?.sessions, principalDirectory: replicas?.principals }),
    logger,
  ).catch((error: unknown) => {
    void server?.stop(true);
    void Promise.all([registry.shutdown(), principals.shutdown(), replicas?.stop()]).finally(() => void store.close());
    throw error;
  });

  const purge = setInterval(async () => {
    try {
      const removed = await store.purgeExpired(now());
      if (removed > 0) logger.debug("purged expired rows", { removed });
      const clients = await store.reapClients(now(), { unusedMs: UNUSED_CLIENT_MS, idleMs: config.clients.idleMs, stampEveryMs: CLIENT_USE_STAMP_MS });
      if (clients.unused + clients.idle > 0) logger.info("deleted clients nobody uses", clients);
    } catch (error) {
      logger.error("purge failed", { error: error instanceof Error ? error : String(error) });
    }
  }, options.purgeIntervalMs ?? 60_000);
  purge.unref();

  let stopping: Promise<void> | undefined;
  return {
    url: `http://${config.host.includes(":") ? `[${config.host}]` : config.host}:${server.port}`,
    server,
    app,
    store,
    oauth,
    registry,
    principals,
    metrics: prometheus,
    metricsUrl: metricsServer === null ? null : `http://${metricsAddr!.host.includes(":") ? `[${metricsAddr!.host}]` : metricsAddr!.host}:${metricsServer.port}`,
    tracing,
    stop: () =>
      (stopping ??= (async () => {
        clearInterval(purge);
        adminSocket.close();
        unsubscribe();
        unwatchRevocations();
        // No new session nor modern call from here on (503, Retry-After), and /healthz says "draining": the load balancer takes this replica out.
        registry.drain();
        // From now on the others restore this replica's sessions on their next request instead of forwarding it here.
        await replicas?.leave();
        // Stop listening: the requests in flight go on. The calls among them, of both eras, complete before their children stop;
        // a modern call parked for its caller's retry is not waited for: that retry now reaches another replica (which re-runs it, with Redis).
        const drained = server.stop();
        await within(timers, drainGraceMs, Promise.all([registry.callsSettled(), principals.callsSettled()]));
        await Promise.all([registry.shutdown(), principals.shutdown()]);
        // Open SSE streams end with their sessions; a stream forwarded to another replica or a modern subscription
        // ends only when its caller leaves, so what is still open after the grace is cut.
        if (!(await within(timers, drainGraceMs, drained))) await server.stop(true);
        await metricsServer?.stop();
        await tracing.shutdown();
        await replicas?.stop();
        await store.close();
      })()),
  };
}

/**
 * The registry's token source: the user's Forgejo token, refreshed first only when its refresh is due,
 * by the same rule as the scheduler's, so a session start never refreshes a token the scheduler would keep.
 */
function upstreamTokenFrom(credentials: UpstreamCredentials): UpstreamTokenProvider {
  return async (forgejoUserId) => {
    try {
      const access = await credentials.accessTokenFor(forgejoUserId);
      return { token: access.accessToken, expiresAt: access.accessExpiresAt };
    } catch (error) {
      // What /mcp answers: a lost credential's grants are revoked already, so the 401 sends the client through sign-in again.
      if (error instanceof UpstreamCredentialLostError) throw new SignInEndedError({ cause: error });
      if (error instanceof UpstreamUnavailableError) throw new ForgejoUnreachableError({ cause: error });
      throw error;
    }
  };
}

/**
 * The registry's refresher, called by the scheduler once a refresh is due: a lost credential is a refusal
 * (sign in again), anything else is transient. Within the minimum spacing it gets the pair just stored.
 */
function refresherFrom(credentials: UpstreamCredentials): UpstreamRefresher {
  return async (forgejoUserId) => {
    try {
      const access = await credentials.refreshNow(forgejoUserId);
      return { ok: true, token: access.accessToken, expiresAt: access.accessExpiresAt };
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      return { ok: false, refused: error instanceof UpstreamCredentialLostError, reason };
    }
  };
}

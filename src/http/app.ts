// Composes the broker's Elysia app: discovery, the OAuth endpoints, health, the guarded /mcp
// route, one request log line per request, and the single mapping of thrown errors to responses.
import { Elysia } from "elysia";
import type { Logger } from "../log.ts";
import type { OAuthDeps } from "../oauth/deps.ts";
import { parseBasicCredentials } from "../oauth/client-auth.ts";
import { oauthEdgeGuard } from "../oauth/edge-guard.ts";
import { OAuthError } from "../oauth/errors.ts";
import { authorizeRoutes } from "../oauth/handlers/authorize.ts";
import { callbackRoutes } from "../oauth/handlers/callback.ts";
import { metadataRoutes } from "../oauth/handlers/metadata.ts";
import { registerRoutes } from "../oauth/handlers/register.ts";
import { revokeRoutes } from "../oauth/handlers/revoke.ts";
import { tokenRoutes } from "../oauth/handlers/token.ts";
import { bearerGuard } from "../oauth/middleware/bearer-auth.ts";
import { corsPolicy } from "./cors.ts";
import { ROUTER_CONFIG, isRoutable, requestPath } from "./request-path.ts";
import type { TokenIdentity } from "../store/store.ts";

export interface HealthCheck {
  name: string;
  check: () => void | Promise<void>;
}

export interface AppDeps {
  oauth: OAuthDeps;
  logger: Logger;
  health: HealthCheck[];
  /** Whether the admin command drained this broker: /healthz then answers 503, so the load balancer takes it out of rotation. */
  draining?: () => boolean;
  /** Routes mounted behind the bearer guard (the /mcp endpoint); they receive the guard to mount after their own early checks. */
  protectedRoutes: (guarded: ReturnType<typeof bearerGuard>) => Elysia<any, any, any, any, any, any, any>;
}

/** A client id to put in the request log: never a secret, only the public identifier. */
function clientIdOf(request: Request, identity: TokenIdentity | undefined, query: Record<string, unknown> | undefined): string | undefined {
  if (identity) return identity.clientId;
  if (typeof query?.client_id === "string") return query.client_id;
  const basic = parseBasicCredentials(request.headers.get("authorization") ?? undefined);
  return typeof basic === "object" ? basic.clientId : undefined;
}

/** Logs an answer given in an onRequest hook (a refusal before routing), which never reaches onAfterResponse. */
type EarlyAnswerLog = (request: Request, response: Response) => Response;

/**
 * One log line per request: method, path, status, duration and the public client id. Returns the
 * logger of early answers, for the onRequest hooks registered after these.
 */
function logRequests(app: Elysia<any, any, any, any, any, any, any>, logger: Logger): EarlyAnswerLog {
  const started = new WeakMap<Request, number>();
  const write = (request: Request, status: number | string, clientId: string | undefined) => {
    const begun = started.get(request);
    logger.info("request", {
      method: request.method,
      path: requestPath(request.url),
      status,
      duration_ms: begun === undefined ? undefined : Math.round((performance.now() - begun) * 100) / 100,
      client_id: clientId,
    });
  };
  app
    .onRequest(({ request }) => {
      started.set(request, performance.now());
    })
    .onAfterResponse((ctx) => {
      const { request, set, query } = ctx;
      const identity = (ctx as { identity?: TokenIdentity }).identity;
      const response = (ctx as { responseValue?: unknown }).responseValue;
      write(request, response instanceof Response ? response.status : (set.status ?? 200), clientIdOf(request, identity, query));
    });
  return (request, response) => {
    write(request, response.status, undefined);
    return response;
  };
}

export function createApp(deps: AppDeps) {
  const { logger } = deps;

  const mcp = deps.protectedRoutes(bearerGuard(deps.oauth));

  let logEarly: EarlyAnswerLog = (_request, response) => response;
  const app = new Elysia(ROUTER_CONFIG)
    // First of all hooks: a URL the router would read differently from every other rule answers nothing else.
    .onRequest(({ request }) => {
      if (!isRoutable(request.url)) {
        return logEarly(request, Response.json({ error: "invalid_request", error_description: "The Host header is missing or malformed" }, { status: 400 }));
      }
    })
    .use(corsPolicy(deps.oauth.config.sessions.allowedOrigins));
  // Not even hooked in when the level drops the lines: every /mcp message would pay for fields nobody reads.
  if (logger.enabled("info")) logEarly = logRequests(app, logger);
  return app
    .onError(({ error, code, request, set }) => {
      // The request log reads the status from `set`: Elysia hands it no response made here.
      const answer = (response: Response) => ((set.status = response.status), response);
      if (error instanceof OAuthError) return answer(error.toResponse());
      if (code === "NOT_FOUND") return answer(Response.json({ error: "not_found", error_description: "No such endpoint" }, { status: 404 }));
      // Each route answers its own parse and validation failures in its protocol's format.
      if (code === "PARSE" || code === "VALIDATION") return;
      logger.error("unhandled error", { method: request.method, path: requestPath(request.url), error: error instanceof Error ? error : String(error) });
      return answer(Response.json({ error: "server_error", error_description: "Internal error" }, { status: 500 }));
    })
    .get("/healthz", async () => {
      const parts: Record<string, string> = {};
      let healthy = true;
      for (const { name, check } of deps.health) {
        try {
          await check();
          parts[name] = "ok";
        } catch {
          parts[name] = "failed";
          healthy = false;
        }
      }
      const status = deps.draining?.() ? "draining" : healthy ? "ok" : "degraded";
      return Response.json({ status, ...parts }, { status: status === "ok" ? 200 : 503, headers: { "Cache-Control": "no-store" } });
    })
    .use(oauthEdgeGuard(deps.oauth, logEarly))
    .use(metadataRoutes(deps.oauth.config))
    .use(registerRoutes(deps.oauth))
    .use(authorizeRoutes(deps.oauth))
    .use(callbackRoutes(deps.oauth))
    .use(tokenRoutes(deps.oauth))
    .use(revokeRoutes(deps.oauth))
    .use(mcp);
}

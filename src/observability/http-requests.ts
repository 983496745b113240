// Every request to the main listener as the operator sees it: counted by OAuth endpoint and status, and
// traced as a server span; with neither metrics nor tracing the handler is returned as it is.
import { requestPath } from "../http/request-path.ts";
import { oauthEndpointOf, type BrokerMetrics } from "./metrics.ts";
import type { Tracing } from "./tracing.ts";

type Handler = (request: Request) => Response | Promise<Response>;

export function observeRequests(handle: Handler, metrics: BrokerMetrics | null, tracing: Tracing): Handler {
  const counted: Handler =
    metrics === null
      ? handle
      : async (request) => {
          const response = await handle(request);
          const endpoint = oauthEndpointOf(requestPath(request.url));
          if (endpoint !== null) metrics.oauthRequest(endpoint, response.status);
          return response;
        };
  return tracing.enabled ? (request) => tracing.serve(request, counted) : counted;
}

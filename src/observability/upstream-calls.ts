// Times and traces the broker's calls to Forgejo (code exchange, token refresh, user lookup) by wrapping
// its ForgejoClient's methods, and counts refreshes by result: ok, refused (sign in again), unavailable.
import { UpstreamRefusedError, type ForgejoClient } from "../upstream/forgejo.ts";
import type { BrokerMetrics, UpstreamCall, UpstreamResult } from "./metrics.ts";
import type { Tracing } from "./tracing.ts";

export function upstreamResultOf(error: unknown): UpstreamResult {
  return error instanceof UpstreamRefusedError ? "refused" : "unavailable";
}

/** `client` with exchangeCode, refresh and fetchUser observed; the arguments (a code, a token) are never recorded. */
export function observeForgejo(client: ForgejoClient, metrics: BrokerMetrics, tracing: Tracing): ForgejoClient {
  const observed = <A extends unknown[], R>(call: UpstreamCall, method: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      const begun = performance.now();
      const span = tracing.start(`forgejo ${call}`, { "fmb.upstream.call": call }, "client");
      const record = (result: UpstreamResult, error?: unknown) => {
        metrics.upstreamRequest(call, result, (performance.now() - begun) / 1000);
        if (call === "refresh") metrics.upstreamRefresh(result);
        span.end({ "fmb.upstream.result": result }, error);
      };
      try {
        const value = await method.apply(client, args);
        record("ok");
        return value;
      } catch (error) {
        record(upstreamResultOf(error), error);
        throw error;
      }
    };
  client.exchangeCode = observed("code_exchange", client.exchangeCode);
  client.refresh = observed("refresh", client.refresh);
  client.fetchUser = observed("user", client.fetchUser);
  return client;
}

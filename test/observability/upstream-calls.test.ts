// The Forgejo calls as the metrics see them: each call timed under its name and result, and a refresh
// counted as ok, refused (Forgejo said no: sign in again) or unavailable (Forgejo could not answer).
import { expect, test } from "bun:test";
import { noMetrics, type BrokerMetrics } from "../../src/observability/metrics.ts";
import { noTracing } from "../../src/observability/tracing.ts";
import { observeForgejo } from "../../src/observability/upstream-calls.ts";
import { realTimers } from "../../src/supervisor/timers.ts";
import { ForgejoClient, UpstreamRefusedError, UpstreamUnavailableError } from "../../src/upstream/forgejo.ts";

function observed(outcome: () => Promise<never> | Promise<unknown>) {
  const seen: string[] = [];
  const metrics: BrokerMetrics = {
    ...noMetrics,
    upstreamRefresh: (result) => void seen.push(`refresh:${result}`),
    upstreamRequest: (call, result, seconds) => void seen.push(`${call}:${result}:${seconds >= 0}`),
  };
  const client = new ForgejoClient({
    url: "http://forgejo.invalid",
    clientId: "id",
    clientSecret: "secret",
    redirectUri: "http://broker.invalid/oauth/callback",
    scopes: [],
    fetch,
    now: Date.now,
    timeoutMs: 1000,
    timers: realTimers,
  });
  const fail = outcome as never;
  client.refresh = fail;
  client.exchangeCode = fail;
  client.fetchUser = fail;
  return { client: observeForgejo(client, metrics, noTracing), seen };
}

test.each([
  ["Forgejo answers", () => Promise.resolve({ accessToken: "a", refreshToken: null, accessExpiresAt: null }), "ok"],
  ["Forgejo refuses the refresh token", () => Promise.reject(new UpstreamRefusedError("invalid_grant", null)), "refused"],
  ["Forgejo cannot be reached", () => Promise.reject(new UpstreamUnavailableError("network", "down")), "unavailable"],
  ["Forgejo rejects the broker's own client", () => Promise.reject(new UpstreamUnavailableError("client_rejected", "check the secret")), "unavailable"],
] as const)("%s: the refresh counts %s, and is timed", async (_, outcome, result) => {
  const { client, seen } = observed(outcome);
  await client.refresh("rt").catch(() => {});
  expect(seen).toEqual([`refresh:${result}:true`, `refresh:${result}`]);
});

test("a code exchange and a user lookup are timed under their own names and count no refresh", async () => {
  const { client, seen } = observed(() => Promise.reject(new UpstreamRefusedError("invalid_grant", null)));
  await client.exchangeCode("code", "verifier").catch(() => {});
  await client.fetchUser("token").catch(() => {});
  expect(seen).toEqual(["code_exchange:refused:true", "user:refused:true"]);
});

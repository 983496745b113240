// ForgejoClient against the Forgejo stand-in: the sign-in round trip, refresh, and failures sorted
// into refusals (sign in again) and unavailability (try later), with no token in any error.
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { DEFAULT_FORGEJO_SCOPES } from "../../src/config.ts";
import { randomBase64Url } from "../../src/crypto.ts";
import { realTimers } from "../../src/supervisor/timers.ts";
import { ForgejoClient, UpstreamRefusedError, UpstreamUnavailableError, type UpstreamTokens } from "../../src/upstream/forgejo.ts";
import { startFakeForgejo, type FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { rejection, waitWhile } from "../helpers/promises.ts";

const REDIRECT = "http://127.0.0.1:9/oauth/callback";
const SCOPES = DEFAULT_FORGEJO_SCOPES.split(" ");

let clock = 1_700_000_000_000;
let forgejo: FakeForgejo;
let client: ForgejoClient;

const clientFor = (target: { url: string; clientId: string; clientSecret: string }, fetchFn: typeof fetch = fetch, timeoutMs = 5000) =>
  new ForgejoClient({ ...target, redirectUri: REDIRECT, scopes: SCOPES, fetch: fetchFn, now: () => clock, timeoutMs, timers: realTimers });

beforeEach(async () => {
  clock = 1_700_000_000_000;
  forgejo = await startFakeForgejo({ now: () => clock, redirectUri: REDIRECT });
  client = clientFor(forgejo);
});
afterEach(() => forgejo.stop());

/** The browser's part: follow the authorization URL to Forgejo and read the code off its redirect. */
async function codeFor(url: URL): Promise<string> {
  const response = await fetch(url, { redirect: "manual" });
  const code = new URL(response.headers.get("Location")!).searchParams.get("code");
  if (!code) throw new Error(`no code in ${response.status} redirect`);
  return code;
}

async function signIn(): Promise<UpstreamTokens> {
  const verifier = randomBase64Url(32);
  return client.exchangeCode(await codeFor(client.authorizationUrl(randomBase64Url(16), verifier)), verifier);
}

describe("sign-in", () => {
  test("the authorization URL asks Forgejo for an S256 code with our constant scope", () => {
    const url = client.authorizationUrl("the-state", "the-verifier");
    expect(url.origin + url.pathname).toBe(`${forgejo.url}/login/oauth/authorize`);
    expect(Object.fromEntries(url.searchParams)).toEqual({
      response_type: "code",
      client_id: forgejo.clientId,
      redirect_uri: REDIRECT,
      state: "the-state",
      code_challenge_method: "S256",
      code_challenge: createHash("sha256").update("the-verifier").digest("base64url"),
      scope: DEFAULT_FORGEJO_SCOPES,
    });
  });

  test("a code exchange yields a pair whose expiry follows our clock, and the user behind it", async () => {
    forgejo.setCurrentUser("bob");
    const tokens = await signIn();
    expect(tokens.accessToken).toBe(forgejo.issuedAccessTokens("bob")[0]!);
    expect(tokens.refreshToken).toBe(forgejo.issuedRefreshTokens("bob")[0]!);
    expect(tokens.accessExpiresAt).toBe(clock + 3600_000);
    expect(await client.fetchUser(tokens.accessToken)).toEqual({ id: 2, login: "bob" });
  });

  test("a wrong PKCE verifier is a refusal", async () => {
    const code = await codeFor(client.authorizationUrl("s", randomBase64Url(32)));
    const error = await rejection(client.exchangeCode(code, randomBase64Url(32)));
    expect(error).toBeInstanceOf(UpstreamRefusedError);
    expect((error as UpstreamRefusedError).code).toBe("unauthorized_client");
    expect((error as UpstreamRefusedError).description).toBe("failed PKCE code challenge");
  });

  test("a wrong client secret at code exchange is a refusal (unauthorized_client)", async () => {
    const misconfigured = clientFor({ ...forgejo, clientSecret: "not-the-secret" });
    const verifier = randomBase64Url(32);
    const code = await codeFor(misconfigured.authorizationUrl("s", verifier));
    const error = await rejection(misconfigured.exchangeCode(code, verifier));
    expect(error).toBeInstanceOf(UpstreamRefusedError);
    expect((error as UpstreamRefusedError).code).toBe("unauthorized_client");
  });
});

describe("refresh", () => {
  test("returns a new pair, after which the old refresh token is refused as already used", async () => {
    const first = await signIn();
    clock += 60_000;
    const second = await client.refresh(first.refreshToken!);
    expect(second.accessToken).not.toBe(first.accessToken);
    expect(second.refreshToken).not.toBe(first.refreshToken);
    expect(second.accessExpiresAt).toBe(clock + 3600_000);
    expect(await client.fetchUser(second.accessToken)).toEqual({ id: 1, login: "alice" });

    const error = await rejection(client.refresh(first.refreshToken!));
    expect(error).toBeInstanceOf(UpstreamRefusedError);
    expect((error as UpstreamRefusedError).code).toBe("unauthorized_client");
    expect((error as UpstreamRefusedError).description).toBe("token was already used");
    expect(error.message).not.toContain(first.refreshToken!);
  });

  test("a revoked grant is a refusal (invalid_grant)", async () => {
    const tokens = await signIn();
    forgejo.revokeUser("alice");
    const error = await rejection(client.refresh(tokens.refreshToken!));
    expect(error).toBeInstanceOf(UpstreamRefusedError);
    expect((error as UpstreamRefusedError).code).toBe("invalid_grant");
  });

  test("a wrong client secret at refresh is the broker's problem, not the user's: unavailable, token untouched", async () => {
    const tokens = await signIn();
    const error = await rejection(clientFor({ ...forgejo, clientSecret: "not-the-secret" }).refresh(tokens.refreshToken!));
    expect(error).toBeInstanceOf(UpstreamUnavailableError);
    expect((error as UpstreamUnavailableError).reason).toBe("client_rejected");
    expect((await client.refresh(tokens.refreshToken!)).accessToken).toBeTruthy();
  });

  test("a 503 from Forgejo is unavailability", async () => {
    const tokens = await signIn();
    forgejo.failTokenEndpoint(503);
    const error = await rejection(client.refresh(tokens.refreshToken!));
    expect(error).toBeInstanceOf(UpstreamUnavailableError);
    expect((error as UpstreamUnavailableError).status).toBe(503);
    expect(error.message).not.toContain(tokens.refreshToken!);
  });

  test("an unreachable Forgejo is unavailability", async () => {
    const gone = await startFakeForgejo();
    await gone.stop();
    const error = await rejection(clientFor(gone).refresh("any-refresh-token"));
    expect(error).toBeInstanceOf(UpstreamUnavailableError);
    expect((error as UpstreamUnavailableError).reason).toBe("network");
  });

  test("an answer that is not a token response is unavailability, not a refusal", async () => {
    const answers = [
      () => new Response("<html>login required</html>", { status: 200, headers: { "Content-Type": "text/html" } }),
      () => Response.json({ error_description: "no error field" }, { status: 400 }),
      () => Response.json({ token_type: "bearer" }),
    ];
    let answer = answers[0]!;
    const proxy = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => answer() });
    try {
      const target = { url: `http://127.0.0.1:${proxy.port}`, clientId: "c", clientSecret: "s" };
      for (const next of answers) {
        answer = next;
        const error = await rejection(clientFor(target).refresh("any-refresh-token"));
        expect(error).toBeInstanceOf(UpstreamUnavailableError);
        expect((error as UpstreamUnavailableError).reason).toBe("malformed");
      }
    } finally {
      await proxy.stop(true);
    }
  });
});

describe("fetchUser", () => {
  test("an unknown or expired access token is a refusal", async () => {
    const tokens = await signIn();
    clock += 3600_000;
    const error = await rejection(client.fetchUser(tokens.accessToken));
    expect(error).toBeInstanceOf(UpstreamRefusedError);
    expect(error.message).not.toContain(tokens.accessToken);
  });

  test("uses the fetch it was given, and a network failure is unavailability", async () => {
    const seen: string[] = [];
    const failing = clientFor(forgejo, (async (input: RequestInfo | URL) => {
      seen.push(String(input));
      throw new TypeError("connection refused");
    }) as unknown as typeof fetch);
    const error = await rejection(failing.fetchUser("some-token"));
    expect(error).toBeInstanceOf(UpstreamUnavailableError);
    expect(seen).toEqual([`${forgejo.url}/api/v1/user`]);
  });

  test("a user answer without id and login is unavailability", async () => {
    const odd = clientFor(forgejo, (async () => Response.json({ login: "alice" })) as unknown as typeof fetch);
    const error = await rejection(odd.fetchUser("some-token"));
    expect(error).toBeInstanceOf(UpstreamUnavailableError);
    expect((error as UpstreamUnavailableError).reason).toBe("malformed");
  });
});

describe("a Forgejo that accepts the connection and never answers", () => {
  /** Holds every request open; `closed` counts the requests whose client hung up. */
  function silentForgejo() {
    const state = { received: [] as string[], closed: 0 };
    const server = Bun.serve({
      port: 0,
      idleTimeout: 0,
      fetch(request) {
        state.received.push(new URL(request.url).pathname);
        request.signal.addEventListener("abort", () => (state.closed += 1));
        return new Promise<Response>(() => {});
      },
    });
    return { state, target: { url: `http://127.0.0.1:${server.port}`, clientId: "c", clientSecret: "s" }, stop: () => server.stop(true) };
  }

  test("the code exchange ends at the deadline as unavailability, saying how long it waited", async () => {
    const silent = silentForgejo();
    try {
      const started = performance.now();
      const error = await rejection(clientFor(silent.target, fetch, 300).exchangeCode("the-code", "the-verifier"));
      expect(error).toBeInstanceOf(UpstreamUnavailableError);
      expect((error as UpstreamUnavailableError).reason).toBe("timeout");
      expect(error.message).toBe("Forgejo's token endpoint did not answer within 0.3 s");
      expect(error.message).not.toContain("the-code");
      expect(performance.now() - started).toBeLessThan(3000);
      expect(silent.state.received).toEqual(["/login/oauth/access_token"]);
    } finally {
      await silent.stop();
    }
  });

  test("the user lookup ends at the deadline, and its request is aborted rather than left open", async () => {
    const silent = silentForgejo();
    try {
      const error = await rejection(clientFor(silent.target, fetch, 300).fetchUser("some-token"));
      expect(error).toBeInstanceOf(UpstreamUnavailableError);
      expect((error as UpstreamUnavailableError).reason).toBe("timeout");
      expect(error.message).toBe("Forgejo's user API did not answer within 0.3 s");
      await waitWhile(() => silent.state.closed === 0, 40, 25);
      expect(silent.state).toEqual({ received: ["/api/v1/user"], closed: 1 });
    } finally {
      await silent.stop();
    }
  });

  test("a user answer whose body stalls ends at the deadline too", async () => {
    const stalled = clientFor(forgejo, (async (_input: RequestInfo | URL, init?: RequestInit) => {
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode('{"id":1,'));
          init?.signal?.addEventListener("abort", () => controller.error(init.signal!.reason));
        },
      });
      return new Response(body, { headers: { "content-type": "application/json" } });
    }) as unknown as typeof fetch, 300);
    const error = await rejection(stalled.fetchUser("some-token"));
    expect(error).toBeInstanceOf(UpstreamUnavailableError);
    expect((error as UpstreamUnavailableError).reason).toBe("timeout");
  });
});

// The replica hop's HMAC (table-driven) and the forwarding rule with stand-ins: what is passed on, to whom,
// with which headers; what never leaves the replica (no open relay); a dead owner's session restored by one claimant.
import { describe, expect, test } from "bun:test";
import { createMemoryLogger } from "../../src/log.ts";
import { bodySubject, HOP_HEADER, HOP_MAX_SKEW_MS, hopKeyFrom, signHop, verifyHop, type HopVerdict } from "../../src/replicas/internal-hop.ts";
import type { SessionWhereabouts } from "../../src/replicas/session-directory.ts";
import { sessionForwarding } from "../../src/replicas/session-forwarding.ts";
import { sessionRestore } from "../../src/replicas/session-restore.ts";
import { FakeTimers, settle } from "../bridge/fakes.ts";

const key = hopKeyFrom(new Uint8Array(32).fill(7));
const target = { method: "POST", path: "/mcp", sessionId: "a".repeat(48) };
const NOW = 1_800_000_000_000;

describe("the hop HMAC", () => {
  test("is keyed by a key derived from the sealing key, not the sealing key itself", () => {
    expect(Buffer.from(key).equals(Buffer.from(new Uint8Array(32).fill(7)))).toBe(false);
    expect(Buffer.from(hopKeyFrom(new Uint8Array(32).fill(7))).equals(Buffer.from(key))).toBe(true);
  });

  const cases: [string, string, HopVerdict][] = [
    ["signed now", signHop(key, target, NOW), "ok"],
    ["signed at the edge of the skew", signHop(key, target, NOW - HOP_MAX_SKEW_MS), "ok"],
    ["signed too long ago", signHop(key, target, NOW - HOP_MAX_SKEW_MS - 1), "stale"],
    ["signed too far ahead", signHop(key, target, NOW + HOP_MAX_SKEW_MS + 1), "stale"],
    ["with another key", signHop(hopKeyFrom(new Uint8Array(32).fill(8)), target, NOW), "invalid"],
    ["for another method", signHop(key, { ...target, method: "DELETE" }, NOW), "invalid"],
    ["for another path", signHop(key, { ...target, path: "/oauth/token" }, NOW), "invalid"],
    ["for another session", signHop(key, { ...target, sessionId: "b".repeat(48) }, NOW), "invalid"],
    ["with its timestamp changed", signHop(key, target, NOW - 60_000).replace(`t=${NOW - 60_000}`, `t=${NOW}`), "invalid"],
    ["malformed", "t=1, sig=x", "invalid"],
    ["empty", "", "invalid"],
  ];
  test.each(cases)("a header %s is %p", (_what, header, verdict) => {
    expect(verifyHop(key, header, target, NOW)).toBe(verdict);
  });
});

const OWNED = "c".repeat(48);
const caller = { grantId: "g", forgejoUserId: 1, clientId: "claude" };
const entry = { owner: "replica-a", grantId: "g", initialize: "{}", protocolVersion: "2025-11-25" };

function forwardingWith(options: { ownerUrl?: string | null; refused?: boolean; held?: boolean; restoredBy?: string } = {}) {
  const fetched: { url: string; init: RequestInit }[] = [];
  const counted: string[] = [];
  const restored: string[] = [];
  const forward = sessionForwarding({
    restore: async (sessionId, stored, identity) => {
      restored.push(`${sessionId} ${stored.owner} ${identity.grantId}`);
      return options.restoredBy === undefined ? undefined : "moved";
    },
    directory: {
      find: async (sessionId): Promise<SessionWhereabouts | undefined> => {
        if (sessionId !== OWNED) return undefined;
        // Once restored by another replica, the directory names that one.
        if (options.restoredBy !== undefined && restored.length > 0) return { entry: { ...entry, owner: "replica-c" }, ownerUrl: options.restoredBy };
        return { entry, ownerUrl: options.ownerUrl === undefined ? "http://10.0.0.5:8080" : options.ownerUrl };
      },
    },
    holds: () => options.held ?? false,
    replicaId: "replica-b",
    hopKey: key,
    now: () => NOW,
    fetch: async (url, init) => {
      fetched.push({ url, init });
      if (options.refused) throw new Error("Unable to connect");
      return new Response("event: message\ndata: {}\n\n", { headers: { "content-type": "text/event-stream", "mcp-session-id": OWNED, connection: "keep-alive" } });
    },
    logger: createMemoryLogger(),
    metrics: { forwardedRequest: (result) => void counted.push(result) },
    keepOpen: () => {
      counted.push("held");
      return () => void counted.push("released");
    },
  });
  const route = (request: Request) => forward(request, caller);
  return { route, fetched, counted, restored };
}

const mcpRequest = (sessionId: string | null, extra: Record<string, string> = {}) =>
  new Request("http://lb.example/mcp", {
    method: "POST",
    headers: { authorization: "Bearer at_x", accept: "text/event-stream", "last-event-id": "e1", ...(sessionId === null ? {} : { "mcp-session-id": sessionId }), ...extra },
    body: "{}",
  });

describe("forwarding", () => {
  test("a session the directory names under a live replica goes there, with the caller's headers and a hop HMAC; the answer streams back", async () => {
    const { route, fetched, counted } = forwardingWith();
    const answer = await route(mcpRequest(OWNED));
    expect(answer!.status).toBe(200);
    expect(answer!.headers.get("content-type")).toBe("text/event-stream");
    expect(answer!.headers.get("connection")).toBeNull();
    expect(await answer!.text()).toBe("event: message\ndata: {}\n\n");
    expect(fetched).toHaveLength(1);
    expect(fetched[0]!.url).toBe("http://10.0.0.5:8080/mcp");
    const headers = fetched[0]!.init.headers as Headers;
    expect(headers.get("authorization")).toBe("Bearer at_x");
    expect(headers.get("last-event-id")).toBe("e1");
    expect(headers.get("host")).toBeNull();
    expect(verifyHop(key, headers.get(HOP_HEADER)!, { method: "POST", path: "/mcp", sessionId: OWNED }, NOW)).toBe("ok");
    // The idle timeout is lifted while the answer streams, and put back once the owner ended it.
    expect(counted).toEqual(["held", "ok", "released"]);
  });

  test.each([
    ["no session id", null, {}],
    ["a malformed session id", "../../oauth/token", {}],
    ["a session the directory does not name", "d".repeat(48), {}],
  ] as const)("%s is served here: nothing leaves the replica", async (_what, sessionId, extra) => {
    const { route, fetched } = forwardingWith();
    expect(await route(mcpRequest(sessionId, extra))).toBeUndefined();
    expect(fetched).toEqual([]);
  });

  test("a session this replica holds is served here", async () => {
    const { route, fetched, restored } = forwardingWith({ held: true });
    expect(await route(mcpRequest(OWNED))).toBeUndefined();
    expect(fetched).toEqual([]);
    expect(restored).toEqual([]);
  });

  test("a session whose owner's liveness key is gone is restored here, for the caller's identity", async () => {
    const { route, fetched, restored } = forwardingWith({ ownerUrl: null });
    expect(await route(mcpRequest(OWNED))).toBeUndefined();
    expect(fetched).toEqual([]);
    expect(restored).toEqual([`${OWNED} replica-a g`]);
  });

  test("an owner that refuses the connection is counted as failed and the session restored here, the request's body still unread", async () => {
    const { route, counted, restored } = forwardingWith({ refused: true });
    const request = mcpRequest(OWNED);
    expect(await route(request)).toBeUndefined();
    expect(counted).toEqual(["held", "released", "failed"]);
    expect(restored).toEqual([`${OWNED} replica-a g`]);
    expect(await request.text()).toBe("{}");
  });

  test("a session another replica restored meanwhile (this one lost the claim) is forwarded to that replica", async () => {
    const { route, fetched, restored } = forwardingWith({ ownerUrl: null, restoredBy: "http://10.0.0.7:8080" });
    expect((await route(mcpRequest(OWNED)))!.status).toBe(200);
    expect(restored).toEqual([`${OWNED} replica-a g`]);
    expect(fetched.map(({ url }) => url)).toEqual(["http://10.0.0.7:8080/mcp"]);
  });

  test("a hop of no session (an MRTR retry) is served here when its HMAC binds its body, and refused with 403 for another body", async () => {
    const { route, fetched } = forwardingWith();
    const signed = { [HOP_HEADER]: signHop(key, { ...target, sessionId: bodySubject("{}") }, NOW) };
    expect(await route(mcpRequest(null, signed))).toBeUndefined();
    const other = new Request("http://lb.example/mcp", { method: "POST", headers: signed, body: "{\"other\":1}" });
    expect((await route(other))!.status).toBe(403);
    expect(fetched).toEqual([]);
  });

  test("a request already forwarded is never passed on again; one with a bad hop header is refused with 403", async () => {
    const { route, fetched } = forwardingWith();
    expect(await route(mcpRequest(OWNED, { [HOP_HEADER]: signHop(key, { ...target, sessionId: OWNED }, NOW) }))).toBeUndefined();
    const refused = await route(mcpRequest(OWNED, { [HOP_HEADER]: "t=1, sig=forged" }));
    expect(refused!.status).toBe(403);
    expect((await refused!.json()).error.code).toBe(-32000);
    expect((await route(mcpRequest(null, { [HOP_HEADER]: signHop(key, target, NOW) })))!.status).toBe(403);
    expect(fetched).toEqual([]);
  });
});

describe("restoring a session whose replica is gone", () => {
  const initialize = JSON.stringify({ jsonrpc: "2.0", id: 0, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "c", version: "1" } } });
  const stored = { owner: "replica-a", grantId: "g", initialize, protocolVersion: "2025-11-25" };
  const CLAIM_MS = 30_000;
  const post = (headers: Record<string, string> = { "mcp-protocol-version": "2025-11-25" }, method = "POST") => new Request("http://lb.example/mcp", { method, headers });

  /** `winner`: what the directory names once the claim is lost (another replica's entry, none, or the dead owner's still). */
  function restoreWith(options: { claims?: boolean; fails?: boolean; winner?: "restored" | "gone" | "never" } = {}) {
    const claimed: string[] = [];
    const started: string[] = [];
    const counted: string[] = [];
    const forgotten: string[] = [];
    const timers = new FakeTimers();
    const restore = sessionRestore({
      directory: {
        claim: async (sessionId) => (claimed.push(sessionId), options.claims ?? true),
        find: async (): Promise<SessionWhereabouts | undefined> => {
          if (options.winner === "gone") return undefined;
          if (options.winner === "restored") return { entry: { ...stored, owner: "replica-c" }, ownerUrl: "http://10.0.0.7:8080" };
          return { entry: stored, ownerUrl: null };
        },
        forget: async (sessionId, owner) => void forgotten.push(`${sessionId} ${owner}`),
      },
      restore: async (sessionId, identity, message) => {
        if (options.fails) throw new Error("the MCP server exited before answering initialize");
        started.push(`${sessionId} user ${identity.forgejoUserId} ${message.raw}`);
        return undefined as never;
      },
      claimMs: CLAIM_MS,
      timers,
      logger: createMemoryLogger(),
      metrics: { sessionRestored: (result) => void counted.push(result) },
    });
    /** Runs `pending` while the clock moves in the claim loser's polling steps. */
    const awaitWithClock = async <T>(pending: Promise<T>): Promise<T> => {
      let done = false;
      void pending.finally(() => (done = true));
      for (let elapsed = 0; !done && elapsed <= CLAIM_MS + 1_000; elapsed += 100) {
        await settle();
        timers.advance(100);
      }
      return pending;
    };
    return { restore, claimed, started, counted, forgotten, awaitWithClock };
  }

  test("the replica that wins the claim starts it for the caller's user with the stored initialize, then serves the request", async () => {
    const { restore, claimed, started, counted } = restoreWith();
    expect(await restore(OWNED, stored, caller, post())).toBeUndefined();
    expect(claimed).toEqual([OWNED]);
    expect(started).toEqual([`${OWNED} user 1 ${initialize}`]);
    expect(counted).toEqual(["ok"]);
  });

  test("a request of another grant neither claims nor restores it (the session is unknown to it: 404)", async () => {
    const { restore, claimed, started } = restoreWith();
    expect(await restore(OWNED, stored, { ...caller, grantId: "another" }, post())).toBeUndefined();
    expect(claimed).toEqual([]);
    expect(started).toEqual([]);
  });

  test.each(["{", "null", JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" })])("a stored initialize %p is not one: nothing is restored", async (damaged) => {
    const { restore, claimed } = restoreWith();
    expect(await restore(OWNED, { ...stored, initialize: damaged }, caller, post())).toBeUndefined();
    expect(claimed).toEqual([]);
  });

  test("concurrent requests on one replica for the same session restore it once, and both are served here", async () => {
    const { restore, claimed, started } = restoreWith();
    expect(await Promise.all([restore(OWNED, stored, caller, post()), restore(OWNED, stored, caller, post())])).toEqual([undefined, undefined]);
    expect(claimed).toEqual([OWNED]);
    expect(started).toHaveLength(1);
  });

  test("a replica that loses the claim starts nothing, waits for the winner's entry and forwards there", async () => {
    const { restore, started, claimed, awaitWithClock } = restoreWith({ claims: false, winner: "restored" });
    expect(await awaitWithClock(Promise.all([restore(OWNED, stored, caller, post()), restore(OWNED, stored, caller, post())]))).toEqual(["moved", "moved"]);
    expect(claimed).toEqual([OWNED]);
    expect(started).toEqual([]);
  });

  test("a lost claim whose winner never records the session: 503 with Retry-After once the claim's life is over; a session gone meanwhile is served here (404)", async () => {
    const never = restoreWith({ claims: false, winner: "never" });
    const answer = await never.awaitWithClock(never.restore(OWNED, stored, caller, post()));
    expect(answer).toBeInstanceOf(Response);
    expect((answer as Response).status).toBe(503);
    expect((answer as Response).headers.get("retry-after")).toBe("1");
    expect(((await (answer as Response).json()) as { error: { code: number } }).error.code).toBe(-32000);
    const gone = restoreWith({ claims: false, winner: "gone" });
    expect(await gone.awaitWithClock(gone.restore(OWNED, stored, caller, post()))).toBeUndefined();
  });

  test("a restore whose child does not start is counted as failed (the request then finds no session: 404)", async () => {
    const { restore, counted } = restoreWith({ fails: true });
    expect(await restore(OWNED, stored, caller, post())).toBeUndefined();
    expect(counted).toEqual(["failed"]);
  });

  test("a DELETE starts no child: the claim's winner removes the entry (if the dead owner still has it) and answers 204", async () => {
    const { restore, started, forgotten } = restoreWith();
    const answer = (await restore(OWNED, stored, caller, post(undefined, "DELETE"))) as Response;
    expect(answer.status).toBe(204);
    expect(answer.headers.get("mcp-session-id")).toBe(OWNED);
    expect(forgotten).toEqual([`${OWNED} replica-a`]);
    expect(started).toEqual([]);
    const lost = restoreWith({ claims: false, winner: "restored" });
    expect(await lost.awaitWithClock(lost.restore(OWNED, stored, caller, post(undefined, "DELETE")))).toBe("moved");
    expect(lost.forgotten).toEqual([]);
  });

  test("an MCP-Protocol-Version other than the session's negotiated one: 400, nothing claimed; none sent is the owner's default and restores", async () => {
    const { restore, claimed, started } = restoreWith();
    const answer = (await restore(OWNED, stored, caller, post({ "mcp-protocol-version": "2025-06-18" }))) as Response;
    expect(answer.status).toBe(400);
    expect(await answer.json()).toEqual({ jsonrpc: "2.0", id: null, error: { code: -32000, message: `Bad Request: MCP-Protocol-Version "2025-06-18" is not the session's negotiated version 2025-11-25` } });
    expect(claimed).toEqual([]);
    expect(await restore(OWNED, stored, caller, post({}))).toBeUndefined();
    expect(started).toHaveLength(1);
  });
});

// Routing an MRTR retry to the replica holding its call: forwarded with a hop bound to its body while that
// replica lives; served here (a re-run) once it is gone; a 503 to retry when Redis cannot say where it is.
import { describe, expect, test } from "bun:test";
import { createMemoryLogger } from "../../src/log.ts";
import { bodySubject, HOP_HEADER, hopKeyFrom, verifyHop } from "../../src/replicas/internal-hop.ts";
import { retryForwarding } from "../../src/replicas/retry-forwarding.ts";

const key = hopKeyFrom(new Uint8Array(32).fill(9));
const NOW = 1_800_000_000_000;
const BODY = JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "ask_user", requestState: "m1.x.y" } });

function forwardingWith(holder: { url?: string | null; redisDown?: boolean; refused?: boolean }) {
  const fetched: { url: string; init: RequestInit }[] = [];
  const forward = retryForwarding({
    replicaUrl: async (replicaId) => {
      if (holder.redisDown) throw new Error("Redis (commands) is not connected");
      return replicaId === "replica-a" ? (holder.url ?? null) : null;
    },
    hopKey: key,
    now: () => NOW,
    fetch: async (url, init) => {
      fetched.push({ url, init });
      if (holder.refused) throw new Error("Unable to connect");
      return new Response(JSON.stringify({ jsonrpc: "2.0", id: 2, result: { resultType: "complete" } }), { headers: { "content-type": "application/json" } });
    },
    metrics: { forwardedRequest: () => {} },
    keepOpen: () => () => {},
    logger: createMemoryLogger(),
  });
  const request = new Request("http://lb.example/mcp", { method: "POST", headers: { authorization: "Bearer at_x", "content-type": "application/json" }, body: BODY });
  return { send: () => forward(request, BODY, "replica-a"), fetched };
}

describe("an MRTR retry whose call another replica holds", () => {
  test("while it lives: passed to it with the caller's bearer token and a hop HMAC bound to the body; its answer comes back", async () => {
    const { send, fetched } = forwardingWith({ url: "http://10.0.0.5:8080" });
    const answer = await send();
    expect(answer!.status).toBe(200);
    expect(((await answer!.json()) as { result: unknown }).result).toEqual({ resultType: "complete" });
    expect(fetched.map(({ url }) => url)).toEqual(["http://10.0.0.5:8080/mcp"]);
    const headers = fetched[0]!.init.headers as Headers;
    expect(headers.get("authorization")).toBe("Bearer at_x");
    expect(fetched[0]!.init.body).toBe(BODY);
    expect(verifyHop(key, headers.get(HOP_HEADER)!, { method: "POST", path: "/mcp", sessionId: bodySubject(BODY) }, NOW)).toBe("ok");
    expect(verifyHop(key, headers.get(HOP_HEADER)!, { method: "POST", path: "/mcp", sessionId: bodySubject(`${BODY} `) }, NOW)).toBe("invalid");
  });

  test.each([
    ["its liveness key is gone", { url: null }],
    ["it refuses the connection", { url: "http://10.0.0.5:8080", refused: true }],
  ] as const)("once %s: served here (re-run)", async (_what, holder) => {
    expect(await forwardingWith(holder).send()).toBeUndefined();
  });

  test("Redis not answering: 503 with Retry-After, nothing sent and nothing re-run (the holder may be alive)", async () => {
    const { send, fetched } = forwardingWith({ redisDown: true });
    const answer = await send();
    expect(answer!.status).toBe(503);
    expect(answer!.headers.get("retry-after")).toBe("1");
    expect(fetched).toEqual([]);
  });
});

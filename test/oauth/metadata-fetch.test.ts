// The fetch of a client metadata document with a stand-in resolver and connection: every refusal
// with its exact reason, the address connected to, the time and size bounds, and the cache in front of it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { MetadataDocumentCache, TOO_MANY_FETCHES, type CachedOutcome } from "../../src/oauth/metadata-document-cache.ts";
import { directConnect, fetchMetadataDocument, METADATA_MAX_BYTES, type MetadataFetchDeps } from "../../src/oauth/metadata-fetch.ts";
import { FakeTimers, settle } from "../bridge/fakes.ts";
import { makeTestCertificate } from "../fixtures/test-ca.ts";

const URL_ = new URL("https://app.example.com/oauth/client.json");
const DOC = { client_id: URL_.href, redirect_uris: ["https://app.example.com/cb"] };

interface Harness {
  deps: MetadataFetchDeps;
  timers: FakeTimers;
  lookups: string[];
  connects: { url: string; address: string }[];
}

function harness(
  answer: () => Response | Promise<Response> = () => Response.json(DOC),
  addresses: string[] = ["93.184.216.34"],
  insecureHosts: string[] = [],
): Harness {
  const timers = new FakeTimers();
  const lookups: string[] = [];
  const connects: { url: string; address: string }[] = [];
  return {
    timers,
    lookups,
    connects,
    deps: {
      lookup: async (hostname) => (lookups.push(hostname), addresses),
      connect: async (url, address) => (connects.push({ url: url.href, address }), answer()),
      timers,
      insecureHosts: new Set(insecureHosts),
    },
  };
}

const json = (body: string, headers: Record<string, string> = {}) => new Response(body, { headers: { "content-type": "application/json", ...headers } });

describe("fetching a client metadata document", () => {
  test("a public host's JSON document is fetched from the address it resolved to, with its max-age", async () => {
    const h = harness(() => json(JSON.stringify(DOC), { "cache-control": "max-age=600" }), ["93.184.216.34", "2606:4700::1"]);
    expect(await fetchMetadataDocument(URL_, h.deps)).toEqual({ ok: true, body: DOC, maxAgeMs: 600_000 });
    expect(h.lookups).toEqual(["app.example.com"]);
    expect(h.connects).toEqual([{ url: URL_.href, address: "93.184.216.34" }]);
    expect(h.timers.pending).toBe(0);
  });

  const refusals: [string, Partial<{ url: string; addresses: string[]; answer: () => Response; insecure: string[] }>, string][] = [
    ["http", { url: "http://app.example.com/client.json" }, "is not an https URL"],
    ["http on a host listed for another port", { url: "http://localhost:3000/client.json", insecure: ["localhost:3001"] }, "is not an https URL"],
    ["a name resolving to 127.0.0.1", { addresses: ["127.0.0.1"] }, "has a host name that resolves to an address that is not public"],
    ["a name resolving to a public and a private address", { addresses: ["93.184.216.34", "10.0.0.5"] }, "has a host name that resolves to an address that is not public"],
    ["a name resolving to the metadata service", { addresses: ["169.254.169.254"] }, "has a host name that resolves to an address that is not public"],
    ["a name resolving to mapped loopback", { addresses: ["::ffff:127.0.0.1"] }, "has a host name that resolves to an address that is not public"],
    ["a name resolving to nothing", { addresses: [] }, "has a host name that does not resolve"],
    ["an IP literal on loopback", { url: "https://127.0.0.1/client.json", addresses: ["127.0.0.1"] }, "has a host name that resolves to an address that is not public"],
    ["a private address on a host listed as insecure", { url: "https://dev.local:8443/c.json", addresses: ["10.0.0.5"], insecure: ["dev.local:8443"] }, "has a host name that resolves to an address that is not public"],
    ["a redirect", { answer: () => new Response(null, { status: 302, headers: { location: "http://169.254.169.254/" } }) }, "answered with a redirect (HTTP 302), which is not followed"],
    ["a 404", { answer: () => new Response("no", { status: 404 }) }, "answered HTTP 404"],
    ["HTML", { answer: () => new Response(JSON.stringify(DOC), { headers: { "content-type": "text/html" } }) }, "is served as text/html, not application/json"],
    ["no content type", { answer: () => new Response(new Blob([JSON.stringify(DOC)])) }, "is served as no content type, not application/json"],
    ["invalid JSON", { answer: () => json("{ client_id: 1") }, "is not valid JSON"],
    ["a declared length over the cap", { answer: () => json("{}", { "content-length": String(METADATA_MAX_BYTES + 1) }) }, "is larger than 16 KiB"],
    ["a body over the cap", { answer: () => json(`{"pad":"${"x".repeat(METADATA_MAX_BYTES)}"}`) }, "is larger than 16 KiB"],
  ];
  test.each(refusals)("%s → refused", async (_, c, reason) => {
    const h = harness(c.answer, c.addresses, c.insecure);
    expect(await fetchMetadataDocument(new URL(c.url ?? URL_.href), h.deps)).toEqual({ ok: false, reason });
  });

  test("a connection failure is named by its code, never by a message that could carry the address", async () => {
    const h = harness();
    h.deps.connect = async () => {
      throw Object.assign(new Error('certificate mismatch fetching "https://93.184.216.34/oauth/client.json"'), { code: "ERR_TLS_CERT_ALTNAME_INVALID" });
    };
    expect(await fetchMetadataDocument(URL_, h.deps)).toEqual({ ok: false, reason: "could not be fetched (ERR_TLS_CERT_ALTNAME_INVALID)" });
    h.deps.lookup = async () => {
      throw new TypeError("no such host");
    };
    expect(await fetchMetadataDocument(URL_, h.deps)).toEqual({ ok: false, reason: "could not be fetched (TypeError)" });
  });

  test("when the first address does not connect, the next vetted one is tried", async () => {
    const h = harness(undefined, ["2606:4700::1", "93.184.216.34"]);
    const connect = h.deps.connect;
    h.deps.connect = async (url, address, signal) => {
      if (address.includes(":")) throw Object.assign(new Error("unreachable"), { code: "ENETUNREACH" });
      return connect(url, address, signal);
    };
    expect(await fetchMetadataDocument(URL_, h.deps)).toMatchObject({ ok: true, body: DOC });
    expect(h.connects).toEqual([{ url: URL_.href, address: "93.184.216.34" }]);
  });

  test("nothing is connected to when the scheme or an address is refused", async () => {
    for (const [url, addresses] of [["http://app.example.com/c.json", ["93.184.216.34"]], [URL_.href, ["93.184.216.34", "192.168.0.1"]]] as const) {
      const h = harness(undefined, [...addresses]);
      await fetchMetadataDocument(new URL(url), h.deps);
      expect(h.connects).toEqual([]);
    }
  });

  test("a host listed in BROKER_CIMD_INSECURE_HOSTS may be fetched over http from loopback", async () => {
    const h = harness(undefined, ["127.0.0.1", "::1"], ["localhost:3000"]);
    const url = new URL("http://localhost:3000/client.json");
    expect(await fetchMetadataDocument(url, h.deps)).toMatchObject({ ok: true, body: DOC });
    expect(h.connects).toEqual([{ url: url.href, address: "127.0.0.1" }]);
  });

  test("an endless body is read only up to the cap, and the stream is cancelled", async () => {
    let pulled = 0;
    let cancelled = false;
    const endless = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled++;
        controller.enqueue(new Uint8Array(1024).fill(32));
      },
      cancel() {
        cancelled = true;
      },
    });
    const h = harness(() => new Response(endless, { headers: { "content-type": "application/json" } }));
    expect(await fetchMetadataDocument(URL_, h.deps)).toEqual({ ok: false, reason: "is larger than 16 KiB" });
    expect(pulled).toBeLessThanOrEqual(METADATA_MAX_BYTES / 1024 + 2);
    expect(cancelled).toBe(true);
  });

  test("a server that never answers is given up on after 5 s", async () => {
    let aborted = false;
    const h = harness();
    h.deps.connect = (_url, _address, signal) =>
      new Promise<Response>((_, reject) => signal.addEventListener("abort", () => ((aborted = true), reject(new Error("aborted")))));
    const outcome = fetchMetadataDocument(URL_, h.deps);
    await settle();
    h.timers.advance(4_999);
    await settle();
    expect(aborted).toBe(false);
    h.timers.advance(1);
    expect(await outcome).toEqual({ ok: false, reason: "did not answer within 5 s" });
    expect(aborted).toBe(true);
  });

  test("a body that trickles past 5 s is given up on too", async () => {
    const trickle = new ReadableStream<Uint8Array>({ start: (controller) => controller.enqueue(new TextEncoder().encode("{")) });
    const h = harness(() => new Response(trickle, { headers: { "content-type": "application/json" } }));
    const outcome = fetchMetadataDocument(URL_, h.deps);
    await settle();
    h.timers.advance(5_000);
    expect(await outcome).toEqual({ ok: false, reason: "did not answer within 5 s" });
  });
});

describe("the real connection: to the vetted address, under the URL's own name", () => {
  const certificate = makeTestCertificate(["cimd.test"]);
  let server: ReturnType<typeof Bun.serve>;
  const hosts: string[] = [];
  beforeAll(() => {
    server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: certificate.cert, key: certificate.key },
      fetch: (request) => (hosts.push(request.headers.get("host") ?? ""), Response.json(DOC)),
    });
  });
  afterAll(() => server.stop(true));

  test("TLS and Host carry the name while the socket goes to the address given", async () => {
    const url = new URL(`https://cimd.test:${server.port}/oauth/client.json`);
    const response = await directConnect(certificate.cert)(url, "127.0.0.1", new AbortController().signal);
    expect(response.status).toBe(200);
    expect(hosts).toEqual([`cimd.test:${server.port}`]);
  });

  test("a certificate for another name is refused", async () => {
    const url = new URL(`https://other.test:${server.port}/oauth/client.json`);
    await expect(directConnect(certificate.cert)(url, "127.0.0.1", new AbortController().signal)).rejects.toThrow(/ALTNAME|certificate/i);
  });

  test("without being told to trust the test certificate, it is refused", async () => {
    const url = new URL(`https://cimd.test:${server.port}/oauth/client.json`);
    await expect(directConnect()(url, "127.0.0.1", new AbortController().signal)).rejects.toThrow(/certificate/i);
  });
});

describe("the document cache", () => {
  const ok = (maxAgeMs?: number): CachedOutcome<string> => ({ ok: true, value: "doc", maxAgeMs });
  function counting(outcome: () => CachedOutcome<string>) {
    const timers = new FakeTimers();
    const loads: string[] = [];
    const held: (() => void)[] = [];
    const gate = { held: false };
    const cache = new MetadataDocumentCache<string>(
      async (url) => {
        loads.push(url);
        if (gate.held) await new Promise<void>((resolve) => held.push(resolve));
        return outcome();
      },
      () => timers.now(),
    );
    return { cache, timers, loads, gate, release: () => held.splice(0).forEach((resolve) => resolve()) };
  }

  test("many sign-ins at once share one fetch, and later ones use the cached document", async () => {
    const c = counting(() => ok(600_000));
    c.gate.held = true;
    const racing = Array.from({ length: 20 }, () => c.cache.get("https://a.example/c.json"));
    await settle();
    expect(c.loads).toHaveLength(1);
    c.release();
    for (const outcome of await Promise.all(racing)) expect(outcome).toEqual(ok(600_000));
    c.gate.held = false;
    c.timers.advance(599_999);
    await c.cache.get("https://a.example/c.json");
    expect(c.loads).toHaveLength(1);
    c.timers.advance(1);
    await c.cache.get("https://a.example/c.json");
    expect(c.loads).toHaveLength(2);
  });

  const ttls: [string, CachedOutcome<string>, number][] = [
    ["no-store is kept the 1 min minimum", ok(0), 60_000],
    ["max-age=10 is kept 1 min", ok(10_000), 60_000],
    ["max-age of a week is kept 24 h", ok(7 * 86_400_000), 86_400_000],
    ["no Cache-Control is kept 1 h", ok(undefined), 3_600_000],
    ["a failed fetch is not repeated for 30 s", { ok: false, reason: "answered HTTP 500" }, 30_000],
  ];
  test.each(ttls)("%s", async (_, outcome, keptMs) => {
    const c = counting(() => outcome);
    expect(await c.cache.get("u")).toEqual(outcome);
    c.timers.advance(keptMs - 1);
    for (let i = 0; i < 10; i++) await c.cache.get("u");
    expect(c.loads).toHaveLength(1);
    c.timers.advance(1);
    await c.cache.get("u");
    expect(c.loads).toHaveLength(2);
  });

  test("at most 64 fetches run at once: one more URL is refused for now, and that refusal is not remembered", async () => {
    const c = counting(() => ok());
    c.gate.held = true;
    const waiting = Array.from({ length: 64 }, (_, i) => c.cache.get(`busy${i}`));
    await settle();
    expect(await c.cache.get("one-more")).toEqual({ ok: false, reason: TOO_MANY_FETCHES });
    expect(c.loads).toHaveLength(64);
    // A URL already being fetched still joins its fetch.
    const joined = c.cache.get("busy0");
    c.gate.held = false;
    c.release();
    await Promise.all([...waiting, joined]);
    expect(c.loads).toHaveLength(64);
    expect(await c.cache.get("one-more")).toEqual(ok());
    expect(c.loads).toHaveLength(65);
  });

  test("it holds at most 1,000 URLs, forgetting the oldest", async () => {
    const c = counting(() => ok());
    for (let i = 0; i <= 1_000; i++) await c.cache.get(`u${i}`);
    await c.cache.get("u1000");
    await c.cache.get("u1");
    expect(c.loads).toHaveLength(1_001);
    await c.cache.get("u0");
    expect(c.loads).toHaveLength(1_002);
  });
});

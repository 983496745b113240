// Table tests for Client ID Metadata Documents: which addresses the broker may fetch from, which
// client_id URLs are documents, what a document must say, and how Cache-Control is read.
import { describe, expect, test } from "bun:test";
import { clientIdUrlProblem, isMetadataDocumentId, validateMetadataDocument } from "../../src/oauth/client-metadata-document.ts";
import { maxAgeOf } from "../../src/oauth/metadata-fetch.ts";
import { isLoopbackAddress, isPublicAddress } from "../../src/oauth/public-address.ts";

describe("public addresses: the only ones a client_id URL may reach", () => {
  const cases: [string, boolean][] = [
    ["93.184.216.34", true],
    ["8.8.8.8", true],
    ["1.1.1.1", true],
    ["100.63.255.255", true],
    ["100.128.0.0", true],
    ["172.15.255.255", true],
    ["172.32.0.0", true],
    ["2606:4700:4700::1111", true],
    ["2a00:1450:4001:80b::200e", true],
    ["::ffff:93.184.216.34", true],
    ["64:ff9b::5db8:d822", true], // NAT64 of 93.184.216.34
    ["2002:5db8:d822::1", true], // 6to4 of 93.184.216.34
    ["127.0.0.1", false],
    ["127.255.255.254", false],
    ["0.0.0.0", false],
    ["0.1.2.3", false],
    ["10.0.0.1", false],
    ["172.16.0.1", false],
    ["172.31.255.255", false],
    ["192.168.1.1", false],
    ["169.254.169.254", false], // cloud metadata service
    ["100.64.0.1", false], // CGNAT
    ["100.127.255.255", false],
    ["192.0.0.8", false],
    ["192.0.2.1", false],
    ["198.18.0.1", false],
    ["198.51.100.7", false],
    ["203.0.113.9", false],
    ["224.0.0.1", false],
    ["239.255.255.250", false],
    ["240.0.0.1", false],
    ["255.255.255.255", false],
    ["::", false],
    ["::1", false],
    ["[::1]", false],
    ["::ffff:127.0.0.1", false],
    ["::ffff:7f00:1", false],
    ["::ffff:10.0.0.1", false],
    ["::ffff:169.254.169.254", false],
    ["::127.0.0.1", false], // IPv4-compatible
    ["::7f00:1", false],
    ["::ffff:0:0", false],
    ["64:ff9b::7f00:1", false], // NAT64 of 127.0.0.1
    ["64:ff9b:1::1", false], // local-use NAT64
    ["2002:7f00:1::1", false], // 6to4 of 127.0.0.1
    ["2002:a00:1::1", false], // 6to4 of 10.0.0.1
    ["fc00::1", false], // ULA
    ["fd12:3456:789a::1", false],
    ["fe80::1", false], // link-local
    ["fe80::1%eth0", false],
    ["fec0::1", false], // site-local
    ["ff02::1", false], // multicast
    ["2001:db8::1", false], // documentation
    ["2001::1", false], // Teredo
    ["2001:10::1", false], // ORCHID
    ["3fff::1", false],
    ["100::1", false], // discard-only
    ["127.1", false],
    ["0177.0.0.1", false],
    ["not an address", false],
    ["", false],
    ["1:2:3:4:5:6:7:8:9", false],
  ];
  test.each(cases)("%p → public %p", (address, expected) => {
    expect(isPublicAddress(address)).toBe(expected);
  });

  const loopback: [string, boolean][] = [
    ["127.0.0.1", true],
    ["127.3.4.5", true],
    ["::1", true],
    ["::ffff:127.0.0.1", true],
    ["10.0.0.1", false],
    ["::", false],
    ["93.184.216.34", false],
  ];
  test.each(loopback)("%p → loopback %p", (address, expected) => {
    expect(isLoopbackAddress(address)).toBe(expected);
  });
});

describe("client_id URLs", () => {
  test("a URL is a document id; a registered id is not", () => {
    expect(isMetadataDocumentId("https://app.example.com/oauth/client.json")).toBe(true);
    expect(isMetadataDocumentId("http://localhost:3000/client.json")).toBe(true);
    expect(isMetadataDocumentId("fmb_client_abc")).toBe(false);
    expect(isMetadataDocumentId("com.example.app")).toBe(false);
  });

  const cases: [string, string | undefined][] = [
    ["https://app.example.com/oauth/client.json", undefined],
    ["https://app.example.com/client?v=2", undefined],
    ["https://app.example.com", "must have a path"],
    ["https://app.example.com/", "must have a path"],
    ["https://app.example.com/a/../client.json", "must not have . or .. path segments"],
    ["https://app.example.com/./client.json", "must not have . or .. path segments"],
    ["https://app.example.com/a/%2e%2e/client.json", "must not have . or .. path segments"],
    ["https://app.example.com/client.json#frag", "must not have a fragment"],
    ["https://user:pw@app.example.com/client.json", "must not carry credentials"],
    ["https://", "is not a URL"],
  ];
  test.each(cases)("%p → %p", (url, problem) => {
    expect(clientIdUrlProblem(url)).toBe(problem);
  });
});

describe("a metadata document", () => {
  const url = "https://app.example.com/oauth/client.json";
  const good = { client_id: url, client_name: "Example App", redirect_uris: ["https://app.example.com/callback", "http://127.0.0.1/callback"] };

  test("valid client metadata for its own URL becomes a client", () => {
    expect(validateMetadataDocument(url, { ...good, token_endpoint_auth_method: "none", grant_types: ["authorization_code"] })).toMatchObject({
      ok: true,
      client: { name: "Example App", redirectUris: good.redirect_uris, metadata: { client_id: url, token_endpoint_auth_method: "none", grant_types: ["authorization_code"] } },
    });
  });

  test("without a name it is called by its host", () => {
    const { client_name: _, ...nameless } = good;
    expect(validateMetadataDocument(url, nameless)).toMatchObject({ ok: true, client: { name: "app.example.com" } });
  });

  const refusals: [string, unknown, string][] = [
    ["not an object", [good], "serves a document that is not a JSON object"],
    ["null", null, "serves a document that is not a JSON object"],
    ["another client_id", { ...good, client_id: "https://app.example.com/other.json" }, "serves a document whose client_id is not exactly this URL"],
    ["client_id with a trailing slash", { ...good, client_id: `${url}/` }, "serves a document whose client_id is not exactly this URL"],
    ["no client_id", { ...good, client_id: undefined }, "serves a document whose client_id is not exactly this URL"],
    ["a secret-based method", { ...good, token_endpoint_auth_method: "client_secret_basic" }, "serves a document whose token_endpoint_auth_method is not none (the broker does not take private_key_jwt)"],
    ["private_key_jwt", { ...good, token_endpoint_auth_method: "private_key_jwt" }, "serves a document whose token_endpoint_auth_method is not none (the broker does not take private_key_jwt)"],
    ["a client_secret", { ...good, client_secret: "s" }, "serves a document with a client_secret, which a public client must not have"],
    ["a name that is not a string", { ...good, client_name: 7 }, "serves a document whose client_name is not a string of at most 2000 characters"],
    ["no redirect_uris", { ...good, redirect_uris: [] }, "serves a document that is not valid client metadata: redirect_uris must be a non-empty array of strings"],
    ["an http redirect URI off loopback", { ...good, redirect_uris: ["http://app.example.com/cb"] }, 'serves a document that is not valid client metadata: redirect_uri "http://app.example.com/cb" uses http, which is allowed only for localhost, 127.0.0.1 and [::1]'],
    ["a javascript: redirect URI", { ...good, redirect_uris: ["javascript:alert(1)"] }, 'serves a document that is not valid client metadata: redirect_uri "javascript:alert(1)" uses the refused scheme javascript:'],
  ];
  test.each(refusals)("%s → refused", (_, body, reason) => {
    expect(validateMetadataDocument(url, body)).toEqual({ ok: false, reason });
  });
});

describe("Cache-Control as the cache reads it", () => {
  const cases: [string | null, number | undefined][] = [
    [null, undefined],
    ["public", undefined],
    ["max-age=600", 600_000],
    ["public, max-age=30", 30_000],
    ['max-age="120"', 120_000],
    ["no-store", 0],
    ["max-age=600, no-cache", 0],
    ["MAX-AGE=5", 5_000],
  ];
  test.each(cases)("%p → %p ms", (header, expected) => {
    expect(maxAgeOf(header)).toBe(expected);
  });
});

// Table tests for keying rate limits behind reverse proxies: address and CIDR parsing, IPv4-mapped
// IPv6, and the right-most untrusted X-Forwarded-For hop.
import { describe, expect, test } from "bun:test";
import { clientAddressOf, parseAddressBlock } from "../../src/http/client-address.ts";

const blocks = (...texts: string[]) => texts.map((text) => parseAddressBlock(text)!);

describe("addresses and CIDR blocks", () => {
  test.each([
    ["127.0.0.1", { version: 4, prefix: 32 }],
    ["10.0.0.0/8", { version: 4, prefix: 8 }],
    ["0.0.0.0/0", { version: 4, prefix: 0 }],
    ["::1", { version: 6, prefix: 128 }],
    ["fd00::/8", { version: 6, prefix: 8 }],
    ["2001:db8::/32", { version: 6, prefix: 32 }],
    ["2001:DB8:0:0:0:0:0:1", { version: 6, prefix: 128 }],
    ["::ffff:10.0.0.0/104", { version: 4, prefix: 8 }],
    ["::ffff:192.0.2.7", { version: 4, prefix: 32 }],
  ])("%s → %o", (text, expected) => {
    expect(parseAddressBlock(text)).toMatchObject(expected);
  });

  test.each([
    "10.0.0.1/8",
    "10.0.0.0/33",
    "10.0.0.0/",
    "10.0.0.0/-1",
    "256.0.0.1",
    "1.2.3",
    "01.2.3.4",
    "fd00::/129",
    "1::2::3",
    "1:2:3:4:5:6:7:8:9",
    "gggg::1",
    "fe80::1%eth0",
    "localhost",
    "",
  ])("%p is refused", (text) => {
    expect(parseAddressBlock(text)).toBeUndefined();
  });
});

describe("the client address behind trusted proxies", () => {
  const proxies = ["10.0.0.0/8", "fd00::/8"];
  // [socket peer, X-Forwarded-For (as Headers.get joins several headers), trusted proxies, address to key on]
  const cases: [string, string | null, string[], string][] = [
    ["203.0.113.9", null, proxies, "203.0.113.9"],
    ["203.0.113.9", "198.51.100.1", proxies, "203.0.113.9"],
    ["203.0.113.9", "198.51.100.1", [], "203.0.113.9"],
    ["10.0.0.2", "198.51.100.1", [], "10.0.0.2"],
    ["10.0.0.2", "198.51.100.1", proxies, "198.51.100.1"],
    ["10.0.0.2", "6.6.6.6, 198.51.100.1", proxies, "198.51.100.1"],
    ["10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.3", proxies, "198.51.100.1"],
    ["10.0.0.2", "10.9.9.9, 10.0.0.3", proxies, "10.9.9.9"],
    ["10.0.0.2", "198.51.100.1, 6.6.6.6", proxies, "6.6.6.6"],
    ["10.0.0.2", "6.6.6.6,198.51.100.1", proxies, "198.51.100.1"],
    ["10.0.0.2", "", proxies, "10.0.0.2"],
    ["10.0.0.2", "garbage", proxies, "10.0.0.2"],
    ["10.0.0.2", "6.6.6.6, garbage, 10.0.0.3", proxies, "10.0.0.3"],
    ["10.0.0.2", "198.51.100.1:4711", proxies, "198.51.100.1"],
    ["10.0.0.2", "[2001:db8::1]:4711", proxies, "2001:db8:0:0:0:0:0:1"],
    ["10.0.0.2", "2001:db8::1", proxies, "2001:db8:0:0:0:0:0:1"],
    ["10.0.0.2", "::ffff:198.51.100.1", proxies, "198.51.100.1"],
    ["::ffff:10.0.0.2", "198.51.100.1", proxies, "198.51.100.1"],
    ["::ffff:203.0.113.9", "198.51.100.1", proxies, "203.0.113.9"],
    ["fd00::5", "198.51.100.1", proxies, "198.51.100.1"],
    ["::1", "198.51.100.1", proxies, "0:0:0:0:0:0:0:1"],
    ["::1", "198.51.100.1", ["::1"], "198.51.100.1"],
  ];
  test.each(cases)("peer %s, X-Forwarded-For %p, trusting %p → %s", (peer, forwardedFor, trusted, expected) => {
    expect(clientAddressOf(peer, forwardedFor, blocks(...trusted))).toBe(expected);
  });

  test("one client's spellings of its address share one key", () => {
    expect(clientAddressOf("::ffff:203.0.113.9", null, [])).toBe(clientAddressOf("203.0.113.9", null, []));
    expect(clientAddressOf("2001:db8::1", null, [])).toBe(clientAddressOf("2001:DB8:0::0:1", null, []));
  });
});

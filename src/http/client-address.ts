// Which address a request comes from, for rate limits: the socket peer, or behind trusted reverse
// proxies the right-most X-Forwarded-For hop that is not one of them (what no client can forge).

/** An address or CIDR block: IPv4 as a 32-bit, IPv6 as a 128-bit number, with its prefix length. */
export interface AddressBlock {
  version: 4 | 6;
  bits: bigint;
  prefix: number;
}

interface ParsedAddress {
  version: 4 | 6;
  bits: bigint;
}

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function parseIpv4(text: string): bigint | undefined {
  const match = IPV4.exec(text);
  if (!match) return undefined;
  let bits = 0n;
  for (const part of match.slice(1)) {
    if (part.length > 1 && part.startsWith("0")) return undefined;
    const octet = Number(part);
    if (octet > 255) return undefined;
    bits = (bits << 8n) | BigInt(octet);
  }
  return bits;
}

function parseIpv6(text: string): bigint | undefined {
  if (!/^[0-9A-Fa-f:.]+$/.test(text)) return undefined;
  let groups: string[];
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  // A trailing dotted quad (::ffff:1.2.3.4) stands for the last two groups.
  const expand = (part: string): string[] | undefined => {
    if (part === "") return [];
    const pieces = part.split(":");
    const last = pieces[pieces.length - 1]!;
    if (last.includes(".")) {
      const v4 = parseIpv4(last);
      if (v4 === undefined) return undefined;
      pieces.splice(-1, 1, (v4 >> 16n).toString(16), (v4 & 0xffffn).toString(16));
    }
    return pieces;
  };
  const head = expand(halves[0]!);
  const tail = halves.length === 2 ? expand(halves[1]!) : [];
  if (head === undefined || tail === undefined) return undefined;
  if (halves.length === 2) {
    if (head.length + tail.length > 7) return undefined;
    groups = [...head, ...Array<string>(8 - head.length - tail.length).fill("0"), ...tail];
  } else {
    groups = head;
  }
  if (groups.length !== 8) return undefined;
  let bits = 0n;
  for (const group of groups) {
    if (!/^[0-9A-Fa-f]{1,4}$/.test(group)) return undefined;
    bits = (bits << 16n) | BigInt(`0x${group}`);
  }
  return bits;
}

const MAPPED_V4_PREFIX = 0xffffn << 32n;

/** One address; an IPv4-mapped IPv6 address (::ffff:1.2.3.4) is the IPv4 address it carries. */
function parseAddress(text: string): ParsedAddress | undefined {
  const v4 = parseIpv4(text);
  if (v4 !== undefined) return { version: 4, bits: v4 };
  const v6 = parseIpv6(text);
  if (v6 === undefined) return undefined;
  if (v6 >> 32n === 0xffffn) return { version: 4, bits: v6 - MAPPED_V4_PREFIX };
  return { version: 6, bits: v6 };
}

function formatAddress(address: ParsedAddress): string {
  if (address.version === 4) return [24n, 16n, 8n, 0n].map((shift) => (address.bits >> shift) & 0xffn).join(".");
  const groups = [112n, 96n, 80n, 64n, 48n, 32n, 16n, 0n].map((shift) => ((address.bits >> shift) & 0xffffn).toString(16));
  return groups.join(":");
}

/** An address or CIDR (`10.0.0.0/8`, `::1`, `fd00::/8`); undefined when it is neither. */
export function parseAddressBlock(text: string): AddressBlock | undefined {
  const slash = text.indexOf("/");
  const address = parseAddress(slash === -1 ? text : text.slice(0, slash));
  if (address === undefined) return undefined;
  const width = address.version === 4 ? 32 : 128;
  // A mapped IPv4 block (::ffff:10.0.0.0/104) counts its prefix over the IPv4 part.
  const mappedOffset = address.version === 4 && !IPV4.test(slash === -1 ? text : text.slice(0, slash)) ? 96 : 0;
  let prefix = width;
  if (slash !== -1) {
    const raw = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(raw)) return undefined;
    prefix = Number(raw) - mappedOffset;
    if (prefix < 0 || prefix > width) return undefined;
  }
  const mask = prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(width - prefix);
  if ((address.bits & mask) !== address.bits) return undefined;
  return { version: address.version, bits: address.bits, prefix };
}

function inBlock(address: ParsedAddress, block: AddressBlock): boolean {
  if (address.version !== block.version) return false;
  const width = block.version === 4 ? 32 : 128;
  return address.bits >> BigInt(width - block.prefix) === block.bits >> BigInt(width - block.prefix);
}

/** An X-Forwarded-For entry: a bare address, or one with a port as some proxies write it (`1.2.3.4:5`, `[::1]:5`). */
function parseForwardedHop(entry: string): ParsedAddress | undefined {
  const bracketed = /^\[([^\]]+)\](?::\d{1,5})?$/.exec(entry);
  if (bracketed) return parseAddress(bracketed[1]!);
  const withPort = /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/.exec(entry);
  return parseAddress(withPort ? withPort[1]! : entry);
}

/**
 * The address to key a rate limit on. From an untrusted peer, the peer. From a trusted proxy, walk
 * X-Forwarded-For (all its headers, in order) from the right, past trusted proxies, to the first
 * hop that is not one: everything left of it was written by the client. A malformed hop ends the
 * walk at the trusted proxy that wrote it, so garbage never becomes a key of its own.
 */
export function clientAddressOf(peer: string | undefined, forwardedFor: string | null, trusted: readonly AddressBlock[]): string {
  if (peer === undefined) return "unknown";
  let current = parseAddress(peer);
  if (current === undefined) return peer;
  const isTrusted = (address: ParsedAddress) => trusted.some((block) => inBlock(address, block));
  if (forwardedFor !== null && trusted.length > 0) {
    const hops = forwardedFor.split(",").map((hop) => hop.trim()).filter((hop) => hop !== "");
    for (let i = hops.length - 1; i >= 0 && isTrusted(current); i--) {
      const hop = parseForwardedHop(hops[i]!);
      if (hop === undefined) break;
      current = hop;
    }
  }
  return formatAddress(current);
}

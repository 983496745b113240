// Whether an IP address is one the broker may fetch a stranger's URL from: public unicast only, so a
// client_id URL cannot make the broker reach loopback, the LAN, link-local metadata services or CGNAT.

/** An IPv4 block as [first octets as a 32-bit number, prefix length]. */
type Block4 = [string, number];

/** RFC 6890 and the IANA special-purpose registry: none of these is a public host. */
const NOT_PUBLIC_V4: Block4[] = [
  ["0.0.0.0", 8], // "this network", includes the unspecified address
  ["10.0.0.0", 8],
  ["100.64.0.0", 10], // CGNAT shared address space
  ["127.0.0.0", 8],
  ["169.254.0.0", 16], // link-local, where cloud metadata services live
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.0.2.0", 24],
  ["192.88.99.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["198.51.100.0", 24],
  ["203.0.113.0", 24],
  ["224.0.0.0", 4], // multicast
  ["240.0.0.0", 4], // reserved, and the limited broadcast address
];

function parseV4(text: string): number | undefined {
  const parts = text.split(".");
  if (parts.length !== 4 || !parts.every((part) => /^(0|[1-9]\d{0,2})$/.test(part) && Number(part) <= 255)) return undefined;
  return parts.reduce((value, part) => value * 256 + Number(part), 0);
}

function inV4Block(address: number, [base, prefix]: Block4): boolean {
  const size = 2 ** (32 - prefix);
  return Math.floor(address / size) === Math.floor(parseV4(base)! / size);
}

function isPublicV4(address: number): boolean {
  return !NOT_PUBLIC_V4.some((block) => inV4Block(address, block));
}

/** The eight 16-bit groups of an IPv6 address (an embedded dotted quad allowed), or undefined. */
function parseV6(text: string): number[] | undefined {
  if (!/^[0-9a-f:.]+$/i.test(text)) return undefined;
  // An embedded dotted quad (::ffff:127.0.0.1) becomes the two groups it stands for.
  const lastColon = text.lastIndexOf(":");
  let head = text;
  if (text.slice(lastColon + 1).includes(".")) {
    const v4 = parseV4(text.slice(lastColon + 1));
    if (v4 === undefined) return undefined;
    head = `${text.slice(0, lastColon + 1)}${Math.floor(v4 / 65536).toString(16)}:${(v4 % 65536).toString(16)}`;
  }
  const halves = head.split("::");
  if (halves.length > 2) return undefined;
  const groups = (half: string) => (half === "" ? [] : half.split(":"));
  const left = groups(halves[0]!);
  const right = halves.length === 2 ? groups(halves[1]!) : [];
  if (![...left, ...right].every((group) => /^[0-9a-f]{1,4}$/i.test(group))) return undefined;
  const explicit = left.length + right.length;
  if (halves.length === 1 ? explicit !== 8 : explicit > 7) return undefined;
  const zeros = new Array<number>(8 - explicit).fill(0);
  return [...left.map((g) => parseInt(g, 16)), ...(halves.length === 2 ? zeros : []), ...right.map((g) => parseInt(g, 16))];
}

const v4Of = (groups: number[]) => groups[6]! * 65536 + groups[7]!;
const startsWith = (groups: number[], prefix: number[]) => prefix.every((group, i) => groups[i] === group);

function isPublicV6(g: number[]): boolean {
  const first = g[0]!;
  // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible): what they reach is the IPv4 address inside.
  if (startsWith(g, [0, 0, 0, 0, 0, 0xffff])) return isPublicV4(v4Of(g));
  if (startsWith(g, [0, 0, 0, 0, 0, 0])) return v4Of(g) > 0xffff && isPublicV4(v4Of(g));
  // NAT64 (RFC 6052) reaches the IPv4 address inside too; its local-use prefix 64:ff9b:1::/48 is private.
  if (startsWith(g, [0x64, 0xff9b, 0, 0, 0, 0])) return isPublicV4(v4Of(g));
  // Beyond those, only global unicast 2000::/3: no ULA fc00::/7, link-local fe80::/10, multicast ff00::/8, …
  if (first < 0x2000 || first > 0x3fff) return false;
  if (first === 0x2001 && g[1]! < 0x0200) return false; // IETF protocol assignments: Teredo, ORCHID, benchmarking
  if (first === 0x2001 && g[1] === 0x0db8) return false; // documentation
  if (first === 0x3fff && g[1]! < 0x1000) return false; // documentation (RFC 9637)
  // 6to4 embeds the IPv4 address it tunnels to in bits 16–47.
  if (first === 0x2002) return isPublicV4(g[1]! * 65536 + g[2]!);
  return true;
}

/** True only for a public unicast IPv4 or IPv6 address; anything unparsable (or with a zone id) is not. */
export function isPublicAddress(address: string): boolean {
  const v4 = parseV4(address);
  if (v4 !== undefined) return isPublicV4(v4);
  const v6 = parseV6(address.replace(/^\[|\]$/g, ""));
  return v6 !== undefined && isPublicV6(v6);
}

/** Whether the address is this computer (127.0.0.0/8, ::1, or their mapped form): allowed only for BROKER_CIMD_INSECURE_HOSTS. */
export function isLoopbackAddress(address: string): boolean {
  const v4 = parseV4(address);
  if (v4 !== undefined) return inV4Block(v4, ["127.0.0.0", 8]);
  const v6 = parseV6(address.replace(/^\[|\]$/g, ""));
  if (v6 === undefined) return false;
  if (startsWith(v6, [0, 0, 0, 0, 0, 0xffff])) return inV4Block(v4Of(v6), ["127.0.0.0", 8]);
  return v6.every((group, i) => group === (i === 7 ? 1 : 0));
}

// CIDR prefixes (IPv4 and IPv6) for the firewall's bypass sets: parsed strictly (a prefix
// with host bits set is refused: "10.0.0.1/8" is a typo for an address or for
// "10.0.0.0/8", and nft would silently take the network), printed canonically, and
// reduced to a list without nesting (nft refuses overlapping intervals in a set; iptables
// needs one rule per prefix, so fewer is better).
import { formatIPv6, isV4Mapped, parseIPv4, parseIPv6 } from "../sys/addr.ts";

export interface Cidr {
  ipv6: boolean;
  /** Network address: 4 bytes (IPv4) or 16 (IPv6), host bits zero. */
  addr: Uint8Array;
  prefixLength: number;
  /** Canonical text: "10.0.0.0/8", "fc00::/7". */
  text: string;
}

function formatV6(addr: Uint8Array): string {
  // A v4-mapped IPv6 prefix keeps its IPv6 spelling (formatAddress would print it as IPv4).
  if (isV4Mapped(addr)) return `::ffff:${addr[12]}.${addr[13]}.${addr[14]}.${addr[15]}`;
  return formatIPv6(addr);
}

function formatCidr(ipv6: boolean, addr: Uint8Array, prefixLength: number): string {
  return `${ipv6 ? formatV6(addr) : addr.join(".")}/${prefixLength}`;
}

/**
 * Parses "ADDRESS/LENGTH" (or a bare address: a host, /32 or /128). Returns the prefix,
 * or why the text is not one (for an error naming the field).
 */
export function parseCidr(text: string): Cidr | { problem: string } {
  const slash = text.indexOf("/");
  const addressText = slash < 0 ? text : text.slice(0, slash);
  const ipv6 = addressText.includes(":");
  const addr = ipv6 ? parseIPv6(addressText) : parseIPv4(addressText);
  if (!addr) return { problem: `not an IPv${ipv6 ? 6 : 4} address or prefix` };
  const bits = addr.length * 8;
  let prefixLength = bits;
  if (slash >= 0) {
    const lengthText = text.slice(slash + 1);
    if (!/^[0-9]{1,3}$/.test(lengthText) || Number(lengthText) > bits) {
      return { problem: `prefix length must be 0-${bits}` };
    }
    prefixLength = Number(lengthText);
  }
  const network = new Uint8Array(addr);
  for (let bit = prefixLength; bit < bits; bit++) network[bit >> 3] &= ~(0x80 >> (bit & 7));
  const canonical = formatCidr(ipv6, network, prefixLength);
  if (!network.every((b, i) => b === addr[i])) {
    return { problem: `has host bits set (${canonical}?)` };
  }
  return { ipv6, addr: network, prefixLength, text: canonical };
}

function toBigInt(addr: Uint8Array): bigint {
  let n = 0n;
  for (const b of addr) n = (n << 8n) | BigInt(b);
  return n;
}

/**
 * The prefixes of one family, sorted by address, without duplicates and without any
 * prefix that another one in the list contains: what remains is pairwise disjoint.
 */
export function disjointCidrs(cidrs: Cidr[]): Cidr[] {
  const ranges = cidrs.map((c) => {
    const bits = BigInt(c.addr.length * 8);
    const start = toBigInt(c.addr);
    const size = 1n << (bits - BigInt(c.prefixLength));
    return { cidr: c, start, end: start + size - 1n };
  });
  // By start; for one start the widest first, so the narrower ones that follow it go.
  ranges.sort((a, b) =>
    a.start !== b.start ? (a.start < b.start ? -1 : 1) : a.cidr.prefixLength - b.cidr.prefixLength,
  );
  const kept: typeof ranges = [];
  for (const r of ranges) {
    const last = kept[kept.length - 1];
    if (last && r.end <= last.end) continue; // CIDRs nest or are disjoint: contained
    kept.push(r);
  }
  return kept.map((r) => r.cidr);
}

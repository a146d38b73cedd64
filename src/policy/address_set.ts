// A set of CIDRs for per-flow lookups: merged, sorted, disjoint intervals, one array for
// IPv4 and one for IPv6, found by binary search. A lookup reads the address as the data
// path holds it (the 16-byte form as four native-endian words, the session key's layout,
// see src/flow/table.ts) and allocates nothing. Built once per config, on the control
// plane, where BigInt arithmetic is fine.
import type { Cidr } from "../config/cidr.ts";
import { V4_MAPPED_WORD } from "../flow/local_targets.ts";

/** A prefix's first address and length in the 16-byte form (IPv4 /n: v4-mapped /96+n). */
function mapped(c: Cidr): { addr: Uint8Array; bits: number } {
  if (c.ipv6) return { addr: c.addr, bits: c.prefixLength };
  const addr = new Uint8Array(16);
  addr[10] = 0xff;
  addr[11] = 0xff;
  addr.set(c.addr, 12);
  return { addr, bits: 96 + c.prefixLength };
}

function bigOf(addr: Uint8Array): bigint {
  let value = 0n;
  for (let i = 0; i < 16; i++) value = (value << 8n) | BigInt(addr[i]);
  return value;
}

/** The 32-bit big-endian value of a native little-endian word of the 16-byte form. */
function swap(word: number): number {
  return (
    (((word & 0xff) << 24) | ((word & 0xff00) << 8) | ((word >>> 8) & 0xff00) | (word >>> 24)) >>> 0
  );
}

const V4_BASE = 0xffffn << 32n;
const V4_END = V4_BASE | 0xffffffffn;

export class AddressSet {
  /** IPv4 intervals: start and end (inclusive) as unsigned 32-bit values. */
  private readonly starts4: Uint32Array;
  private readonly ends4: Uint32Array;
  /** IPv6 intervals: 4 big-endian words per start and per end. */
  private readonly starts6: Uint32Array;
  private readonly ends6: Uint32Array;

  constructor(cidrs: readonly Cidr[]) {
    const v4: Array<[bigint, bigint]> = [];
    const v6: Array<[bigint, bigint]> = [];
    for (const cidr of cidrs) {
      const c = mapped(cidr);
      const start = bigOf(c.addr);
      const end = start | ((1n << BigInt(128 - c.bits)) - 1n);
      if (start >= V4_BASE && end <= V4_END) v4.push([start - V4_BASE, end - V4_BASE]);
      // A v6 prefix covering ::ffff:0:0/96 (::/0, say) matches IPv6 flows only: an IPv4
      // flow is looked up among the IPv4 CIDRs alone.
      else v6.push([start, end]);
    }
    const m4 = merge(v4);
    this.starts4 = Uint32Array.from(m4, ([s]) => Number(s));
    this.ends4 = Uint32Array.from(m4, ([, e]) => Number(e));
    const m6 = merge(v6);
    this.starts6 = new Uint32Array(m6.length * 4);
    this.ends6 = new Uint32Array(m6.length * 4);
    m6.forEach(([s, e], i) => {
      for (let w = 0; w < 4; w++) {
        const shift = BigInt(96 - w * 32);
        this.starts6[i * 4 + w] = Number((s >> shift) & 0xffffffffn);
        this.ends6[i * 4 + w] = Number((e >> shift) & 0xffffffffn);
      }
    });
  }

  /** Intervals held (after merging), for tests and logs. */
  get intervalCount(): number {
    return this.starts4.length + this.starts6.length / 4;
  }

  /** Whether the address in words[at..at+3] (the session key's layout) is in the set. */
  has(words: Uint32Array, at: number): boolean {
    const w0 = words[at];
    const w1 = words[at + 1];
    const w2 = words[at + 2];
    if (w0 === 0 && w1 === 0 && w2 === V4_MAPPED_WORD) return this.has4(swap(words[at + 3]));
    return this.has6(swap(w0), swap(w1), swap(w2), swap(words[at + 3]));
  }

  private has4(value: number): boolean {
    const starts = this.starts4;
    // The last interval starting at or before value.
    let low = 0;
    let high = starts.length - 1;
    let found = -1;
    while (low <= high) {
      const mid = (low + high) >>> 1;
      if (starts[mid] <= value) {
        found = mid;
        low = mid + 1;
      } else {
        high = mid - 1;
      }
    }
    return found >= 0 && value <= this.ends4[found];
  }

  private has6(a: number, b: number, c: number, d: number): boolean {
    const starts = this.starts6;
    let low = 0;
    let high = starts.length / 4 - 1;
    let found = -1;
    while (low <= high) {
      const mid = (low + high) >>> 1;
      if (compare(starts, mid * 4, a, b, c, d) <= 0) {
        found = mid;
        low = mid + 1;
      } else {
        high = mid - 1;
      }
    }
    return found >= 0 && compare(this.ends6, found * 4, a, b, c, d) >= 0;
  }
}

/** Sign of (words[at..at+3] - (a, b, c, d)), both as 128-bit big-endian numbers. */
function compare(words: Uint32Array, at: number, a: number, b: number, c: number, d: number) {
  if (words[at] !== a) return words[at] < a ? -1 : 1;
  if (words[at + 1] !== b) return words[at + 1] < b ? -1 : 1;
  if (words[at + 2] !== c) return words[at + 2] < c ? -1 : 1;
  if (words[at + 3] !== d) return words[at + 3] < d ? -1 : 1;
  return 0;
}

/** Sorted, disjoint, non-adjacent intervals covering exactly the union of `ranges`. */
function merge(ranges: Array<[bigint, bigint]>): Array<[bigint, bigint]> {
  ranges.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  const out: Array<[bigint, bigint]> = [];
  for (const [start, end] of ranges) {
    const last = out[out.length - 1];
    if (last && start <= last[1] + 1n) {
      if (end > last[1]) last[1] = end;
    } else {
      out.push([start, end]);
    }
  }
  return out;
}

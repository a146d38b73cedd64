// Which original destinations the relay must never relay to (DESIGN.md "Never relay to
// ourselves"): the host's own addresses and everything else the kernel delivers
// locally. A datagram sent straight to a listener carries the listener's own address as
// its "original destination"; a flow to one of the gateway's addresses would make the
// relay bind a reply socket there and catch its own upstream datagrams. Either way one
// datagram circulates at full CPU. So the UDP and TCP paths ask here once per new flow
// (never per packet) and drop what is local, counted.
//
// The set is the kernel's local routing table (ffi/local_addr.c: what nft's
// `fib daddr type local` matches), plus ranges that are local whatever the table says
// (unspecified, loopback, limited broadcast). It follows interface changes: the owner
// registers watchFd() with its poller and calls refresh() when it is readable, and
// again on a slow timer (an AnyIP route added with `ip route add local` sends no
// address notification).
//
// Lookup: one hash index per distinct prefix length (a host has two or three: /32 and
// /128 addresses, 127.0.0.0/8), so a check is a few probes and allocates nothing.

import { type Pointer, ptr, type RelayLib } from "../sys/ffi.ts";
import { errnoName } from "../sys/errno.ts";
import { parseAddress } from "../sys/addr.ts";
import { HashIndex } from "./hash_index.ts";

/** struct rl_local_route (ffi/relay.h): 16 address bytes, prefix bits, type, 2 spare. */
const ROUTE_BYTES = 20;
/** Local-table entries read per refresh at most; a larger table fails loudly. */
export const LOCAL_ROUTES_MAX = 65_536;

/** Destinations local whatever the routing table holds (RFC 6890 special-purpose). */
const ALWAYS_LOCAL: Array<[string, number]> = [
  ["0.0.0.0", 8], // "this network": 0.0.0.0 is the unspecified address
  ["127.0.0.0", 8], // loopback, even with lo down
  ["255.255.255.255", 32], // limited broadcast
  ["::", 128], // unspecified
  ["::1", 128], // loopback
];

export const enum TargetKind {
  /** Relay it. */
  Remote = 0,
  /** The host itself (an address, loopback, unspecified, broadcast): never relayed. */
  Local = 1,
  /** Multicast: a unicast relay cannot answer for a group; never relayed. */
  Multicast = 2,
}

/** Mask words per prefix length, in the little-endian word order of the 16-byte keys. */
const MASKS = (() => {
  const masks = new Uint32Array(129 * 4);
  const bytes = new Uint8Array(masks.buffer);
  for (let bits = 0; bits <= 128; bits++) {
    for (let b = 0; b < 16; b++) {
      const covered = Math.max(0, Math.min(8, bits - b * 8));
      bytes[bits * 16 + b] = (0xff00 >> covered) & 0xff;
    }
  }
  return masks;
})();

interface PrefixSets {
  /** Distinct prefix lengths present, longest first. */
  lengths: number[];
  indexes: HashIndex[];
  count: number;
}

export class LocalTargets {
  private sets: PrefixSets = { lengths: [], indexes: [], count: 0 };
  private readonly routes = new Uint8Array(new ArrayBuffer(ROUTE_BYTES * LOCAL_ROUTES_MAX));
  private readonly routesPtr: Pointer;
  private watch = -1;
  /** Refreshes done (each a full dump of the local table). */
  refreshes = 0;
  /**
   * Refreshes that changed the set: what a session scan waits for (the periodic re-read
   * of an unchanged table must not scan every session every few seconds).
   */
  changes = 0;
  /** The last dump, to tell a change from a re-read of the same table. */
  private lastDump = new Uint8Array(0);

  constructor(private readonly lib: RelayLib) {
    this.routesPtr = ptr(this.routes);
  }

  /** Entries in the set (kernel table plus the built-in ranges). */
  get count(): number {
    return this.sets.count;
  }

  /**
   * Opens the netlink watch (address added/removed). Returns its fd for the caller's
   * poller, or throws: without it the set could go stale silently.
   */
  openWatch(): number {
    if (this.watch >= 0) return this.watch;
    const fd = this.lib.rl_addr_watch_open();
    if (fd < 0) throw new Error(`netlink address watch: ${errnoName(-fd)}`);
    this.watch = fd;
    return fd;
  }

  /** After the watch fd became readable: consume the notifications, then refresh. */
  onWatchReadable(): void {
    this.lib.rl_addr_watch_drain(this.watch); // -ENOBUFS (lost notes) also means: dump
    this.refresh();
  }

  closeWatch(): void {
    if (this.watch < 0) return;
    this.lib.rl_close(this.watch);
    this.watch = -1;
  }

  /** Reads the kernel's local table and swaps in the new set. Throws when it cannot. */
  refresh(): void {
    const n = this.lib.rl_local_routes(this.routesPtr, LOCAL_ROUTES_MAX);
    if (n < 0) throw new Error(`reading the local routing table: ${errnoName(-n)}`);
    this.refreshes++;
    const dump = this.routes.subarray(0, n * ROUTE_BYTES);
    if (this.changes > 0 && sameBytes(dump, this.lastDump)) return;
    this.lastDump = dump.slice();
    const prefixes: Array<[Uint8Array, number]> = [];
    for (let i = 0; i < n; i++) {
      const base = i * ROUTE_BYTES;
      prefixes.push([this.routes.subarray(base, base + 16), this.routes[base + 16]]);
    }
    for (const [text, bits] of ALWAYS_LOCAL) {
      const addr = parseAddress(text);
      if (!addr) throw new Error(`LocalTargets: bad built-in prefix ${text}`);
      prefixes.push([addr, text.includes(":") ? bits : 96 + bits]);
    }
    this.sets = build(prefixes);
    this.changes++;
  }

  /** Whether the 16-byte address (four little-endian words) is local to this host. */
  isLocal(w0: number, w1: number, w2: number, w3: number): boolean {
    const { lengths, indexes } = this.sets;
    for (let i = 0; i < lengths.length; i++) {
      const m = lengths[i] * 4;
      const index = indexes[i];
      const key = index.scratch;
      key[0] = w0 & MASKS[m];
      key[1] = w1 & MASKS[m + 1];
      key[2] = w2 & MASKS[m + 2];
      key[3] = w3 & MASKS[m + 3];
      if (index.find() >= 0) return true;
    }
    return false;
  }

  /** Local, multicast, or a destination the relay may relay to. */
  classify(w0: number, w1: number, w2: number, w3: number): TargetKind {
    if (this.isLocal(w0, w1, w2, w3)) return TargetKind.Local;
    // IPv4 224.0.0.0/4 (v4-mapped: byte 12 is the first octet) or IPv6 ff00::/8.
    if (w0 === 0 && w1 === 0 && w2 === V4_MAPPED_WORD) {
      return (w3 & 0xf0) === 0xe0 ? TargetKind.Multicast : TargetKind.Remote;
    }
    return (w0 & 0xff) === 0xff ? TargetKind.Multicast : TargetKind.Remote;
  }

  /** Same as classify(), for 16 bytes at `offset` (control plane and tests). */
  classifyBytes(addr: Uint8Array, offset = 0): TargetKind {
    const view = new DataView(addr.buffer, addr.byteOffset + offset, 16);
    return this.classify(
      view.getUint32(0, true),
      view.getUint32(4, true),
      view.getUint32(8, true),
      view.getUint32(12, true),
    );
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Bytes 8..11 of ::ffff:a.b.c.d (00 00 ff ff) read as a little-endian word. */
export const V4_MAPPED_WORD = 0xffff0000;

function build(prefixes: Array<[Uint8Array, number]>): PrefixSets {
  const byLength = new Map<number, Array<Uint8Array>>();
  for (const [addr, bits] of prefixes) {
    if (!(bits >= 0 && bits <= 128)) throw new Error(`LocalTargets: prefix length ${bits}`);
    let list = byLength.get(bits);
    if (!list) byLength.set(bits, (list = []));
    list.push(addr);
  }
  const lengths = [...byLength.keys()].sort((a, b) => b - a);
  const indexes: HashIndex[] = [];
  let count = 0;
  for (const bits of lengths) {
    const list = byLength.get(bits)!;
    const index = new HashIndex(4, list.length);
    const words = new Uint32Array(4);
    const wordBytes = new Uint8Array(words.buffer);
    for (const addr of list) {
      wordBytes.set(addr.subarray(0, 16));
      for (let w = 0; w < 4; w++) index.scratch[w] = words[w] & MASKS[bits * 4 + w];
      if (index.find() < 0) {
        index.insert();
        count++;
      }
    }
    indexes.push(index);
  }
  return { lengths, indexes, count };
}

// The hold buffer: a flow's first datagrams wait here, in order, while the policy needs
// its name (a DNS qname, a QUIC SNI that may span several Initials) to decide. The
// receive slab is reused every round, so held datagrams are copied out of it into a
// fixed arena allocated at start, in slots of the slab's slot size.
//
// Bounds, per flow first (udp.holdPacketsPerFlowMax, udp.holdBytesPerFlowMax), then the
// whole arena (udp.holdBytesMax): a client that fills its own bound only loses its own
// datagrams; a crowd that fills the arena loses only the datagrams past it. The caller
// counts each refusal by which bound said no.
//
// Held sessions are also kept in a list by when they began holding (the oldest first):
// the holding timeout (udp.holdTimeoutMs, one value for all) releases from its head.
import { type Pointer, ptr } from "../sys/ffi.ts";
import { assert } from "../sys/assert.ts";

export const enum HoldResult {
  Held = 0,
  /** The flow already holds its bound of datagrams or bytes. */
  FlowFull = 1,
  /** No free slot in the arena. */
  ArenaFull = 2,
}

export class HoldBuffer {
  /** The arena (its own ArrayBuffer: a cached ptr() must not move), and its pointer. */
  readonly arena: Uint8Array;
  readonly arenaPtr: Pointer;
  readonly slotBytes: number;
  readonly slotsMax: number;
  private readonly arena32: Uint32Array;
  /** Free slots, a stack. */
  private readonly free: Int32Array;
  private freeCount: number;
  /** Per arena slot: the next slot of its flow (-1 last), its length and target scope. */
  private readonly nextSlot: Int32Array;
  readonly length: Uint32Array;
  readonly scope: Uint32Array;

  // Per session.
  private readonly head: Int32Array;
  private readonly tail: Int32Array;
  private readonly packets: Uint8Array;
  private readonly bytes: Uint32Array;
  /** When the session began holding (performance.now()). */
  readonly sinceMs: Float64Array;
  /** The list of held sessions, oldest first. */
  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  /** Per session: 1 while holding. */
  private readonly active: Uint8Array;
  private first = -1;
  private last = -1;
  /** Sessions holding now. */
  count = 0;

  packetsPerFlowMax: number;
  bytesPerFlowMax: number;

  constructor(
    slotBytes: number,
    bytesMax: number,
    sessionsMax: number,
    packetsPerFlowMax: number,
    bytesPerFlowMax: number,
  ) {
    assert(slotBytes % 64 === 0, "hold slots are whole 64-byte lines");
    this.slotBytes = slotBytes;
    this.slotsMax = Math.max(1, Math.floor(bytesMax / slotBytes));
    this.arena = new Uint8Array(new ArrayBuffer(this.slotsMax * slotBytes));
    this.arenaPtr = ptr(this.arena);
    this.arena32 = new Uint32Array(this.arena.buffer);
    this.free = new Int32Array(this.slotsMax);
    for (let i = 0; i < this.slotsMax; i++) this.free[i] = this.slotsMax - 1 - i;
    this.freeCount = this.slotsMax;
    this.nextSlot = new Int32Array(this.slotsMax).fill(-1);
    this.length = new Uint32Array(this.slotsMax);
    this.scope = new Uint32Array(this.slotsMax);
    this.head = new Int32Array(sessionsMax).fill(-1);
    this.tail = new Int32Array(sessionsMax).fill(-1);
    this.packets = new Uint8Array(sessionsMax);
    this.bytes = new Uint32Array(sessionsMax);
    this.sinceMs = new Float64Array(sessionsMax);
    this.prev = new Int32Array(sessionsMax).fill(-1);
    this.next = new Int32Array(sessionsMax).fill(-1);
    this.active = new Uint8Array(sessionsMax);
    this.packetsPerFlowMax = packetsPerFlowMax;
    this.bytesPerFlowMax = bytesPerFlowMax;
  }

  /** Bytes of the arena in use (whole slots). */
  get bytesUsed(): number {
    return (this.slotsMax - this.freeCount) * this.slotBytes;
  }

  /**
   * Session s begins holding. timed: it joins the list the holding timeout reads (a flow
   * awaiting its name); untimed: its owner ends it (a flow awaiting its SOCKS5
   * association, bounded by the outbound's connectTimeoutMs).
   */
  begin(s: number, now: number, timed = true): void {
    this.sinceMs[s] = now;
    this.head[s] = -1;
    this.tail[s] = -1;
    this.packets[s] = 0;
    this.bytes[s] = 0;
    this.active[s] = 1;
    this.count++;
    if (!timed) return;
    this.prev[s] = this.last;
    this.next[s] = -1;
    if (this.last >= 0) this.next[this.last] = s;
    else this.first = s;
    this.last = s;
  }

  /** Session s keeps its datagrams but leaves the holding timeout's list. */
  untime(s: number): void {
    if (!this.isListed(s)) return;
    const p = this.prev[s];
    const n = this.next[s];
    if (p >= 0) this.next[p] = n;
    else this.first = n;
    if (n >= 0) this.prev[n] = p;
    else this.last = p;
    this.prev[s] = -1;
    this.next[s] = -1;
  }

  /** Whether session s is holding (timed or not). */
  holding(s: number): boolean {
    return this.active[s] === 1;
  }

  /**
   * Copies a datagram of session s (holding) into the arena: `length` bytes from
   * `source`, starting at byte `offset` (a multiple of 4). Whole words are copied: the
   * source slot and the arena slot are both whole 64-byte lines.
   */
  hold(s: number, source: Uint32Array, offset: number, length: number, scope: number): HoldResult {
    if (this.packets[s] >= this.packetsPerFlowMax) return HoldResult.FlowFull;
    if (this.bytes[s] + length > this.bytesPerFlowMax) return HoldResult.FlowFull;
    if (this.freeCount === 0) return HoldResult.ArenaFull;
    const slot = this.free[--this.freeCount];
    const words = (length + 3) >>> 2;
    const from = offset >>> 2;
    const to = (slot * this.slotBytes) >>> 2;
    const arena32 = this.arena32;
    for (let k = 0; k < words; k++) arena32[to + k] = source[from + k];
    this.length[slot] = length;
    this.scope[slot] = scope;
    this.nextSlot[slot] = -1;
    if (this.tail[s] >= 0) this.nextSlot[this.tail[s]] = slot;
    else this.head[s] = slot;
    this.tail[s] = slot;
    this.packets[s]++;
    this.bytes[s] += length;
    return HoldResult.Held;
  }

  /** Datagrams session s holds. */
  packetsOf(s: number): number {
    return this.packets[s];
  }

  /** The first held datagram of session s (an arena slot), or -1. */
  firstOf(s: number): number {
    return this.head[s];
  }

  /** The datagram held after `slot` in its flow, or -1. */
  after(slot: number): number {
    return this.nextSlot[slot];
  }

  /** Byte offset of an arena slot (what send entries and rl_icmp_unreachable take). */
  offsetOf(slot: number): number {
    return slot * this.slotBytes;
  }

  /** The held session that has waited longest, or -1. */
  get oldest(): number {
    return this.first;
  }

  /** Session s stops holding: its slots go back to the arena (the caller sent them). */
  end(s: number): void {
    if (this.active[s] === 0) return;
    this.active[s] = 0;
    this.count--;
    for (let slot = this.head[s]; slot >= 0; ) {
      const following = this.nextSlot[slot];
      this.free[this.freeCount++] = slot;
      slot = following;
    }
    this.head[s] = -1;
    this.tail[s] = -1;
    this.packets[s] = 0;
    this.bytes[s] = 0;
    this.untime(s);
  }

  private isListed(s: number): boolean {
    return this.first === s || this.prev[s] >= 0;
  }
}

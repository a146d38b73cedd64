// The UDP session table: one entry per flow (client endpoint -> original destination),
// holding the return path. Fixed capacity, per-class idle timeouts, LRU eviction.
//
// Invariants (checked by invariants()):
//   count <= capacity; every live session is in exactly one class list;
//   within a class list, lastSeenMs never increases from head to tail.
// So the oldest session of a class is its tail, expiry is O(expired), and the global
// least recently used session is the oldest of the class tails (classes <= 16).

import { HashIndex } from "./hash_index.ts";

/** Key: client address (4 words), target address (4 words), ports (client << 16 | target). */
export const SESSION_KEY_WORDS = 9;
export const TIMEOUT_CLASS_COUNT_MAX = 16;

/** Session protocol codes (what parsing found). */
export const PROTOCOL_UNKNOWN = 0;
export const PROTOCOL_DNS = 1;
export const PROTOCOL_QUIC = 2;
export const PROTOCOL_NAMES = ["udp", "dns", "quic"] as const;

/** SessionTable.outbound of a flow held until its name is known (beside ACTION_*). */
export const OUTBOUND_PENDING = -3;

export const enum EndReason {
  Idle = 0,
  Evicted = 1,
  /** Closed by the relay: at stop, or when its upstream socket could not be made. */
  Closed = 2,
  /** Its original destination became an address of this host (it would loop). */
  LocalTarget = 3,
  /**
   * Forced DNS queries (src/dns/forwarder.ts: no session, one record per query): the
   * answer relayed; no answer from any resolver tried; answered in place (dnsAnswer).
   */
  DnsAnswered = 4,
  DnsTimedOut = 5,
  DnsAnsweredLocally = 6,
}

/** EndReason names, as the flow log writes them. */
export const END_REASON_NAMES = [
  "idle",
  "evicted",
  "closed",
  "local-target",
  "dns-answered",
  "dns-timeout",
  "dns-local",
] as const;

export interface SessionEnd {
  (session: number, reason: EndReason): void;
}

export class SessionTable {
  readonly capacity: number;
  readonly index: HashIndex;
  /** Fill with the key, then call find()/create(). */
  readonly key: Uint32Array;
  /** Per class (the first classCount entries). */
  readonly timeoutsMs = new Float64Array(TIMEOUT_CLASS_COUNT_MAX);
  private classCount = 0;

  // Per-session values, indexed by session slot.
  readonly lastSeenMs: Float64Array;
  readonly createdMs: Float64Array;
  readonly timeoutClass: Uint8Array;
  /** Index of the upstream socket record carrying this flow. */
  readonly upstream: Int32Array;
  /** Index of the reply-socket pool entry, or -1 when replies use the listener. */
  readonly reply: Int32Array;
  readonly listener: Int16Array;
  /** What the flow carries, learned by parsing (PROTOCOL_*), and the name it asked for. */
  readonly protocol: Uint8Array;
  readonly name: Array<string | null>;
  /** Datagrams still to offer to the parser (0: done). */
  readonly sniffLeft: Uint8Array;
  /** The policy rule that decided the flow (index into the policy's rules), -1: none yet. */
  readonly rule: Int16Array;
  /**
   * What the flow does, decided once (src/udp/relay.ts): an outbound (>= 0), or
   * ACTION_DROP / ACTION_REJECT, or OUTBOUND_PENDING while its name is awaited.
   */
  readonly outbound: Int16Array;
  readonly packetsToTarget: Float64Array;
  readonly bytesToTarget: Float64Array;
  readonly packetsToClient: Float64Array;
  readonly bytesToClient: Float64Array;

  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  private readonly heads: Int32Array; // per class: most recently used
  private readonly tails: Int32Array; // per class: least recently used
  /** setTimeouts' scratch: one cursor per old class list. */
  private readonly cursors = new Int32Array(TIMEOUT_CLASS_COUNT_MAX);

  /** Called for every session that ends, before its slot is reused. */
  onEnd: SessionEnd = () => {};

  constructor(capacity: number, timeoutsMs: readonly number[]) {
    if (timeoutsMs.length < 1 || timeoutsMs.length > TIMEOUT_CLASS_COUNT_MAX) {
      throw new RangeError(`timeout classes: ${timeoutsMs.length}`);
    }
    this.capacity = capacity;
    this.index = new HashIndex(SESSION_KEY_WORDS, capacity);
    this.key = this.index.scratch;
    this.classCount = timeoutsMs.length;
    this.timeoutsMs.set(timeoutsMs);
    this.lastSeenMs = new Float64Array(capacity);
    this.createdMs = new Float64Array(capacity);
    this.timeoutClass = new Uint8Array(capacity);
    this.upstream = new Int32Array(capacity).fill(-1);
    this.reply = new Int32Array(capacity).fill(-1);
    this.listener = new Int16Array(capacity).fill(-1);
    this.protocol = new Uint8Array(capacity);
    this.name = new Array<string | null>(capacity).fill(null);
    this.sniffLeft = new Uint8Array(capacity);
    this.rule = new Int16Array(capacity).fill(-1);
    this.outbound = new Int16Array(capacity);
    this.packetsToTarget = new Float64Array(capacity);
    this.bytesToTarget = new Float64Array(capacity);
    this.packetsToClient = new Float64Array(capacity);
    this.bytesToClient = new Float64Array(capacity);
    this.prev = new Int32Array(capacity).fill(-1);
    this.next = new Int32Array(capacity).fill(-1);
    // Room for every class a reload may bring (setTimeouts).
    this.heads = new Int32Array(TIMEOUT_CLASS_COUNT_MAX).fill(-1);
    this.tails = new Int32Array(TIMEOUT_CLASS_COUNT_MAX).fill(-1);
  }

  /**
   * New timeout classes (a reload): each live session moves to the class `classOf` gives
   * it (from its key, e.g. its destination port) and keeps its lastSeenMs, so the new
   * timeouts apply to it from the next expire(): one idle past its new timeout ends
   * there. O(sessions x classes), with no allocation: the old class lists, each ordered
   * by lastSeenMs, are merged most recent first and each session is appended at the
   * tail of its new list, so every new list is ordered too.
   */
  setTimeouts(timeoutsMs: readonly number[], classOf: (slot: number) => number): void {
    if (timeoutsMs.length < 1 || timeoutsMs.length > TIMEOUT_CLASS_COUNT_MAX) {
      throw new RangeError(`timeout classes: ${timeoutsMs.length}`);
    }
    const oldCount = this.classCount;
    // The old lists' heads are the merge cursors; the old lists are walked, not relinked,
    // until every session has been moved (next[] is read before a session is appended).
    const cursors = this.cursors;
    cursors.set(this.heads);
    this.heads.fill(-1);
    this.tails.fill(-1);
    this.classCount = timeoutsMs.length;
    this.timeoutsMs.fill(0);
    this.timeoutsMs.set(timeoutsMs);
    for (;;) {
      let from = -1;
      for (let cls = 0; cls < oldCount; cls++) {
        const s = cursors[cls];
        if (s >= 0 && (from < 0 || this.lastSeenMs[s] > this.lastSeenMs[cursors[from]])) {
          from = cls;
        }
      }
      if (from < 0) break;
      const slot = cursors[from];
      cursors[from] = this.next[slot];
      const cls = classOf(slot);
      if (!(cls >= 0 && cls < this.classCount)) {
        throw new RangeError(`session ${slot}: timeout class ${cls} of ${this.classCount}`);
      }
      this.timeoutClass[slot] = cls;
      this.linkTail(slot);
    }
  }

  get count(): number {
    return this.index.count;
  }

  find(): number {
    return this.index.find();
  }

  /** Word w (0..SESSION_KEY_WORDS) of session s's key: client 0-3, target 4-7, ports 8. */
  keyWord(s: number, w: number): number {
    return this.index.keys[s * SESSION_KEY_WORDS + w];
  }

  /**
   * Creates a session for `key` (not present). When the table is full the least
   * recently used session ends first (EndReason.Evicted). Returns the new slot.
   */
  create(nowMs: number, timeoutClass: number): number {
    if (this.index.full) {
      const victim = this.leastRecentlyUsed();
      this.end(victim, EndReason.Evicted);
    }
    const slot = this.index.insert();
    if (slot < 0) throw new Error("SessionTable.create: no slot after eviction");
    this.timeoutClass[slot] = timeoutClass;
    this.lastSeenMs[slot] = nowMs;
    this.createdMs[slot] = nowMs;
    this.upstream[slot] = -1;
    this.reply[slot] = -1;
    this.listener[slot] = -1;
    this.protocol[slot] = PROTOCOL_UNKNOWN;
    this.name[slot] = null;
    this.sniffLeft[slot] = 0;
    this.rule[slot] = -1;
    this.outbound[slot] = 0;
    this.packetsToTarget[slot] = 0;
    this.bytesToTarget[slot] = 0;
    this.packetsToClient[slot] = 0;
    this.bytesToClient[slot] = 0;
    this.linkHead(slot);
    return slot;
  }

  /**
   * Gives session `slot` the key in `key` (which must not be present): the same flow seen
   * from a new client endpoint (QUIC NAT rebinding). Its values and slot stay.
   */
  rekey(slot: number): void {
    this.index.rekey(slot);
  }

  /** Marks a session as just used. */
  touch(slot: number, nowMs: number): void {
    this.lastSeenMs[slot] = nowMs;
    const cls = this.timeoutClass[slot];
    if (this.heads[cls] === slot) return;
    this.unlink(slot);
    this.linkHead(slot);
  }

  /** Ends sessions idle past their class timeout; at most `budget`. Returns how many. */
  expire(nowMs: number, budget: number): number {
    let ended = 0;
    for (let cls = 0; cls < this.classCount; cls++) {
      const timeoutMs = this.timeoutsMs[cls];
      while (ended < budget) {
        const tail = this.tails[cls];
        if (tail < 0 || nowMs - this.lastSeenMs[tail] < timeoutMs) break;
        this.end(tail, EndReason.Idle);
        ended++;
      }
    }
    return ended;
  }

  /** Ends a session now (the caller's reason), running onEnd before the slot is freed. */
  end(slot: number, reason: EndReason): void {
    this.onEnd(slot, reason);
    this.unlink(slot);
    this.index.remove(slot);
    this.upstream[slot] = -1;
    this.reply[slot] = -1;
  }

  leastRecentlyUsed(): number {
    let victim = -1;
    for (let cls = 0; cls < this.classCount; cls++) {
      const tail = this.tails[cls];
      if (tail >= 0 && (victim < 0 || this.lastSeenMs[tail] < this.lastSeenMs[victim])) {
        victim = tail;
      }
    }
    return victim;
  }

  /** Calls fn for each live session, most recently used first within each class. */
  forEach(fn: (slot: number) => void): void {
    for (let cls = 0; cls < this.classCount; cls++) {
      for (let s = this.heads[cls]; s >= 0; s = this.next[s]) fn(s);
    }
  }

  private linkHead(slot: number): void {
    const cls = this.timeoutClass[slot];
    const head = this.heads[cls];
    this.prev[slot] = -1;
    this.next[slot] = head;
    if (head >= 0) this.prev[head] = slot;
    else this.tails[cls] = slot;
    this.heads[cls] = slot;
  }

  /** Appends a session as the least recently used of its class (setTimeouts' merge). */
  private linkTail(slot: number): void {
    const cls = this.timeoutClass[slot];
    const tail = this.tails[cls];
    this.next[slot] = -1;
    this.prev[slot] = tail;
    if (tail >= 0) this.next[tail] = slot;
    else this.heads[cls] = slot;
    this.tails[cls] = slot;
  }

  private unlink(slot: number): void {
    const cls = this.timeoutClass[slot];
    const p = this.prev[slot];
    const n = this.next[slot];
    if (p >= 0) this.next[p] = n;
    else this.heads[cls] = n;
    if (n >= 0) this.prev[n] = p;
    else this.tails[cls] = p;
    this.prev[slot] = -1;
    this.next[slot] = -1;
  }

  invariants(): void {
    this.index.invariants();
    let listed = 0;
    for (let cls = 0; cls < TIMEOUT_CLASS_COUNT_MAX; cls++) {
      if (cls >= this.classCount) {
        if (this.heads[cls] !== -1 || this.tails[cls] !== -1) {
          throw new Error(`class ${cls} unused but linked`);
        }
        continue;
      }
      let previous = -1;
      for (let s = this.heads[cls]; s >= 0; s = this.next[s]) {
        if (++listed > this.capacity) throw new Error("class list cycle");
        if (this.timeoutClass[s] !== cls) throw new Error(`session ${s} in wrong class list`);
        if (this.prev[s] !== previous) throw new Error(`session ${s} prev link broken`);
        if (previous >= 0 && this.lastSeenMs[s] > this.lastSeenMs[previous]) {
          throw new Error(`class ${cls} list not ordered by lastSeenMs`);
        }
        previous = s;
      }
      if (this.tails[cls] !== previous) throw new Error(`class ${cls} tail broken`);
    }
    if (listed !== this.count) throw new Error(`listed ${listed} != count ${this.count}`);
    if (this.count > this.capacity) throw new Error("count exceeds capacity");
  }
}

// A fixed-capacity hash index from a key of `keyWords` u32 words to a slot number in
// [0, capacity). Open addressing with linear probing and backward-shift deletion (no
// tombstones, so probe lengths never degrade). All memory is allocated in the
// constructor; find/insert/remove allocate nothing.
//
// The caller writes the key into `scratch` and then calls find()/insert(). Slots are
// handed out from a free stack; the caller keeps its own per-slot values in parallel
// typed arrays indexed by slot.

export class HashIndex {
  readonly keyWords: number;
  readonly capacity: number;
  /** The key the next find()/insert() uses. */
  readonly scratch: Uint32Array;
  /** keys[slot * keyWords + w]: the key stored at each slot. */
  readonly keys: Uint32Array;
  private readonly hashes: Uint32Array; // per slot
  private readonly buckets: Int32Array; // slot + 1, or 0 when empty
  private readonly bucketMask: number;
  private readonly freeSlots: Int32Array; // stack of free slots
  private freeCount: number;

  constructor(keyWords: number, capacity: number) {
    if (!(keyWords >= 1 && keyWords <= 16)) throw new RangeError(`keyWords ${keyWords}`);
    if (!(capacity >= 1 && capacity <= 1 << 24)) throw new RangeError(`capacity ${capacity}`);
    this.keyWords = keyWords;
    this.capacity = capacity;
    this.scratch = new Uint32Array(keyWords);
    this.keys = new Uint32Array(keyWords * capacity);
    this.hashes = new Uint32Array(capacity);
    // Load factor <= 0.5 keeps linear probes short.
    let bucketCount = 1;
    while (bucketCount < capacity * 2) bucketCount *= 2;
    this.buckets = new Int32Array(bucketCount);
    this.bucketMask = bucketCount - 1;
    this.freeSlots = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.freeSlots[i] = capacity - 1 - i;
    this.freeCount = capacity;
  }

  get count(): number {
    return this.capacity - this.freeCount;
  }

  get full(): boolean {
    return this.freeCount === 0;
  }

  /** Hash of the scratch key: a multiply-xorshift mix per word (murmur3 finaliser). */
  private hashScratch(): number {
    const key = this.scratch;
    let h = 0x9e3779b9 ^ this.keyWords;
    for (let w = 0; w < this.keyWords; w++) {
      h = Math.imul(h ^ key[w], 0x85ebca6b);
      h ^= h >>> 13;
    }
    h = Math.imul(h ^ (h >>> 16), 0xc2b2ae35);
    return (h ^ (h >>> 16)) >>> 0;
  }

  private slotMatchesScratch(slot: number): boolean {
    const base = slot * this.keyWords;
    const key = this.scratch;
    for (let w = 0; w < this.keyWords; w++) if (this.keys[base + w] !== key[w]) return false;
    return true;
  }

  /** Slot holding the scratch key, or -1. */
  find(): number {
    const hash = this.hashScratch();
    let bucket = hash & this.bucketMask;
    // Bounded: at most capacity entries, and at least half the buckets are empty.
    for (let probe = 0; probe <= this.bucketMask; probe++) {
      const entry = this.buckets[bucket];
      if (entry === 0) return -1;
      const slot = entry - 1;
      if (this.hashes[slot] === hash && this.slotMatchesScratch(slot)) return slot;
      bucket = (bucket + 1) & this.bucketMask;
    }
    return -1;
  }

  /** Inserts the scratch key (which must not be present) and returns its slot, or -1 when full. */
  insert(): number {
    if (this.freeCount === 0) return -1;
    const slot = this.freeSlots[--this.freeCount];
    this.place(slot);
    return slot;
  }

  /** Stores the scratch key at `slot` and indexes it. */
  private place(slot: number): void {
    const hash = this.hashScratch();
    this.hashes[slot] = hash;
    this.keys.set(this.scratch, slot * this.keyWords);
    let bucket = hash & this.bucketMask;
    // Bounded: at least half the buckets are empty (load factor <= 0.5).
    while (this.buckets[bucket] !== 0) bucket = (bucket + 1) & this.bucketMask;
    this.buckets[bucket] = slot + 1;
  }

  /** Removes the entry at `slot` (which must be in use). */
  remove(slot: number): void {
    this.unindex(slot);
    this.freeSlots[this.freeCount++] = slot;
  }

  /**
   * Moves the entry at `slot` (in use) to the scratch key (which must not be present),
   * keeping its slot, so the caller's per-slot values stay where they are.
   */
  rekey(slot: number): void {
    this.unindex(slot);
    this.place(slot);
  }

  /** Takes `slot`'s entry out of the buckets (the slot itself stays allocated). */
  private unindex(slot: number): void {
    let bucket = this.hashes[slot] & this.bucketMask;
    let probe = 0;
    while (this.buckets[bucket] !== slot + 1) {
      bucket = (bucket + 1) & this.bucketMask;
      if (++probe > this.bucketMask) throw new Error(`HashIndex.remove: slot ${slot} not indexed`);
    }
    // Backward-shift deletion (Knuth 6.4 algorithm R): pull later entries of the
    // cluster back over the hole when their home bucket allows it.
    let hole = bucket;
    let next = (hole + 1) & this.bucketMask;
    while (this.buckets[next] !== 0) {
      const moved = this.buckets[next] - 1;
      const home = this.hashes[moved] & this.bucketMask;
      // Move if `home` is not cyclically within (hole, next].
      const distanceHomeToNext = (next - home) & this.bucketMask;
      const distanceHoleToNext = (next - hole) & this.bucketMask;
      if (distanceHomeToNext >= distanceHoleToNext) {
        this.buckets[hole] = moved + 1;
        hole = next;
      }
      next = (next + 1) & this.bucketMask;
    }
    this.buckets[hole] = 0;
  }

  /** Checks every structural invariant; O(buckets). For tests and debug builds. */
  invariants(): void {
    let indexed = 0;
    const seen = new Uint8Array(this.capacity);
    for (let b = 0; b <= this.bucketMask; b++) {
      const entry = this.buckets[b];
      if (entry === 0) continue;
      const slot = entry - 1;
      if (seen[slot]) throw new Error(`slot ${slot} indexed twice`);
      seen[slot] = 1;
      indexed++;
      // Every bucket between home and b must be occupied (linear-probe reachability).
      for (let p = this.hashes[slot] & this.bucketMask; p !== b; p = (p + 1) & this.bucketMask) {
        if (this.buckets[p] === 0) throw new Error(`slot ${slot} unreachable from its home`);
      }
    }
    if (indexed !== this.count) throw new Error(`indexed ${indexed} != count ${this.count}`);
    for (let f = 0; f < this.freeCount; f++) {
      if (seen[this.freeSlots[f]]) throw new Error(`free slot ${this.freeSlots[f]} is indexed`);
    }
  }
}

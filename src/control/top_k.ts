// The `limit` items with the largest keys out of many, in one pass with fixed memory:
// the control plane lists the busiest sessions of a table that may hold a million
// without sorting (or copying) the table.
import { assert } from "../sys/assert.ts";

/**
 * Invariants: 0 <= count <= limit <= capacity; keys[0..count) never increases, and of
 * equal keys the one offered first comes first (a stable order for equal sessions).
 */
export class TopK {
  readonly items: Int32Array;
  readonly keys: Float64Array;
  count = 0;
  private limit = 0;

  constructor(readonly capacity: number) {
    this.items = new Int32Array(capacity);
    this.keys = new Float64Array(capacity);
  }

  /** Starts a selection of at most `limit` items. */
  reset(limit: number): void {
    assert(Number.isInteger(limit) && limit >= 0, "TopK.reset: limit is a count");
    assert(limit <= this.capacity, "TopK.reset: limit above capacity");
    this.limit = limit;
    this.count = 0;
  }

  /** Keeps `item` if `key` is among the `limit` largest offered so far. */
  offer(item: number, key: number): void {
    const count = this.count;
    if (count === this.limit && !(count > 0 && key > this.keys[count - 1])) return;
    // First position whose key is smaller: equal keys stay ahead (stable).
    let low = 0;
    let high = count;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.keys[mid] >= key) low = mid + 1;
      else high = mid;
    }
    const end = count === this.limit ? count - 1 : count;
    this.keys.copyWithin(low + 1, low, end);
    this.items.copyWithin(low + 1, low, end);
    this.keys[low] = key;
    this.items[low] = item;
    if (count < this.limit) this.count = count + 1;
  }
}

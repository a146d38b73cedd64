// The session table and its hash index: limits, LRU order, per-class expiry, and a
// seeded random run checked against a Map oracle with every invariant after each step.
import { describe, expect, test } from "bun:test";
import { HashIndex } from "../../src/flow/hash_index.ts";
import { EndReason, SessionTable } from "../../src/flow/table.ts";

function setKey(key: Uint32Array, n: number): void {
  key.fill(0);
  key[0] = n;
  key[key.length - 1] = n * 7919;
}

/** Deterministic PRNG (mulberry32) so failures reproduce from the printed seed. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("HashIndex", () => {
  test("insert up to capacity exactly, then refuses one past it", () => {
    const index = new HashIndex(3, 16);
    for (let i = 0; i < 16; i++) {
      setKey(index.scratch, i);
      expect(index.insert()).toBeGreaterThanOrEqual(0);
    }
    setKey(index.scratch, 99);
    expect(index.insert()).toBe(-1);
    expect(index.count).toBe(16);
    index.invariants();
  });

  test("seeded random insert/remove/find agrees with a Map oracle", () => {
    const seed = 20261126;
    const random = rng(seed);
    const index = new HashIndex(9, 256);
    const oracle = new Map<number, number>();
    for (let step = 0; step < 20_000; step++) {
      const k = Math.floor(random() * 600);
      setKey(index.scratch, k);
      const found = index.find();
      expect(found).toBe(oracle.get(k) ?? -1);
      if (found >= 0 && random() < 0.5) {
        index.remove(found);
        oracle.delete(k);
      } else if (found < 0 && !index.full) {
        oracle.set(k, index.insert());
      }
      if (step % 500 === 0) index.invariants();
    }
    index.invariants();
    expect(index.count).toBe(oracle.size);
  });
});

describe("SessionTable", () => {
  test("never exceeds capacity: the least recently used session is evicted and reported", () => {
    const table = new SessionTable(4, [1000]);
    const ended: Array<[number, EndReason]> = [];
    table.onEnd = (slot, reason) => ended.push([slot, reason]);
    const slots: number[] = [];
    for (let i = 0; i < 4; i++) {
      setKey(table.key, i);
      slots.push(table.create(i, 0));
    }
    table.touch(slots[0], 10); // session 0 is now the most recent; 1 is the oldest
    setKey(table.key, 4);
    table.create(11, 0);
    expect(table.count).toBe(4);
    expect(ended).toEqual([[slots[1], EndReason.Evicted]]);
    setKey(table.key, 1);
    expect(table.find()).toBe(-1);
    table.invariants();
  });

  test("expires each timeout class on its own clock, within a budget", () => {
    const table = new SessionTable(64, [1000, 100]);
    const ended: EndReason[] = [];
    table.onEnd = (_slot, reason) => ended.push(reason);
    for (let i = 0; i < 10; i++) {
      setKey(table.key, i);
      table.create(0, i % 2); // even: 1000 ms class, odd: 100 ms class
    }
    expect(table.expire(99, 100)).toBe(0);
    expect(table.expire(100, 2)).toBe(2); // budget honoured
    expect(table.expire(100, 100)).toBe(3); // the rest of the 100 ms class
    expect(table.count).toBe(5);
    expect(table.expire(999, 100)).toBe(0);
    expect(table.expire(1000, 100)).toBe(5);
    expect(table.count).toBe(0);
    expect(ended.every((r) => r === EndReason.Idle)).toBe(true);
    table.invariants();
  });

  test("a touched session outlives untouched ones of its class", () => {
    const table = new SessionTable(8, [100]);
    setKey(table.key, 1);
    const a = table.create(0, 0);
    setKey(table.key, 2);
    table.create(0, 0);
    table.touch(a, 90);
    expect(table.expire(150, 10)).toBe(1);
    setKey(table.key, 1);
    expect(table.find()).toBe(a);
    table.invariants();
  });

  test("seeded random workload keeps every invariant", () => {
    const random = rng(7);
    const table = new SessionTable(128, [50, 500, 5000]);
    let now = 0;
    for (let step = 0; step < 20_000; step++) {
      now += random() * 3;
      setKey(table.key, Math.floor(random() * 400));
      const s = table.find();
      if (s >= 0) table.touch(s, now);
      else table.create(now, Math.floor(random() * 3));
      if (step % 97 === 0) table.expire(now, 16);
      if (step % 1000 === 0) table.invariants();
      expect(table.count).toBeLessThanOrEqual(128);
    }
    table.invariants();
  });
});

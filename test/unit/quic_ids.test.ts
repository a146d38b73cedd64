// QUIC connection IDs -> sessions (src/flow/quic_ids.ts): what is learned from server
// long headers, what a client datagram from a new endpoint is matched by, and what is
// never read or believed (Version Negotiation, impossible lengths, truncated headers).
import { describe, expect, test } from "bun:test";
import { HashIndex } from "../../src/flow/hash_index.ts";
import { QuicConnectionIds } from "../../src/flow/quic_ids.ts";

const VERSION_1 = [0, 0, 0, 1];

/** A server long header (Handshake type) with the given IDs, then some payload. */
function serverLong(dcid: number[], scid: number[], version = VERSION_1): Uint8Array {
  return Uint8Array.from([0xe0, ...version, dcid.length, ...dcid, scid.length, ...scid, 1, 2, 3]);
}

/** A client short header: flags, DCID, then payload. */
function clientShort(dcid: number[], flags = 0x41): Uint8Array {
  return Uint8Array.from([flags, ...dcid, 9, 9, 9, 9]);
}

const cid = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (seed + i * 7) & 0xff);

describe("QUIC connection IDs", () => {
  test("a server SCID names the session; a short header with it finds the session", () => {
    const ids = new QuicConnectionIds(8);
    const scid = cid(8, 1);
    const p = serverLong(cid(4, 9), scid);
    expect(ids.learn(3, p, 0, p.length)).toBe(true);
    expect(ids.learn(3, p, 0, p.length)).toBe(false); // already known
    const c = clientShort(scid);
    expect(ids.sessionOfClientPacket(c, 0, c.length)).toBe(3);
    // Greased fixed bit (RFC 9287): still a short header.
    const greased = clientShort(scid, 0x01);
    expect(ids.sessionOfClientPacket(greased, 0, greased.length)).toBe(3);
    expect(ids.count).toBe(1);
  });

  test("a client long header is matched by its explicit DCID", () => {
    const ids = new QuicConnectionIds(8);
    const scid = cid(20, 50);
    const p = serverLong([], scid);
    ids.learn(1, p, 0, p.length);
    const c = serverLong(scid, cid(8, 3)); // same layout from the client side
    expect(ids.sessionOfClientPacket(c, 0, c.length)).toBe(1);
  });

  test("several ID lengths at once; offsets inside a larger buffer", () => {
    const ids = new QuicConnectionIds(8);
    const buf = new Uint8Array(256);
    const a = serverLong([], cid(8, 1));
    const b = serverLong([], cid(16, 2));
    buf.set(a, 10);
    buf.set(b, 100);
    ids.learn(0, buf, 10, a.length);
    ids.learn(1, buf, 100, b.length);
    const ca = clientShort(cid(8, 1));
    const cb = clientShort(cid(16, 2));
    expect(ids.sessionOfClientPacket(ca, 0, ca.length)).toBe(0);
    expect(ids.sessionOfClientPacket(cb, 0, cb.length)).toBe(1);
  });

  test("one ID per session: a new SCID replaces the old; forget() drops it", () => {
    const ids = new QuicConnectionIds(4);
    const first = serverLong([], cid(8, 1));
    const second = serverLong([], cid(8, 77));
    ids.learn(2, first, 0, first.length);
    ids.learn(2, second, 0, second.length);
    expect(ids.count).toBe(1);
    const old = clientShort(cid(8, 1));
    const now = clientShort(cid(8, 77));
    expect(ids.sessionOfClientPacket(old, 0, old.length)).toBe(-1);
    expect(ids.sessionOfClientPacket(now, 0, now.length)).toBe(2);
    ids.forget(2);
    expect(ids.count).toBe(0);
    expect(ids.sessionOfClientPacket(now, 0, now.length)).toBe(-1);
    ids.forget(2); // twice: nothing to do
  });

  test("another session claiming the same ID takes it (the newest claim wins)", () => {
    const ids = new QuicConnectionIds(4);
    const p = serverLong([], cid(8, 5));
    ids.learn(0, p, 0, p.length);
    ids.learn(1, p, 0, p.length);
    const c = clientShort(cid(8, 5));
    expect(ids.sessionOfClientPacket(c, 0, c.length)).toBe(1);
    expect(ids.count).toBe(1);
    ids.forget(0); // session 0 no longer holds it: nothing removed
    expect(ids.sessionOfClientPacket(c, 0, c.length)).toBe(1);
  });

  test("never believed: Version Negotiation, short headers, empty or oversized IDs", () => {
    const ids = new QuicConnectionIds(4);
    const vn = serverLong(cid(8, 1), cid(8, 2), [0, 0, 0, 0]);
    expect(ids.learn(0, vn, 0, vn.length)).toBe(false);
    const short = clientShort(cid(8, 2));
    expect(ids.learn(0, short, 0, short.length)).toBe(false);
    const empty = serverLong(cid(4, 1), []);
    expect(ids.learn(0, empty, 0, empty.length)).toBe(false);
    const huge = Uint8Array.from([0xe0, ...VERSION_1, 0, 21, ...cid(21, 1)]);
    expect(ids.learn(0, huge, 0, huge.length)).toBe(false);
    const badDcid = Uint8Array.from([0xe0, ...VERSION_1, 40, ...cid(40, 1)]);
    expect(ids.learn(0, badDcid, 0, badDcid.length)).toBe(false);
    expect(ids.count).toBe(0);
  });

  test("never reads past the datagram: every truncation of valid headers", () => {
    const ids = new QuicConnectionIds(4);
    const p = serverLong(cid(8, 1), cid(20, 2));
    // The buffer holds more bytes after `length`: they must not be used.
    for (let length = 0; length < 6 + 8 + 1 + 20; length++) {
      expect(ids.learn(0, p, 0, length)).toBe(false);
    }
    expect(ids.learn(0, p, 0, 6 + 8 + 1 + 20)).toBe(true);
    const c = clientShort(cid(20, 2));
    for (let length = 0; length <= 20; length++) {
      expect(ids.sessionOfClientPacket(c, 0, length)).toBe(-1);
    }
    expect(ids.sessionOfClientPacket(c, 0, 21)).toBe(0);
    const long = Uint8Array.from([0xc0, ...VERSION_1, 20, ...cid(20, 2)]);
    for (let length = 0; length < long.length; length++) {
      expect(ids.sessionOfClientPacket(long, 0, length)).toBe(-1);
    }
    expect(ids.sessionOfClientPacket(long, 0, long.length)).toBe(0);
  });
});

describe("HashIndex.rekey", () => {
  test("moves an entry to a new key in place, against a Map oracle", () => {
    const index = new HashIndex(2, 64);
    const oracle = new Map<string, number>();
    const k = (a: number, b: number) => {
      index.scratch[0] = a;
      index.scratch[1] = b;
      return `${a}/${b}`;
    };
    let seed = 12345;
    const rand = (n: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    for (let round = 0; round < 5000; round++) {
      const a = rand(40);
      const b = rand(3);
      const name = k(a, b);
      const op = rand(3);
      if (op === 0 && !oracle.has(name) && !index.full) {
        oracle.set(name, index.insert());
      } else if (op === 1 && oracle.has(name)) {
        index.remove(oracle.get(name)!);
        oracle.delete(name);
      } else if (op === 2 && oracle.has(name)) {
        const slot = oracle.get(name)!;
        const target = k(rand(40), 7 + rand(3));
        if (oracle.has(target)) continue;
        index.rekey(slot);
        oracle.delete(name);
        oracle.set(target, slot);
      }
    }
    index.invariants();
    expect(index.count).toBe(oracle.size);
    for (const [name, slot] of oracle) {
      const [a, b] = name.split("/").map(Number);
      k(a, b);
      expect(index.find()).toBe(slot);
    }
  });
});

// The io_uring data plane's C ring (ffi/uring.c) on real loopback sockets: datagrams
// with their original destination arrive in rl_recv_batch's layout, a multishot receive
// that ran out of buffers is re-armed and loses nothing, send results come back with
// their completions (errors too), and a cancelled socket's port is free again.
import { describe, expect, test } from "bun:test";
import { ptr } from "bun:ffi";
import { mapIPv4 } from "../../src/sys/addr.ts";
import { E } from "../../src/sys/errno.ts";
import { loadFfi } from "../../src/sys/ffi.ts";
import {
  META,
  META_BYTES,
  META_FLAG_HAS_ORIGDST,
  META_FLAG_TRUNCATED,
  SEND,
  SEND_BYTES,
  SEND_WORDS,
  SOCK,
} from "../../src/sys/layout.ts";
import { URING_STATS } from "../../src/udp/uring_plane.ts";
import { skipped } from "../lab/skip_policy.ts";

const lib = loadFfi();
const loopback4 = mapIPv4(new Uint8Array([127, 0, 0, 1]));
const SLOT_BYTES = 64;
const WAIT_MS = 200;
/** Waits at most this many times for something already sent on loopback. */
const WAITS_MAX = 20;

const probe = lib.rl_uring_probe();
const unavailable = probe === 0 ? null : `io_uring unavailable here (${probe})`;

class Ring {
  readonly handle: number;
  readonly tokens = new Uint32Array(new ArrayBuffer(256 * 4));
  readonly completions: Int32Array;
  readonly slab = new Uint8Array(new ArrayBuffer(SLOT_BYTES * 256));
  readonly meta = new Uint8Array(new ArrayBuffer(META_BYTES * 256));
  readonly meta16 = new Uint16Array(this.meta.buffer);
  readonly meta32 = new Uint32Array(this.meta.buffer);
  /** Send results by slot, from every wait so far. */
  readonly results = new Map<number, number>();

  constructor(buffers: number, sendSlots = 16) {
    this.completions = new Int32Array(new ArrayBuffer((1 + 2 * sendSlots) * 4));
    this.handle = lib.rl_uring_open(64, 8, buffers, SLOT_BYTES, sendSlots);
    expect(this.handle).toBeGreaterThanOrEqual(0);
  }

  wait(timeoutMs = WAIT_MS): number[] {
    const n = lib.rl_uring_wait(
      this.handle,
      timeoutMs,
      ptr(this.tokens),
      256,
      ptr(this.completions),
    );
    expect(n).toBeGreaterThanOrEqual(0);
    const c = this.completions;
    for (let k = 0; k < c[0]; k++) this.results.set(c[1 + 2 * k], c[2 + 2 * k]);
    return Array.from(this.tokens.subarray(0, n));
  }

  recv(token: number, count = 256): number {
    return lib.rl_uring_recv(this.handle, token, ptr(this.slab), SLOT_BYTES, count, ptr(this.meta));
  }

  stat(which: number): number {
    const out = new Float64Array(new ArrayBuffer(URING_STATS.count * 8));
    expect(lib.rl_uring_stats(this.handle, ptr(out))).toBe(URING_STATS.count);
    return out[which];
  }

  close(): void {
    expect(lib.rl_uring_close(this.handle)).toBe(0);
  }
}

/** Send entries from `fd` to 127.0.0.1:port, payloads at slab offset 0 (`length` bytes). */
function entries(fd: number, port: number, lengths: number[]): Uint8Array {
  const sends = new Uint8Array(new ArrayBuffer(SEND_BYTES * lengths.length));
  const s16 = new Uint16Array(sends.buffer);
  const sI32 = new Int32Array(sends.buffer);
  lengths.forEach((length, i) => {
    sends.set(loopback4, i * SEND_BYTES);
    s16[(i * SEND_BYTES) / 2 + SEND.targetPortHalf] = port;
    sI32[i * SEND_WORDS + SEND.fdWord] = fd;
    sI32[i * SEND_WORDS + SEND.lengthWord] = length;
  });
  return sends;
}

function udpSocket(flags = 0, port = 0): number {
  const fd = lib.rl_socket(flags, loopback4, port, 0, 0, 0);
  expect(fd).toBeGreaterThanOrEqual(0);
  return fd;
}

function portOf(fd: number): number {
  return lib.rl_local_port(fd, new Uint8Array(16));
}

/** `count` datagrams of 8 bytes (byte 0: their index) from sender to port, at once. */
function sendNow(sender: number, port: number, count: number): void {
  for (let i = 0; i < count; i++) {
    const slab = new Uint8Array(new ArrayBuffer(8)).fill(i);
    const sends = entries(sender, port, [8]);
    expect(lib.rl_send_batch(ptr(slab), 8, ptr(sends), 1)).toBe(1);
  }
}

describe("io_uring ring (ffi/uring.c)", () => {
  test("a datagram arrives with its original destination, in rl_recv_batch's layout", () => {
    if (skipped(unavailable, "io_uring ring")) return;
    const ring = new Ring(8);
    const receiver = udpSocket(SOCK.recvOrigDst);
    const sender = udpSocket();
    try {
      expect(lib.rl_uring_add(ring.handle, receiver, 3)).toBe(0);
      expect(lib.rl_uring_add(ring.handle, receiver, 3)).toBe(-17); // EEXIST
      const port = portOf(receiver);
      // Wider than a slot: stored cut to the slot, its wire length kept.
      const slab = new Uint8Array(new ArrayBuffer(100)).fill(9);
      expect(lib.rl_send_batch(ptr(slab), 100, ptr(entries(sender, port, [5, 100])), 2)).toBe(2);
      let got = 0;
      for (let i = 0; i < WAITS_MAX && got < 2; i++) {
        if (ring.wait().includes(3)) got += ring.recv(3, 2 - got);
      }
      expect(got).toBe(2);
      const m16 = ring.meta16;
      const m32 = ring.meta32;
      expect(m16[META.flagsHalf] & META_FLAG_HAS_ORIGDST).toBe(META_FLAG_HAS_ORIGDST);
      expect(m16[META.targetPortHalf]).toBe(port);
      expect(Array.from(ring.meta.subarray(16, 32))).toEqual(Array.from(loopback4));
      expect(m16[META.sourcePortHalf]).toBe(portOf(sender));
      expect(m32[META.lengthWord]).toBe(5);
      expect(Array.from(ring.slab.subarray(0, 5))).toEqual([9, 9, 9, 9, 9]);
      const second = META_BYTES / 2;
      expect(m16[second + META.flagsHalf] & META_FLAG_TRUNCATED).toBe(META_FLAG_TRUNCATED);
      expect(m32[META_BYTES / 4 + META.lengthWord]).toBe(SLOT_BYTES);
      expect(m32[META_BYTES / 4 + META.lengthWireWord]).toBe(100);
      expect(ring.recv(3)).toBe(0); // drained
      expect(ring.recv(4)).toBe(0); // never registered
    } finally {
      lib.rl_close(sender);
      lib.rl_close(receiver);
      ring.close();
    }
  });

  test("an empty buffer ring ends the multishot receive; it is re-armed, nothing lost", () => {
    if (skipped(unavailable, "io_uring ring")) return;
    const ring = new Ring(8); // 8 buffers for 40 datagrams
    const receiver = udpSocket();
    const sender = udpSocket();
    try {
      expect(lib.rl_uring_add(ring.handle, receiver, 0)).toBe(0);
      const total = 40;
      sendNow(sender, portOf(receiver), total);
      const seen: number[] = [];
      // Bounded: each wait hands over up to 8 datagrams, then buffers go back.
      for (let i = 0; i < WAITS_MAX * 2 && seen.length < total; i++) {
        if (!ring.wait().includes(0)) continue;
        const n = ring.recv(0);
        expect(n).toBeGreaterThan(0);
        expect(n).toBeLessThanOrEqual(8);
        for (let k = 0; k < n; k++) seen.push(ring.slab[k * SLOT_BYTES]);
      }
      expect(seen).toEqual(Array.from({ length: total }, (_, i) => i)); // in order, all
      expect(ring.stat(URING_STATS.noBuffers)).toBeGreaterThan(0);
    } finally {
      lib.rl_close(sender);
      lib.rl_close(receiver);
      ring.close();
    }
  });

  test("sends complete with their results: bytes, and errors from the kernel", () => {
    if (skipped(unavailable, "io_uring ring")) return;
    const ring = new Ring(8, 4);
    const receiver = udpSocket();
    const sender = udpSocket();
    try {
      const port = portOf(receiver);
      const sends = entries(sender, port, [8, 8, 8, 8, 8, 8]);
      const sI32 = new Int32Array(sends.buffer);
      const s32 = new Uint32Array(sends.buffer);
      // 1: to 255.255.255.255 without SO_BROADCAST: EACCES, in its completion.
      sends.set(mapIPv4(new Uint8Array([255, 255, 255, 255])), SEND_BYTES);
      sI32[2 * SEND_WORDS + SEND.fdWord] = -1; // 2: refused at once
      s32[3 * SEND_WORDS + SEND.offsetWord] = 60; // 3: past the 64-byte slab
      const slots = new Int32Array(new ArrayBuffer(6 * 4));
      const slab = new Uint8Array(new ArrayBuffer(64));
      const queued = lib.rl_uring_send_batch(ring.handle, ptr(slab), 64, ptr(sends), 6, ptr(slots));
      // Four send slots: entries 0, 1, 4, 5 wait in the ring... all four slots taken.
      expect(queued).toBe(4);
      expect(slots[2]).toBe(-1);
      expect(sI32[2 * SEND_WORDS + SEND.resultWord]).toBe(-E.EBADF);
      expect(slots[3]).toBe(-1);
      expect(sI32[3 * SEND_WORDS + SEND.resultWord]).toBe(-E.EFAULT);
      // A fifth datagram finds no slot free: sent at once, its result there already.
      const more = entries(sender, port, [8]);
      const moreSlot = new Int32Array(new ArrayBuffer(4));
      expect(lib.rl_uring_send_batch(ring.handle, ptr(slab), 64, ptr(more), 1, ptr(moreSlot))).toBe(
        0,
      );
      expect(moreSlot[0]).toBe(-1);
      expect(new Int32Array(more.buffer)[SEND.resultWord]).toBe(8);
      expect(ring.stat(URING_STATS.sendsDirect)).toBe(1);
      for (let i = 0; i < WAITS_MAX && ring.results.size < 4; i++) ring.wait(0);
      expect(ring.results.get(slots[0])).toBe(8);
      expect(ring.results.get(slots[1])).toBe(-E.EACCES);
      expect(ring.results.get(slots[4])).toBe(8);
      expect(ring.results.get(slots[5])).toBe(8);
      expect(ring.stat(URING_STATS.sendsQueued)).toBe(4);
    } finally {
      lib.rl_close(sender);
      lib.rl_close(receiver);
      ring.close();
    }
  });

  test("a removed socket lets go: no more datagrams, and its port can be bound again", () => {
    if (skipped(unavailable, "io_uring ring")) return;
    const ring = new Ring(8);
    const receiver = udpSocket();
    const sender = udpSocket();
    try {
      const port = portOf(receiver);
      expect(lib.rl_uring_add(ring.handle, receiver, 1)).toBe(0);
      sendNow(sender, port, 2);
      let ready = false;
      for (let i = 0; i < WAITS_MAX && !ready; i++) ready = ring.wait().includes(1);
      expect(ready).toBe(true);
      expect(lib.rl_uring_del(ring.handle, 1)).toBe(0); // its two datagrams' buffers too
      expect(lib.rl_uring_del(ring.handle, 1)).toBe(-E.ENOENT);
      expect(ring.recv(1)).toBe(0);
      lib.rl_close(receiver);
      const again = lib.rl_socket(0, loopback4, port, 0, 0, 0);
      expect(again).toBeGreaterThanOrEqual(0);
      lib.rl_close(again);
      // The token is free for another socket, and the 8 buffers are all back (the
      // receive that takes the 8th may end on an empty ring: re-armed, nothing lost).
      const next = udpSocket();
      expect(lib.rl_uring_add(ring.handle, next, 1)).toBe(0);
      sendNow(sender, portOf(next), 8);
      let got = 0;
      for (let i = 0; i < WAITS_MAX && got < 8; i++)
        if (ring.wait().includes(1)) got += ring.recv(1);
      expect(got).toBe(8);
      lib.rl_uring_del(ring.handle, 1);
      lib.rl_close(next);
    } finally {
      lib.rl_close(sender);
      ring.close();
    }
  });

  test("bad arguments are refused", () => {
    expect(lib.rl_uring_open(64, 8, 12, SLOT_BYTES, 4)).toBe(-E.EINVAL); // not a power of two
    expect(lib.rl_uring_open(64, 0, 8, SLOT_BYTES, 4)).toBe(-E.EINVAL);
    expect(lib.rl_uring_wait(-1, 0, null, 1, null)).toBe(-E.EBADF);
    expect(lib.rl_uring_close(12345)).toBe(-E.EBADF);
  });
});

// UDP GSO (UDP_SEGMENT) in rl_send_batch and GRO (UDP_GRO) in rl_recv_batch_gro, with real
// sockets on loopback: a run of one flow leaves as one message and arrives as its
// datagrams, in order, with their sizes; a GRO socket gets the coalesced buffers and
// rl_recv_batch_gro splits them back exactly.
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { ptr } from "bun:ffi";
import { loadFfi } from "../../src/sys/ffi.ts";
import {
  META,
  META_BYTES,
  META_FLAG_TRUNCATED,
  SEND,
  SEND_BYTES,
  SEND_WORDS,
} from "../../src/sys/layout.ts";
import { mapIPv4 } from "../../src/sys/addr.ts";
import { loadTestHooks } from "../../src/sys/test_hooks.ts";
import { skipped } from "../lab/skip_policy.ts";
import { waitFor } from "../lab/wait_for.ts";

const lib = loadFfi();
const loopback4 = mapIPv4(new Uint8Array([127, 0, 0, 1]));
const SLOT_BYTES = 2048;
const probe = lib.rl_udp_offload_probe();

/** Offload counters since the last read: [gsoMessages, gsoDatagrams, fallbacks, groBuffers,
 * groDatagrams]. */
function stats(): number[] {
  const out = new Float64Array(5);
  expect(lib.rl_udp_offload_stats(ptr(out))).toBe(5);
  return [...out];
}

/** Sends datagrams of `sizes` from sender to port (datagram i filled with byte i & 255,
 * its index in the first two bytes); returns rl_send_batch's count and each result. */
function sendRun(sender: number, port: number | number[], sizes: number[]): [number, number[]] {
  const slab = new Uint8Array(new ArrayBuffer(SLOT_BYTES * sizes.length));
  const sends = new Uint8Array(new ArrayBuffer(SEND_BYTES * sizes.length));
  const s32 = new Uint32Array(sends.buffer);
  const s16 = new Uint16Array(sends.buffer);
  const sI32 = new Int32Array(sends.buffer);
  sizes.forEach((size, i) => {
    const at = i * SLOT_BYTES;
    slab.fill(i & 255, at, at + size);
    if (size >= 2) {
      slab[at] = i >> 8;
      slab[at + 1] = i & 255;
    }
    sends.set(loopback4, i * SEND_BYTES);
    s16[(i * SEND_BYTES) / 2 + SEND.targetPortHalf] = typeof port === "number" ? port : port[i]!;
    sI32[i * SEND_WORDS + SEND.fdWord] = sender;
    s32[i * SEND_WORDS + SEND.offsetWord] = at;
    s32[i * SEND_WORDS + SEND.lengthWord] = size;
  });
  const sent = lib.rl_send_batch(ptr(slab), slab.byteLength, ptr(sends), sizes.length);
  return [sent, sizes.map((_, i) => sI32[i * SEND_WORDS + SEND.resultWord] ?? 0)];
}

interface Received {
  sizes: number[];
  /** Index found in each datagram's first two bytes (-1 when shorter, or filled wrong). */
  indexes: number[];
}

/** Receives until `expected` datagrams arrived (GRO: through rl_recv_batch_gro). */
async function receive(fd: number, expected: number, gro: boolean): Promise<Received> {
  const count = 256;
  const slab = new Uint8Array(new ArrayBuffer(SLOT_BYTES * count));
  const meta = new Uint8Array(new ArrayBuffer(META_BYTES * count));
  const m32 = new Uint32Array(meta.buffer);
  const got: Received = { sizes: [], indexes: [] };
  await waitFor(
    () => {
      const n = gro
        ? lib.rl_recv_batch_gro(fd, ptr(slab), SLOT_BYTES, count, ptr(meta))
        : lib.rl_recv_batch(fd, ptr(slab), SLOT_BYTES, count, ptr(meta));
      expect(n).toBeGreaterThanOrEqual(0);
      for (let i = 0; i < n; i++) {
        const length = m32[(i * META_BYTES) / 4 + META.lengthWord] ?? 0;
        got.sizes.push(length);
        const at = i * SLOT_BYTES;
        const index = length >= 2 ? ((slab[at] ?? 0) << 8) | (slab[at + 1] ?? 0) : -1;
        const fill = index & 255;
        const intact = slab.subarray(at + 2, at + length).every((b) => b === fill);
        got.indexes.push(intact ? index : -1);
      }
      return got.sizes.length;
    },
    (n) => n >= expected,
    { what: `${expected} datagrams`, timeoutMs: 10_000, intervalMs: 5 },
  );
  return got;
}

// No UDP_SEGMENT here: skipped with the reason on a laptop, a failure in CI (one policy).
const unavailable = (probe & 1) !== 0 ? null : `UDP_SEGMENT unavailable here (probe ${probe})`;

describe("UDP GSO and GRO on loopback", () => {
  let sender = -1;
  let receiver = -1;
  let port = 0;
  beforeEach(() => {
    sender = lib.rl_socket(0, loopback4, 0, 0, 0, 8 << 20);
    receiver = lib.rl_socket(0, loopback4, 0, 0, 8 << 20, 0);
    expect(sender).toBeGreaterThan(2);
    expect(receiver).toBeGreaterThan(2);
    port = lib.rl_local_port(receiver, new Uint8Array(16));
    lib.rl_udp_gso_enable(1);
    stats(); // from zero
  });
  afterEach(() => {
    lib.rl_udp_gso_enable(0);
    lib.rl_close(sender);
    lib.rl_close(receiver);
  });

  test("a run of equal sizes is one GSO message and arrives as N datagrams in order", async () => {
    if (skipped(unavailable, "UDP GSO")) return;
    const sizes = new Array<number>(20).fill(1200);
    const [sent, results] = sendRun(sender, port, sizes);
    expect(sent).toBe(20);
    expect(results).toEqual(sizes);
    expect(stats().slice(0, 3)).toEqual([1, 20, 0]);
    const got = await receive(receiver, 20, false);
    expect(got.sizes).toEqual(sizes);
    expect(got.indexes).toEqual(sizes.map((_, i) => i));
  });

  test("a shorter last datagram ends the run and keeps its size", async () => {
    if (skipped(unavailable, "UDP GSO")) return;
    const sizes = [1000, 1000, 1000, 1000, 333];
    expect(sendRun(sender, port, sizes)[0]).toBe(5);
    expect(stats().slice(0, 3)).toEqual([1, 5, 0]);
    const got = await receive(receiver, 5, false);
    expect(got.sizes).toEqual(sizes);
    expect(got.indexes).toEqual([0, 1, 2, 3, 4]);
  });

  test("mixed sizes split into runs; a larger datagram starts a new one", async () => {
    if (skipped(unavailable, "UDP GSO")) return;
    // Runs: [500 500 200] [800 800 100] [100] [900 900 900]: a shorter one ends a run
    const sizes = [500, 500, 200, 800, 800, 100, 100, 900, 900, 900];
    expect(sendRun(sender, port, sizes)[0]).toBe(10);
    expect(stats().slice(0, 3)).toEqual([3, 9, 0]);
    const got = await receive(receiver, 10, false);
    expect(got.sizes).toEqual(sizes);
    expect(got.indexes).toEqual(sizes.map((_, i) => i));
  });

  test("runs are per destination: A A B B A A is three messages, each receiver in order", async () => {
    if (skipped(unavailable, "UDP GSO")) return;
    const other = lib.rl_socket(0, loopback4, 0, 0, 8 << 20, 0);
    try {
      const otherPort = lib.rl_local_port(other, new Uint8Array(16));
      const ports = [port, port, otherPort, otherPort, port, port];
      expect(sendRun(sender, ports, new Array<number>(6).fill(400))[0]).toBe(6);
      expect(stats().slice(0, 3)).toEqual([3, 6, 0]);
      expect((await receive(receiver, 4, false)).indexes).toEqual([0, 1, 4, 5]);
      expect((await receive(other, 2, false)).indexes).toEqual([2, 3]);
    } finally {
      lib.rl_close(other);
    }
  });

  test("more than 64 datagrams: runs of at most 64, all in order", async () => {
    if (skipped(unavailable, "UDP GSO")) return;
    const sizes = new Array<number>(150).fill(100);
    expect(sendRun(sender, port, sizes)[0]).toBe(150);
    expect(stats().slice(0, 3)).toEqual([3, 150, 0]); // 64 + 64 + 22
    const got = await receive(receiver, 150, false);
    expect(got.sizes).toEqual(sizes);
    expect(got.indexes).toEqual(sizes.map((_, i) => i));
  });

  test("a run stops before 65507 bytes", async () => {
    if (skipped(unavailable, "UDP GSO")) return;
    const sizes = new Array<number>(40).fill(2000); // 32 x 2000 = 64000 fit, 33 do not
    expect(sendRun(sender, port, sizes)[0]).toBe(40);
    expect(stats().slice(0, 2)).toEqual([2, 40]);
    const got = await receive(receiver, 40, false);
    expect(got.sizes).toEqual(sizes);
    expect(got.indexes).toEqual(sizes.map((_, i) => i));
  });

  test("GSO disabled: one message each, no GSO counted", async () => {
    if (skipped(unavailable, "UDP GSO")) return;
    lib.rl_udp_gso_enable(0);
    const sizes = new Array<number>(10).fill(700);
    expect(sendRun(sender, port, sizes)[0]).toBe(10);
    expect(stats().slice(0, 3)).toEqual([0, 0, 0]);
    const got = await receive(receiver, 10, false);
    expect(got.sizes).toEqual(sizes);
    expect(got.indexes).toEqual(sizes.map((_, i) => i));
  });

  test("a refused GSO send falls back to one message each, once per socket", async () => {
    if (skipped(unavailable, "UDP GSO")) return;
    expect(loadTestHooks().rl_test_udp_no_check(sender)).toBe(0);
    const sizes = [...new Array<number>(5).fill(300), 9, 9, 9];
    const [sent, results] = sendRun(sender, port, sizes);
    expect(sent).toBe(8);
    expect(results).toEqual(sizes);
    // Two runs; the first is refused and counted, the second goes singly without a try.
    expect(stats().slice(0, 3)).toEqual([0, 0, 1]);
    expect(sendRun(sender, port, sizes)[0]).toBe(8);
    expect(stats().slice(0, 3)).toEqual([0, 0, 0]); // remembered: not tried again
    const got = await receive(receiver, 16, false);
    expect(got.sizes).toEqual([...sizes, ...sizes]);
    expect(got.indexes).toEqual([...sizes.keys(), ...sizes.keys()]);
  });

  test("GRO: coalesced buffers are split exactly (count, sizes, bytes, order)", async () => {
    if (skipped(unavailable, "UDP GSO")) return;
    if ((probe & 2) === 0) throw new Error("UDP_GRO missing where UDP_SEGMENT works");
    expect(lib.rl_udp_gro(receiver, 1)).toBe(0);
    // Two GSO messages (64 + 36 datagrams, the last shorter) and one lone datagram.
    const sizes = [...new Array<number>(99).fill(1200), 77, 1500];
    expect(sendRun(sender, port, sizes)[0]).toBe(sizes.length);
    const got = await receive(receiver, sizes.length, true);
    expect(got.sizes).toEqual(sizes);
    expect(got.indexes).toEqual(sizes.map((_, i) => i));
    const [, , , groBuffers, groDatagrams] = stats();
    expect(groBuffers).toBe(2); // loopback hands each GSO message over whole
    expect(groDatagrams).toBe(100);
  });

  test("GRO: datagrams larger than a slot come out as truncated records, one each", async () => {
    if (skipped(unavailable, "UDP GSO")) return;
    expect(lib.rl_udp_gro(receiver, 1)).toBe(0);
    expect(sendRun(sender, port, new Array<number>(10).fill(1200))[0]).toBe(10);
    const slotBytes = 1024;
    const span = lib.rl_gro_span_slots(slotBytes);
    const slab = new Uint8Array(new ArrayBuffer(slotBytes * span));
    const meta = new Uint8Array(new ArrayBuffer(META_BYTES * span));
    const m32 = new Uint32Array(meta.buffer);
    const m16 = new Uint16Array(meta.buffer);
    const n = await waitFor(
      () => lib.rl_recv_batch_gro(receiver, ptr(slab), slotBytes, span, ptr(meta)),
      (got) => got !== 0,
      { what: "the coalesced buffer", timeoutMs: 10_000, intervalMs: 5 },
    );
    expect(n).toBe(10);
    for (let i = 0; i < n; i++) {
      const w = (i * META_BYTES) / 4;
      expect(m16[w * 2 + META.flagsHalf]! & META_FLAG_TRUNCATED).toBe(META_FLAG_TRUNCATED);
      expect(m32[w + META.lengthWord]).toBe(slotBytes);
    }
  });

  test("GRO receive: -ENOBUFS when the batch cannot hold one 64-datagram span", () => {
    if (skipped(unavailable, "UDP GSO")) return;
    const span = lib.rl_gro_span_slots(SLOT_BYTES);
    expect(span).toBe(64);
    expect(lib.rl_gro_span_slots(512)).toBe(128); // 64 KiB in 512-byte slots
    const slab = new Uint8Array(SLOT_BYTES * span);
    const meta = new Uint8Array(META_BYTES * span);
    expect(lib.rl_recv_batch_gro(receiver, ptr(slab), SLOT_BYTES, span - 1, ptr(meta))).toBe(
      -105, // ENOBUFS
    );
    expect(lib.rl_recv_batch_gro(receiver, ptr(slab), SLOT_BYTES, span, ptr(meta))).toBe(0);
  });
});

// The C helper through bun:ffi: ABI and layout agreement, batch limits exactly at and
// one past RL_BATCH_COUNT_MAX, and errors as values (-errno, decoded with the step).
import { describe, expect, test } from "bun:test";
import { ptr } from "bun:ffi";
import { loadFfi } from "../../src/sys/ffi.ts";
import {
  ABI_VERSION,
  BATCH_COUNT_MAX,
  LAYOUT_TUPLES_MAX,
  layoutDifferences,
  META,
  META_BYTES,
  META_RECORD,
  RECORDS,
  SEND,
  SEND_BYTES,
  SEND_FLAG_CONNECTED,
  SEND_RECORD,
  SEND_WORDS,
  SOCK,
  TCP_EVENT_RECORD,
} from "../../src/sys/layout.ts";
import { decodeSocketError, describeSocketError, E } from "../../src/sys/errno.ts";
import { mapIPv4, parseAddress } from "../../src/sys/addr.ts";
import { skipped } from "../lab/skip_policy.ts";
import { POLL_STATS } from "../../src/sys/poller.ts";
import { loadTestHooks } from "../../src/sys/test_hooks.ts";
import { waitFor } from "../lab/wait_for.ts";

const lib = loadFfi();
const loopback4 = mapIPv4(new Uint8Array([127, 0, 0, 1]));

/** Sends one 8-byte datagram from sender to receiver's port on loopback. */
function sendOne(sender: number, receiver: number): void {
  const port = lib.rl_local_port(receiver, new Uint8Array(16));
  const sends = new Uint8Array(new ArrayBuffer(SEND_BYTES));
  sends.set(loopback4, 0);
  new Uint16Array(sends.buffer)[SEND.targetPortHalf] = port;
  const s32 = new Int32Array(sends.buffer);
  s32[SEND.fdWord] = sender;
  s32[SEND.lengthWord] = 8;
  const slab = new Uint8Array(new ArrayBuffer(8));
  expect(lib.rl_send_batch(ptr(slab), slab.byteLength, ptr(sends), 1)).toBe(1);
}

describe("C helper", () => {
  test("ABI version and every field of every record agree with src/sys/layout.ts", () => {
    expect(lib.rl_abi_version()).toBe(ABI_VERSION);
    const described = new Int32Array(LAYOUT_TUPLES_MAX * 4);
    const tuples = lib.rl_layout_describe(described, LAYOUT_TUPLES_MAX);
    // Each record once (field 0) plus each of its fields: all of them, not a sample.
    const expected = RECORDS.reduce((n, r) => n + 1 + Object.keys(r.fields).length, 0);
    expect(tuples).toBe(expected);
    expect(lib.rl_layout_describe(described, tuples - 1)).toBe(-E.ENOSPC);
    expect(layoutDifferences(described.subarray(0, tuples * 4))).toEqual([]);
  });

  test("a layout difference is refused with the field it concerns", () => {
    const described = new Int32Array(LAYOUT_TUPLES_MAX * 4);
    const tuples = lib.rl_layout_describe(described, LAYOUT_TUPLES_MAX);
    const find = (record: number, field: number) => {
      for (let t = 0; t < tuples; t++) {
        if (described[t * 4] === record && described[t * 4 + 1] === field) return t * 4;
      }
      throw new Error(`no tuple ${record}.${field}`);
    };
    const at = (edit: (d: Int32Array) => void) => {
      const copy = described.slice(0, tuples * 4);
      edit(copy);
      return layoutDifferences(copy);
    };
    const length = META_RECORD.fields.length;
    expect(at((d) => (d[find(META_RECORD.id, length.id) + 2] = 44))).toEqual([
      "rl_meta.length: C has offset 44 size 4, TypeScript offset 40 size 4",
    ]);
    const result = SEND_RECORD.fields.result;
    expect(at((d) => (d[find(SEND_RECORD.id, result.id) + 3] = 8))).toEqual([
      "rl_send.result: C has offset 48 size 8, TypeScript offset 48 size 4",
    ]);
    expect(at((d) => (d[find(TCP_EVENT_RECORD.id, 0) + 3] = 48))).toEqual([
      "rl_tcp_event: C has 48 bytes, TypeScript 40",
    ]);
    // A field TypeScript does not know, and one C no longer describes.
    const bytesDown = TCP_EVENT_RECORD.fields.bytes_down;
    expect(at((d) => (d[find(TCP_EVENT_RECORD.id, bytesDown.id) + 1] = 99))).toEqual([
      "rl_tcp_event field 99 (offset 24, size 8) is unknown to TypeScript",
      "rl_tcp_event.bytes_down: not described by C",
    ]);
  });

  test("receive batch: 0 when empty, exactly BATCH_COUNT_MAX allowed, one past refused", () => {
    const fd = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    expect(fd).toBeGreaterThan(2);
    try {
      const slab = new Uint8Array(64 * (BATCH_COUNT_MAX + 1));
      const meta = new Uint8Array(META_BYTES * (BATCH_COUNT_MAX + 1));
      expect(lib.rl_recv_batch(fd, ptr(slab), 64, BATCH_COUNT_MAX, ptr(meta))).toBe(0);
      expect(lib.rl_recv_batch(fd, ptr(slab), 64, BATCH_COUNT_MAX + 1, ptr(meta))).toBe(-E.EINVAL);
      expect(lib.rl_recv_batch(fd, ptr(slab), 64, 0, ptr(meta))).toBe(-E.EINVAL);
      expect(lib.rl_recv_errors(fd, 1, ptr(meta))).toBe(0);
      const sends = new Uint8Array(SEND_BYTES);
      expect(lib.rl_send_batch(ptr(slab), slab.byteLength, ptr(sends), BATCH_COUNT_MAX + 1)).toBe(
        -E.EINVAL,
      );
      expect(lib.rl_send_batch(ptr(slab), slab.byteLength, ptr(sends), 0)).toBe(0);
      const addr = new Uint8Array(16);
      expect(lib.rl_local_port(fd, addr)).toBeGreaterThan(0);
      expect([...addr]).toEqual([...loopback4]);
    } finally {
      expect(lib.rl_close(fd)).toBe(0);
    }
    expect(lib.rl_close(fd)).toBe(-E.EBADF);
  });

  test("send batch: entries outside the slab get EFAULT, fd < 0 EBADF; the rest go", () => {
    const receiver = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    const sender = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    const port = lib.rl_local_port(receiver, new Uint8Array(16));
    const slabBytes = 64; // the slab C is told about; the buffer behind it is larger
    const slab = new Uint8Array(new ArrayBuffer(256)).fill(7);
    const cases: [fd: number, offset: number, length: number, result: number][] = [
      [sender, 0, 8, 8], // inside
      [sender, 60, 8, -E.EFAULT], // ends 4 bytes past the slab (still mapped memory)
      [sender, 0xfffffffc, 8, -E.EFAULT], // offset + length wraps to 4 in 32 bits
      [sender, 56, 8, 8], // ends exactly at the slab's end
      [sender, 64, 0, 0], // empty, at the end: inside
      [-1, 0, 8, -E.EBADF],
    ];
    const sends = new Uint8Array(new ArrayBuffer(SEND_BYTES * cases.length));
    const s32 = new Uint32Array(sends.buffer);
    const s16 = new Uint16Array(sends.buffer);
    const sI32 = new Int32Array(sends.buffer);
    cases.forEach(([fd, offset, length], i) => {
      sends.set(loopback4, i * SEND_BYTES);
      s16[(i * SEND_BYTES) / 2 + SEND.targetPortHalf] = port;
      sI32[i * SEND_WORDS + SEND.fdWord] = fd;
      s32[i * SEND_WORDS + SEND.offsetWord] = offset;
      s32[i * SEND_WORDS + SEND.lengthWord] = length;
      sI32[i * SEND_WORDS + SEND.resultWord] = 12345;
    });
    try {
      expect(lib.rl_send_batch(ptr(slab), slabBytes, ptr(sends), cases.length)).toBe(3);
      expect(cases.map((_, i) => sI32[i * SEND_WORDS + SEND.resultWord])).toEqual(
        cases.map((c) => c[3]),
      );
      // Exactly the three in-bounds datagrams arrived (loopback delivers during sendmmsg).
      const meta = new Uint8Array(new ArrayBuffer(META_BYTES * 8));
      const m32 = new Uint32Array(meta.buffer);
      const got = lib.rl_recv_batch(receiver, ptr(new Uint8Array(64 * 8)), 64, 8, ptr(meta));
      expect(got).toBe(3);
      const lengths = [0, 1, 2].map((i) => m32[(i * META_BYTES) / 4 + META.lengthWord]);
      expect(lengths).toEqual([8, 8, 0]);
    } finally {
      lib.rl_close(sender);
      lib.rl_close(receiver);
    }
  });

  test("send batch: interleaved sockets go out one sendmmsg per socket, each in order", () => {
    const receiver = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    const senders = [0, 1, 2].map(() => lib.rl_socket(0, loopback4, 0, 0, 0, 0));
    const port = lib.rl_local_port(receiver, new Uint8Array(16));
    const count = 12;
    const slab = new Uint8Array(new ArrayBuffer(count));
    const sends = new Uint8Array(new ArrayBuffer(SEND_BYTES * count));
    const s32 = new Uint32Array(sends.buffer);
    const s16 = new Uint16Array(sends.buffer);
    const sI32 = new Int32Array(sends.buffer);
    for (let i = 0; i < count; i++) {
      slab[i] = i; // each datagram is one byte: its entry's index
      sends.set(loopback4, i * SEND_BYTES);
      s16[(i * SEND_BYTES) / 2 + SEND.targetPortHalf] = port;
      sI32[i * SEND_WORDS + SEND.fdWord] = senders[i % 3]; // 0 1 2 0 1 2 ...
      s32[i * SEND_WORDS + SEND.offsetWord] = i;
      s32[i * SEND_WORDS + SEND.lengthWord] = 1;
    }
    try {
      expect(lib.rl_send_batch(ptr(slab), slab.byteLength, ptr(sends), count)).toBe(count);
      for (let i = 0; i < count; i++) expect(sI32[i * SEND_WORDS + SEND.resultWord]).toBe(1);
      // Loopback delivers during sendmmsg: socket by socket, each socket's in its order.
      const meta = new Uint8Array(new ArrayBuffer(META_BYTES * count));
      const got = new Uint8Array(64 * count);
      expect(lib.rl_recv_batch(receiver, ptr(got), 64, count, ptr(meta))).toBe(count);
      const order = Array.from({ length: count }, (_, i) => got[i * 64]);
      expect(order).toEqual([0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]);
    } finally {
      for (const fd of senders) lib.rl_close(fd);
      lib.rl_close(receiver);
    }
  });

  test("send batch: a connected entry goes to the socket's peer, without a name", () => {
    const receiver = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    const sender = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    const port = lib.rl_local_port(receiver, new Uint8Array(16));
    expect(lib.rl_udp_connect(sender, loopback4, 0, 0)).toBe(-E.EINVAL);
    expect(lib.rl_udp_connect(sender, loopback4, port, 0)).toBe(0);
    const slab = new Uint8Array(new ArrayBuffer(8)).fill(9);
    const sends = new Uint8Array(new ArrayBuffer(SEND_BYTES));
    const s16 = new Uint16Array(sends.buffer);
    const sI32 = new Int32Array(sends.buffer);
    // The entry's own address and port are left zero: only the connection says where.
    sI32[SEND.fdWord] = sender;
    sI32[SEND.lengthWord] = 8;
    s16[SEND.flagsHalf] = SEND_FLAG_CONNECTED;
    try {
      expect(lib.rl_send_batch(ptr(slab), slab.byteLength, ptr(sends), 1)).toBe(1);
      expect(sI32[SEND.resultWord]).toBe(8);
      const meta = new Uint8Array(new ArrayBuffer(META_BYTES));
      expect(lib.rl_recv_batch(receiver, ptr(new Uint8Array(64)), 64, 1, ptr(meta))).toBe(1);
    } finally {
      lib.rl_close(sender);
      lib.rl_close(receiver);
    }
  });

  test("socket failures come back as values naming the refused step", () => {
    const fd = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    const port = lib.rl_local_port(fd, new Uint8Array(16));
    // Binding the same port again without SO_REUSEADDR: bind() fails with EADDRINUSE.
    const again = lib.rl_socket(0, loopback4, port, 0, 0, 0);
    expect(again).toBeLessThan(0);
    expect(decodeSocketError(again)).toEqual({ step: "bind()", errno: E.EADDRINUSE });
    lib.rl_close(fd);
    // An IPv6 address on an IPv4 socket is refused before any syscall.
    const wrong = lib.rl_socket(0, parseAddress("::1")!, 0, 0, 0, 0);
    expect(decodeSocketError(wrong)).toEqual({ step: "bind()", errno: E.EAFNOSUPPORT });
    expect(decodeSocketError(lib.rl_socket(0, loopback4, 70000, 0, 0, 0)).errno).toBe(E.EINVAL);
    // Flags outside the contract are refused, never ignored: a socket option of
    // listeners (SO_RXQ_OVFL) means nothing to an upstream connection.
    expect(decodeSocketError(lib.rl_socket(0x8000, loopback4, 0, 0, 0, 0))).toEqual({
      step: "socket()",
      errno: E.EINVAL,
    });
    const connect = lib.rl_tcp_connect(loopback4, 9, 0, loopback4, SOCK.rxqOverflow, 0);
    expect(decodeSocketError(connect)).toEqual({ step: "connect()", errno: E.EINVAL });
    expect(describeSocketError({ step: "IP_TRANSPARENT", errno: E.EPERM }, true)).toStartWith(
      "IPV6_TRANSPARENT: EPERM: needs CAP_NET_ADMIN",
    );
  });

  test("transparent socket options are accepted (as root)", () => {
    const unavailable = process.getuid?.() === 0 ? null : "needs root (CAP_NET_ADMIN)";
    if (skipped(unavailable, "IP_TRANSPARENT socket options")) return;
    const flags =
      SOCK.transparent | SOCK.recvOrigDst | SOCK.reuseAddr | SOCK.freeBind | SOCK.recvErr;
    // FREEBIND lets a listener bind an address this host does not have (198.18.0.0/15).
    const fd = lib.rl_socket(
      flags,
      mapIPv4(new Uint8Array([198, 18, 9, 9])),
      0,
      0x1ee7,
      1 << 20,
      1 << 20,
    );
    expect(fd).toBeGreaterThan(2);
    lib.rl_close(fd);
  });

  test("a pointer to a typed array on its own ArrayBuffer survives reading .buffer", () => {
    // JSC keeps small typed arrays in the GC heap and moves them on the first `.buffer`
    // read, so every array whose ptr() we cache is built on an explicit ArrayBuffer.
    const owned = new Uint8Array(new ArrayBuffer(64));
    const before = ptr(owned);
    void owned.buffer;
    expect(ptr(owned)).toBe(before);
  });

  test("a closed poller or engine handle is refused, also once its slot is reused", () => {
    const first = lib.rl_poll_open(16);
    expect(first).toBeGreaterThanOrEqual(0);
    expect(lib.rl_poll_stop(first)).toBe(0);
    const second = lib.rl_poll_open(16); // takes the slot the first one freed
    expect(second).toBeGreaterThanOrEqual(0);
    expect(second).not.toBe(first);
    const fd = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    expect(lib.rl_poll_add(first, fd, 1)).toBe(-E.EBADF);
    expect(lib.rl_poll_stop(first)).toBe(-E.EBADF);
    expect(lib.rl_poll_add(second, fd, 1)).toBe(0);
    expect(lib.rl_poll_stop(second)).toBe(0);
    lib.rl_close(fd);

    const engine = lib.rl_tcp_engine_open(4, 65536, 1000, 0, 0, 0);
    expect(engine).toBeGreaterThanOrEqual(0);
    expect(lib.rl_tcp_engine_close(engine)).toBe(0);
    const again = lib.rl_tcp_engine_open(4, 65536, 1000, 0, 0, 0);
    expect(again).not.toBe(engine);
    expect(lib.rl_tcp_engine_event_fd(engine)).toBe(-E.EBADF);
    expect(lib.rl_tcp_engine_close(engine)).toBe(-E.EBADF);
    expect(lib.rl_tcp_engine_event_fd(again)).toBeGreaterThan(2);
    expect(lib.rl_tcp_engine_close(again)).toBe(0);
    for (const bad of [-1, 0x7fffffff, 15]) expect(lib.rl_poll_stop(bad)).toBe(-E.EBADF);
  });

  test("handle tables are bounded: past the limit EMFILE, and a close frees a slot", () => {
    const open: number[] = [];
    let refused = 0;
    for (let k = 0; k < 64 && refused === 0; k++) {
      const h = lib.rl_poll_open(16);
      if (h < 0) refused = h;
      else open.push(h);
    }
    expect(refused).toBe(-E.EMFILE);
    expect(lib.rl_poll_stop(open.pop()!)).toBe(0);
    const reopened = lib.rl_poll_open(16);
    expect(reopened).toBeGreaterThanOrEqual(0);
    open.push(reopened);
    for (const h of open) expect(lib.rl_poll_stop(h)).toBe(0);
  });

  test("poller counters are 64-bit end to end: one event past 2^32 + 5 reads 2^32 + 6", () => {
    const hooks = loadTestHooks();
    const handle = lib.rl_poll_open(16);
    expect(lib.rl_poll_level_triggered(handle)).toBe(0);
    const receiver = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    const sender = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    const stats = new Float64Array(new ArrayBuffer(POLL_STATS.count * 8));
    try {
      expect(lib.rl_poll_add(handle, receiver, 7)).toBe(0);
      const past = 2 ** 32 + 5;
      expect(hooks.rl_test_poll_stat_set(handle, POLL_STATS.events, past)).toBe(0);
      expect(hooks.rl_test_poll_stat_set(handle, POLL_STATS.wakes, past)).toBe(0);
      expect(hooks.rl_test_poll_stat_set(handle, 3, 0)).toBe(-E.EINVAL);
      expect(hooks.rl_test_poll_stat_set(handle, POLL_STATS.wakes, -1)).toBe(-E.EINVAL);
      sendOne(sender, receiver);
      expect(lib.rl_poll_wait(handle, 5000)).toBe(1); // the datagram is queued: at once
      expect(lib.rl_poll_stats(handle, ptr(stats))).toBe(POLL_STATS.count);
      expect([...stats]).toEqual([past + 1, past + 1, 0]);
    } finally {
      lib.rl_close(sender);
      lib.rl_close(receiver);
      expect(lib.rl_poll_stop(handle)).toBe(0);
    }
    expect(lib.rl_poll_stats(handle, ptr(stats))).toBe(-E.EBADF);
  });

  test("a notice from another thread wakes an inline poller with its ring token and count", () => {
    const handle = lib.rl_poll_open(16);
    expect(lib.rl_poll_level_triggered(handle)).toBe(0);
    const ready = new Uint32Array(new ArrayBuffer(16 * 4));
    try {
      expect(lib.rl_poll_wait(handle, 0)).toBe(0);
      expect(lib.rl_poll_notify(handle)).toBe(0);
      expect(lib.rl_poll_notify(handle)).toBe(0);
      expect(lib.rl_poll_wait(handle, 5000)).toBe(1); // one token for both notices
      expect(lib.rl_poll_take(handle, ptr(ready), 16)).toBe(1);
      expect(ready[0]).toBe(0x3fffffff); // RL_POLL_NOTIFY_RING_TOKEN
      expect(lib.rl_poll_notified(handle)).toBe(2);
      expect(lib.rl_poll_notified(handle)).toBe(0); // taken
      expect(lib.rl_poll_wait(handle, 0)).toBe(0); // the eventfd was read: no repeat
    } finally {
      expect(lib.rl_poll_stop(handle)).toBe(0);
    }
    expect(lib.rl_poll_notify(handle)).toBe(-E.EBADF);
  });

  test("an inline poller runs its timers from its loop; cancelled ones stop", async () => {
    const { Poller } = require("../../src/sys/poller.ts");
    const poller = new Poller(lib, () => {}, { tokensMax: 16, inline: true });
    let ticks = 0;
    let once = 0;
    let cancelled = 0;
    const cancelTick = poller.every(5, () => ticks++);
    poller.after(5, () => once++);
    const cancel = poller.after(5, () => cancelled++);
    cancel();
    cancel(); // twice is harmless
    poller.start();
    try {
      // The loop runs the timers without turning the event loop; it turns it for a
      // notice (as the UDP plane does before each message): announce, then look.
      await waitFor(
        () => {
          expect(Poller.notify(lib, poller.notifyHandle)).toBe(0);
          return { ticks, once };
        },
        (v) => v.ticks >= 3 && v.once === 1,
        { what: "3 ticks and the one-shot timer", timeoutMs: 10_000 },
      );
      cancelTick();
      expect(once).toBe(1);
      expect(cancelled).toBe(0);
    } finally {
      poller.stop();
    }
  });

  test("a wait that did not block and found nothing is not a wake-up; one that may block is", () => {
    const handle = lib.rl_poll_open(16);
    expect(lib.rl_poll_level_triggered(handle)).toBe(0);
    const stats = new Float64Array(new ArrayBuffer(POLL_STATS.count * 8));
    try {
      expect(lib.rl_poll_wait(handle, 0)).toBe(0); // busy polling's spin: not counted
      expect(lib.rl_poll_stats(handle, ptr(stats))).toBe(POLL_STATS.count);
      expect(stats[POLL_STATS.wakes]).toBe(0);
      expect(lib.rl_poll_wait(handle, 1)).toBe(0); // it may have slept: counted
      expect(lib.rl_poll_stats(handle, ptr(stats))).toBe(POLL_STATS.count);
      expect(stats[POLL_STATS.wakes]).toBe(1);
    } finally {
      expect(lib.rl_poll_stop(handle)).toBe(0);
    }
  });

  test("busy polling: within busyPollUs of work the loop's waits do not block, then they do", async () => {
    const { Poller } = require("../../src/sys/poller.ts");
    const receiver = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    const sender = lib.rl_socket(0, loopback4, 0, 0, 0, 0);
    const slab = new Uint8Array(new ArrayBuffer(64 * 4));
    const meta = new Uint8Array(new ArrayBuffer(META_BYTES * 4));
    let received = 0;
    const onToken = () => {
      const n = lib.rl_recv_batch(receiver, ptr(slab), 64, 4, ptr(meta));
      expect(n).toBeGreaterThanOrEqual(0);
      received += n;
    };
    const poller = new Poller(lib, onToken, { tokensMax: 16, inline: true, busyPollUs: 20_000 });
    expect(poller.add(receiver, 3)).toBe(0);
    // Spins seen 100 ms and 200 ms after a datagram was handled: the 20 ms window is over.
    const after: number[] = [];
    const datagramHandled = async (what: string) => {
      await waitFor(
        () => {
          // A notice lets the loop turn the event loop (where this probe runs).
          expect(Poller.notify(lib, poller.notifyHandle)).toBe(0);
          return received;
        },
        (n) => n === 1,
        { what, timeoutMs: 10_000 },
      );
      received = 0;
      after.length = 0;
      poller.after(100, () => after.push(poller.busyPolls));
      poller.after(200, () => after.push(poller.busyPolls));
      await waitFor(
        () => {
          expect(Poller.notify(lib, poller.notifyHandle)).toBe(0);
          return after.length;
        },
        (n) => n === 2,
        { what: `${what}: the two timers`, timeoutMs: 10_000 },
      );
      return [...after];
    };
    poller.start();
    try {
      expect(poller.busyPolls).toBe(0); // nothing yet: the waits block
      sendOne(sender, receiver);
      const [spins, spinsLater] = await datagramHandled("one datagram, busy polling on");
      expect(spins).toBeGreaterThan(0);
      expect(spinsLater).toBe(spins); // the window ended: the waits block again
      poller.setBusyPoll(0); // as a reload does
      sendOne(sender, receiver);
      expect(await datagramHandled("one datagram, busy polling off")).toEqual([spins, spins]);
    } finally {
      poller.stop();
      lib.rl_close(sender);
      lib.rl_close(receiver);
    }
    const threaded = new Poller(lib, () => {}, { tokensMax: 16 });
    try {
      expect(() => threaded.setBusyPoll(10)).toThrow("busy polling needs inline mode");
    } finally {
      threaded.stop();
    }
  });

  test("the epoll poller opens, starts, stops and closes its callback", () => {
    const { Poller } = require("../../src/sys/poller.ts");
    const poller = new Poller(lib, () => {}, { tokensMax: 16 });
    poller.start();
    expect(poller.isRunning).toBe(true);
    poller.stop();
    expect(poller.isRunning).toBe(false);
  });
});

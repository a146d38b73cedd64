// The C splice engine on loopback (no namespaces, no privileges): accept, connect,
// hand-off, and what each ending looks like from both peers and from the event.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Pointer, ptr } from "bun:ffi";
import net from "node:net";
import { parseAddress } from "../../src/sys/addr.ts";
import { E } from "../../src/sys/errno.ts";
import { loadFfi, type RelayLib } from "../../src/sys/ffi.ts";
import { loadTestHooks } from "../../src/sys/test_hooks.ts";
import { META, META_WORDS, SOCK } from "../../src/sys/layout.ts";
import {
  TCP_EVENT,
  TCP_EVENT_BYTES,
  TCP_EVENT_CLOSED,
  TCP_NEVER_CONNECTED,
  TCP_STATS,
  TcpEnd,
} from "../../src/relay/tcp_layout.ts";

const SLOTS = 8;
const PIPE_BYTES = 65536;

interface EndEvent {
  id: number;
  reason: TcpEnd;
  error: number;
  connectMs: number;
  bytesUp: number;
  bytesDown: number;
}

let lib: RelayLib;
let engine = -1;
let listenerFd = -1;
let listenerPort = 0;
const meta = new Uint8Array(new ArrayBuffer(META_WORDS * 4));
let metaPtr: Pointer;
const events = new Uint8Array(new ArrayBuffer(TCP_EVENT_BYTES * SLOTS));
let eventsPtr: Pointer;
const stats = new Float64Array(new ArrayBuffer(TCP_STATS.count * 8));
let statsPtr: Pointer;
const loopback = new Uint8Array(new ArrayBuffer(16));
const anyV4 = new Uint8Array(new ArrayBuffer(16));
let nextId = 0;

/** Reads one end event (bounded wait). */
async function nextEvent(timeoutMs = 3000): Promise<EndEvent> {
  const end = performance.now() + timeoutMs;
  while (performance.now() < end) {
    const n = lib.rl_tcp_engine_events(engine, eventsPtr, 1);
    if (n === 1) {
      const w32 = new Uint32Array(events.buffer);
      const i32 = new Int32Array(events.buffer);
      const h16 = new Uint16Array(events.buffer);
      const f64 = new Float64Array(events.buffer);
      expect(h16[TCP_EVENT.kindHalf]).toBe(TCP_EVENT_CLOSED);
      return {
        id: w32[TCP_EVENT.idWord],
        reason: h16[TCP_EVENT.reasonHalf],
        error: i32[TCP_EVENT.errorWord],
        connectMs: w32[TCP_EVENT.connectWord],
        bytesUp: f64[TCP_EVENT.bytesUpDouble],
        bytesDown: f64[TCP_EVENT.bytesDownDouble],
      };
    }
    await Bun.sleep(5);
  }
  throw new Error("no engine event in time");
}

/** A client connected to the relay listener, and the relay's accepted fd. */
async function acceptClient(): Promise<{ client: net.Socket; fd: number }> {
  const client = net.connect({ host: "127.0.0.1", port: listenerPort, allowHalfOpen: true });
  await new Promise<void>((resolve, reject) =>
    client.once("connect", resolve).once("error", reject),
  );
  const end = performance.now() + 2000;
  for (;;) {
    const fd = lib.rl_tcp_accept(listenerFd, metaPtr);
    if (fd >= 0) {
      const m16 = new Uint16Array(meta.buffer);
      expect(m16[META.targetPortHalf]).toBe(listenerPort); // local address = where it went
      return { client, fd };
    }
    expect(-fd).toBe(E.EAGAIN);
    if (performance.now() > end) throw new Error("accept: nothing");
    await Bun.sleep(2);
  }
}

function connectUpstream(port: number): number {
  const fd = lib.rl_tcp_connect(loopback, port, 0, anyV4, 0, 0);
  expect(fd).toBeGreaterThanOrEqual(0);
  return fd;
}

/** Collects what a node socket receives until it closes. */
function collect(socket: net.Socket) {
  const chunks: Buffer[] = [];
  let error: string | null = null;
  socket.on("data", (d: Buffer) => chunks.push(d));
  socket.on("error", (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  return {
    closed,
    text: () => Buffer.concat(chunks).toString(),
    error: () => error,
  };
}

beforeAll(() => {
  lib = loadFfi();
  metaPtr = ptr(meta);
  eventsPtr = ptr(events);
  statsPtr = ptr(stats);
  loopback.set(parseAddress("127.0.0.1")!);
  anyV4.set(parseAddress("0.0.0.0")!);
  listenerFd = lib.rl_socket(SOCK.stream | SOCK.reuseAddr, loopback, 0, 0, 0, 0);
  expect(listenerFd).toBeGreaterThanOrEqual(0);
  expect(lib.rl_listen(listenerFd, 64)).toBe(0);
  listenerPort = lib.rl_local_port(listenerFd, ptr(new Uint8Array(new ArrayBuffer(16))));
  engine = lib.rl_tcp_engine_open(SLOTS, PIPE_BYTES, 1000, 400);
  expect(engine).toBeGreaterThanOrEqual(0);
});

afterAll(() => {
  if (engine >= 0) expect(lib.rl_tcp_engine_close(engine)).toBe(0);
  if (listenerFd >= 0) lib.rl_close(listenerFd);
});

describe("TCP splice engine", () => {
  test("bytes both ways, client half-close first, then the server's FIN: closed", async () => {
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      let got = 0;
      s.on("data", (d) => {
        got += d.length;
        s.write(d);
      });
      s.on("end", () => s.end(`bye ${got}`)); // the client's FIN arrived; answer, then FIN
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const { client, fd } = await acceptClient();
      const seen = collect(client);
      const id = nextId++ % SLOTS;
      expect(
        lib.rl_tcp_engine_add(
          engine,
          id,
          fd,
          connectUpstream((server.address() as net.AddressInfo).port),
        ),
      ).toBe(0);
      client.write("hello");
      client.end(); // half-close: the answer must still arrive
      await seen.closed;
      expect(seen.text()).toBe("hellobye 5");
      const ev = await nextEvent();
      expect(ev).toMatchObject({ id, reason: TcpEnd.Closed, error: 0, bytesUp: 5, bytesDown: 10 });
      expect(ev.connectMs).not.toBe(TCP_NEVER_CONNECTED);
    } finally {
      server.close();
    }
  });

  test("upstream refuses: the client is reset, the event says refused", async () => {
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r())); // nothing listens there now
    const { client, fd } = await acceptClient();
    const seen = collect(client);
    const id = nextId++ % SLOTS;
    expect(lib.rl_tcp_engine_add(engine, id, fd, connectUpstream(port))).toBe(0);
    await seen.closed;
    expect(seen.error()).toBe("ECONNRESET");
    expect(await nextEvent()).toMatchObject({
      id,
      reason: TcpEnd.ConnectRefused,
      error: 111,
      connectMs: TCP_NEVER_CONNECTED,
    });
  });

  test("server resets: the client is reset too", async () => {
    const server = net.createServer((s) => s.on("data", () => s.resetAndDestroy()));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const { client, fd } = await acceptClient();
      const seen = collect(client);
      const id = nextId++ % SLOTS;
      expect(
        lib.rl_tcp_engine_add(
          engine,
          id,
          fd,
          connectUpstream((server.address() as net.AddressInfo).port),
        ),
      ).toBe(0);
      client.write("x");
      await seen.closed;
      expect(seen.error()).toBe("ECONNRESET");
      expect(await nextEvent()).toMatchObject({ id, reason: TcpEnd.UpstreamReset, bytesUp: 1 });
    } finally {
      server.close();
    }
  });

  test("a reader that never reads: the writer stalls within the bound, idle timeout resets both", async () => {
    let serverSide: net.Socket | null = null;
    const server = net.createServer((s) => {
      serverSide = s;
      s.pause(); // never reads
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const { client, fd } = await acceptClient();
      const seen = collect(client);
      const id = nextId++ % SLOTS;
      expect(
        lib.rl_tcp_engine_add(
          engine,
          id,
          fd,
          connectUpstream((server.address() as net.AddressInfo).port),
        ),
      ).toBe(0);
      const block = Buffer.alloc(1 << 20);
      let queued = 0;
      // Write until the client's own socket pushes back (bounded: 256 MiB at most).
      while (queued < 256 << 20 && client.write(block)) queued += block.length;
      await Bun.sleep(150);
      lib.rl_tcp_engine_stats(engine, statsPtr);
      // Socket buffers (client send, relay receive and send, server receive) plus one
      // 64 KiB pipe: far below what was offered when nothing reads.
      expect(stats[TCP_STATS.pipesInUse]).toBe(2);
      const moved = stats[TCP_STATS.bytesUp];
      await Bun.sleep(150);
      lib.rl_tcp_engine_stats(engine, statsPtr);
      expect(stats[TCP_STATS.bytesUp]).toBe(moved); // stalled, not buffering on
      await seen.closed; // idle timeout (400 ms): no byte moved either way
      expect(seen.error()).toBe("ECONNRESET");
      expect(await nextEvent()).toMatchObject({ id, reason: TcpEnd.IdleTimeout });
      expect(serverSide).not.toBeNull();
    } finally {
      server.close();
    }
  });

  test("abort_all resets open connections; stats return to zero", async () => {
    const server = net.createServer(() => {});
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const { client, fd } = await acceptClient();
      const seen = collect(client);
      const id = nextId++ % SLOTS;
      expect(
        lib.rl_tcp_engine_add(
          engine,
          id,
          fd,
          connectUpstream((server.address() as net.AddressInfo).port),
        ),
      ).toBe(0);
      await Bun.sleep(50);
      expect(lib.rl_tcp_engine_abort_all(engine)).toBe(0);
      await seen.closed;
      expect(seen.error()).toBe("ECONNRESET");
      expect(await nextEvent()).toMatchObject({ id, reason: TcpEnd.Aborted });
      lib.rl_tcp_engine_stats(engine, statsPtr);
      expect(stats[TCP_STATS.open]).toBe(0);
      expect(stats[TCP_STATS.pipesInUse]).toBe(0);
      expect(stats[TCP_STATS.eventsLost]).toBe(0);
    } finally {
      server.close();
    }
  });

  test("engine counters are 64-bit end to end (set past 2^32 by a test hook)", () => {
    const hooks = loadTestHooks();
    const other = lib.rl_tcp_engine_open(2, PIPE_BYTES, 1000, 0);
    expect(other).toBeGreaterThanOrEqual(0);
    try {
      const past = 2 ** 32 + 5;
      for (const which of [TCP_STATS.bytesUp, TCP_STATS.bytesDown, TCP_STATS.eventsLost]) {
        expect(hooks.rl_test_tcp_engine_stat_set(other, which, past + which)).toBe(0);
      }
      expect(hooks.rl_test_tcp_engine_stat_set(other, TCP_STATS.open, 1)).toBe(-E.EINVAL);
      expect(lib.rl_tcp_engine_stats(other, statsPtr)).toBe(TCP_STATS.count);
      expect(stats[TCP_STATS.bytesUp]).toBe(past);
      expect(stats[TCP_STATS.bytesDown]).toBe(past + 1);
      expect(stats[TCP_STATS.eventsLost]).toBe(past + 5);
    } finally {
      expect(lib.rl_tcp_engine_close(other)).toBe(0);
    }
  });

  test("bad arguments are refused, and the hand-off's fds are closed anyway", async () => {
    expect(lib.rl_tcp_engine_open(0, PIPE_BYTES, 1000, 0)).toBe(-E.EINVAL);
    expect(lib.rl_tcp_engine_open(4, 100, 1000, 0)).toBe(-E.EINVAL);
    const { client, fd } = await acceptClient();
    const seen = collect(client);
    expect(lib.rl_tcp_engine_add(engine, SLOTS, fd, -1)).toBe(-E.EINVAL);
    expect(lib.rl_close(fd)).toBe(-E.EBADF); // already closed (with a reset)
    await seen.closed;
    expect(lib.rl_tcp_engine_events(99, eventsPtr, 1)).toBe(-E.EBADF);
    expect(lib.rl_tcp_connect(loopback, 0, 0, anyV4, 0, 0)).toBeLessThan(0);
  });
});

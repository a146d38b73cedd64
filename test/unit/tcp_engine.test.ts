// The C splice engine on loopback (no namespaces, no privileges): accept, connect,
// hand-off, and what each ending looks like from both peers and from the event. The
// contract runs once per mode (copy first, tcp.spliceMode "auto"; splice only,
// "always") and per engine kind (its own thread; inline, run by its owner: here a
// timer stands for the TCP Worker's poller); then copy mode's own cases: small exchanges
// without a pipe, the switch to splice (byte order across it), back-pressure, a full
// copy pool; and inline mode's own: its epoll fd in a poller, no event fd writes.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Pointer, ptr } from "bun:ffi";
import net from "node:net";
import { parseAddress } from "../../src/sys/addr.ts";
import { E } from "../../src/sys/errno.ts";
import { loadFfi, type RelayLib } from "../../src/sys/ffi.ts";
import { loadTestHooks } from "../../src/sys/test_hooks.ts";
import { META, META_WORDS, SEND, SEND_BYTES, SOCK } from "../../src/sys/layout.ts";
import {
  TCP_COPY_BYTES,
  TCP_EVENT,
  TCP_EVENT_BYTES,
  TCP_EVENT_CLOSED,
  TCP_NEVER_CONNECTED,
  TCP_STATS,
  TcpEnd,
} from "../../src/tcp/layout.ts";

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

/** Reads one end event of `which` (bounded wait). */
async function nextEvent(timeoutMs = 3000, which = engine): Promise<EndEvent> {
  const end = performance.now() + timeoutMs;
  while (performance.now() < end) {
    const n = lib.rl_tcp_engine_events(which, eventsPtr, 1);
    if (n === 1) return readEvent();
    await Bun.sleep(5);
  }
  throw new Error("no engine event in time");
}

/** The first event in `events` (rl_tcp_engine_events wrote it). */
function readEvent(): EndEvent {
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

/** Reads the engine's stats until check() holds or the deadline passes (bounded). */
async function pollStats(check: () => boolean, timeoutMs = 3000, which = engine): Promise<boolean> {
  const end = performance.now() + timeoutMs;
  for (;;) {
    lib.rl_tcp_engine_stats(which, statsPtr);
    if (check()) return true;
    if (performance.now() > end) return false;
    await Bun.sleep(5);
  }
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

/** The engine's stats now, as a copy (`which` defaults to the suite's engine). */
function readStats(which = engine): Float64Array {
  expect(lib.rl_tcp_engine_stats(which, statsPtr)).toBe(TCP_STATS.count);
  return stats.slice();
}

/** Byte `i` of a test stream: depends on bits 0-23 of i, so a block out of place shows. */
function patternByte(i: number): number {
  return (i ^ (i >>> 8) ^ (i >>> 16)) & 0xff;
}

function pattern(from: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let k = 0; k < length; k++) out[k] = patternByte(from + k);
  return out;
}

/** Index of the first byte of `data` that is not the pattern, or -1. */
function patternMismatch(data: Uint8Array, from = 0): number {
  for (let k = 0; k < data.length; k++) if (data[k] !== patternByte(from + k)) return from + k;
  return -1;
}

/** SO_RCVBUF of the small upstream below (the kernel doubles it): a peer that stops
 * reading stalls the relay after little data. */
const SMALL_RECEIVE_BYTES = 4096;

/** An upstream listener whose accepted sockets inherit a small receive buffer, read
 * through the C helper (rl_tcp_recv) exactly when a test says so. */
function smallUpstream(): { fd: number; port: number } {
  const fd = lib.rl_socket(SOCK.stream | SOCK.reuseAddr, loopback, 0, 0, SMALL_RECEIVE_BYTES, 0);
  expect(fd).toBeGreaterThanOrEqual(0);
  expect(lib.rl_listen(fd, 8)).toBe(0);
  return { fd, port: lib.rl_local_port(fd, ptr(new Uint8Array(new ArrayBuffer(16)))) };
}

async function acceptRaw(listener: number): Promise<number> {
  for (let tries = 0; tries < 2000; tries++) {
    const fd = lib.rl_tcp_accept(listener, metaPtr);
    if (fd >= 0) return fd;
    expect(-fd).toBe(E.EAGAIN);
    await Bun.sleep(1);
  }
  throw new Error("accept: nothing");
}

/**
 * Reads `fd` (its peer sends the pattern from 0) until EOF or the deadline: how many
 * bytes came, the first one out of pattern (-1: none), and whether EOF came.
 */
async function readPattern(fd: number, timeoutMs = 30_000) {
  const buffer = new Uint8Array(new ArrayBuffer(1 << 16));
  const bufferPtr = ptr(buffer);
  let got = 0;
  let mismatchAt = -1;
  const end = performance.now() + timeoutMs;
  while (performance.now() < end) {
    const n = lib.rl_tcp_recv(fd, bufferPtr, buffer.length);
    if (n === 0) return { got, mismatchAt, eof: true };
    if (n === -E.EAGAIN) {
      await Bun.sleep(1); // the client's writes run on this event loop
      continue;
    }
    expect(n).toBeGreaterThan(0);
    if (mismatchAt < 0) mismatchAt = patternMismatch(buffer.subarray(0, n), got);
    got += n;
  }
  return { got, mismatchAt, eof: false };
}

/** Pieces written while the upstream still takes them: smaller than the copy buffer. */
const STALL_PIECE_BYTES = TCP_COPY_BYTES - 384;
/** Polls in a row that must see nothing delivered while a copy buffer is held. */
const STALL_POLLS = 25;

/**
 * Sends the pattern from the client in pieces smaller than a copy buffer, each once the
 * last one was delivered upstream, until the upstream (which does not read) stops taking
 * them: the engine then holds a copy buffer with bytes the target has not taken. The
 * relay's socket never holds more than one piece, so no read fills a buffer and the
 * direction stays in copy mode. Returns the bytes written.
 */
async function stallInCopyMode(which: number, client: net.Socket): Promise<number> {
  const base = readStats(which)[TCP_STATS.bytesUp];
  let written = 0;
  let still = 0;
  let last = -1;
  const end = performance.now() + 30_000;
  while (performance.now() < end) {
    const s = readStats(which);
    const delivered = s[TCP_STATS.bytesUp] - base;
    if (delivered === written) {
      client.write(pattern(written, STALL_PIECE_BYTES));
      written += STALL_PIECE_BYTES;
      still = 0;
    } else if (s[TCP_STATS.copyBuffersInUse] >= 1 && delivered === last) {
      // A step between recv and send also holds a buffer, for microseconds: only a
      // buffer held while nothing moves for many polls is a stall.
      still++;
      if (still >= STALL_POLLS) return written;
    } else {
      still = 0;
    }
    last = delivered;
    await Bun.sleep(2);
  }
  throw new Error("the upstream never stalled the copy buffer");
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
});

afterAll(() => {
  if (listenerFd >= 0) lib.rl_close(listenerFd);
});

/** Both modes, threaded or inline, keep one contract; only the pipes they take differ. */
const MODES = [
  { name: "auto", copyBytes: TCP_COPY_BYTES, inline: 0 },
  { name: "always", copyBytes: 0, inline: 0 },
  { name: "auto, inline", copyBytes: TCP_COPY_BYTES, inline: 1 },
  { name: "always, inline", copyBytes: 0, inline: 1 },
] as const;

/** An inline engine's rounds: what the TCP Worker's poller does when its epoll fd is ready. */
const INLINE_PUMP_MS = 1;

for (const mode of MODES)
  describe(`TCP splice engine, spliceMode ${mode.name}`, () => {
    let pump: ReturnType<typeof setInterval> | null = null;
    beforeAll(() => {
      engine = lib.rl_tcp_engine_open(SLOTS, PIPE_BYTES, 1000, 400, mode.copyBytes, mode.inline);
      expect(engine).toBeGreaterThanOrEqual(0);
      if (mode.inline === 1) {
        const which = engine;
        pump = setInterval(
          () => expect(lib.rl_tcp_engine_run(which, 64)).toBeGreaterThanOrEqual(0),
          INLINE_PUMP_MS,
        );
      }
    });

    afterAll(() => {
      if (pump) clearInterval(pump);
      if (engine >= 0) expect(lib.rl_tcp_engine_close(engine)).toBe(0);
      engine = -1;
    });

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
        expect(ev).toMatchObject({
          id,
          reason: TcpEnd.Closed,
          error: 0,
          bytesUp: 5,
          bytesDown: 10,
        });
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
        // Offer far more than the path can hold; node queues what the socket refuses.
        const offered = 64 << 20;
        const block = Buffer.alloc(1 << 20);
        for (let queued = 0; queued < offered; queued += block.length) client.write(block);
        // The engine holds the connection with one pipe per direction that has bytes (copy
        // mode: the upload proved bulk and switched; the download never had a byte)...
        const pipes = mode.copyBytes > 0 ? 1 : 2;
        expect(await pollStats(() => stats[TCP_STATS.pipesInUse] === pipes)).toBe(true);
        expect(stats[TCP_STATS.spliceSwitches]).toBe(mode.copyBytes > 0 ? 1 : 0);
        // ...until nothing has moved either way for the idle timeout (400 ms): the writer
        // stalled while most of what it offered was still waiting.
        await seen.closed;
        expect(seen.error()).toBe("ECONNRESET");
        const ev = await nextEvent();
        expect(ev).toMatchObject({ id, reason: TcpEnd.IdleTimeout });
        // Delivered at most: the server's receive buffer and the relay's send buffer at
        // their limits (tcp_rmem, tcp_wmem) plus one pipe. 36.3 MiB here, half of offered.
        expect(ev.bytesUp).toBeLessThan(offered * 0.6);
        expect(serverSide).not.toBeNull();
      } finally {
        server.close();
      }
    });

    test("set_timeouts (a reload): an open connection gets the new idle timeout", async () => {
      const server = net.createServer((s) => s.pipe(s));
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      // No idle timeout while it opens: only the change below can end it.
      expect(lib.rl_tcp_engine_set_timeouts(engine, 1000, 0)).toBe(0);
      try {
        const { client, fd } = await acceptClient();
        const seen = collect(client);
        const id = nextId++ % SLOTS;
        const upstream = connectUpstream((server.address() as net.AddressInfo).port);
        expect(lib.rl_tcp_engine_add(engine, id, fd, upstream)).toBe(0);
        client.write("ping");
        expect(
          await pollStats(() => stats[TCP_STATS.bytesDown] > 0 && seen.text() === "ping"),
        ).toBe(true);
        expect(lib.rl_tcp_engine_set_timeouts(engine, 1000, 100)).toBe(0);
        const ev = await nextEvent();
        expect(ev).toMatchObject({ id, reason: TcpEnd.IdleTimeout, bytesUp: 4, bytesDown: 4 });
        await seen.closed;
        expect(seen.error()).toBe("ECONNRESET");
      } finally {
        expect(lib.rl_tcp_engine_set_timeouts(engine, 1000, 400)).toBe(0);
        server.close();
      }
      expect(lib.rl_tcp_engine_set_timeouts(engine, 0, 400)).toBe(-E.EINVAL);
      expect(lib.rl_tcp_engine_set_timeouts(engine, 1000, -1)).toBe(-E.EINVAL);
      expect(lib.rl_tcp_engine_set_timeouts(99, 1000, 400)).toBe(-E.EBADF);
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
        // The engine has taken the hand-off once it counts the connection open.
        expect(await pollStats(() => stats[TCP_STATS.open] === 1)).toBe(true);
        expect(lib.rl_tcp_engine_abort_all(engine)).toBe(0);
        await seen.closed;
        expect(seen.error()).toBe("ECONNRESET");
        expect(await nextEvent()).toMatchObject({ id, reason: TcpEnd.Aborted });
        lib.rl_tcp_engine_stats(engine, statsPtr);
        expect(stats[TCP_STATS.open]).toBe(0);
        expect(stats[TCP_STATS.pipesInUse]).toBe(0);
        expect(stats[TCP_STATS.copyBuffersInUse]).toBe(0);
        expect(stats[TCP_STATS.eventsLost]).toBe(0);
      } finally {
        server.close();
      }
    });

    // Threaded only: the race it provokes (a hand-off within the engine thread's batch)
    // cannot arise inline, where hand-offs happen between rounds on the same thread.
    if (mode.inline === 0)
      test("connect/close churn: a connection is never hit by its id's previous owner", async () => {
        // Ids are reused last-in-first-out as soon as their end is read, so an id can end
        // and start again within one epoll batch of the engine. A late event of the old
        // connection in that batch must not reach the new one: the upstream's reset of the
        // old connection would make the new one, still connecting, "refused".
        //
        // Each round: an open connection X to a listener here moves one byte (the engine
        // then pauses, EVENT_DELAY_US, after that event). Meanwhile its client resets, a
        // connection to a refusing port is handed off, and its upstream resets: the
        // engine's next batch holds X's client reset (ending X), the hand-off command and
        // X's upstream reset (a late event of X). JS reads X's end during the pause after
        // that first event and hands X's id to a new connection to the listener here, before
        // the engine reaches the command. That connection must open, never be "refused".
        const ROUNDS = 300;
        const CHURN_SLOTS = 8;
        const EVENT_DELAY_US = 2000;
        const churn = lib.rl_tcp_engine_open(
          CHURN_SLOTS,
          PIPE_BYTES,
          5000,
          5000,
          mode.copyBytes,
          0,
        );
        expect(churn).toBeGreaterThanOrEqual(0);
        expect(loadTestHooks().rl_test_tcp_engine_event_delay(churn, EVENT_DELAY_US)).toBe(0);
        const scratchBytes = new Uint8Array(new ArrayBuffer(16)); // kept alive: C writes there
        const scratch = ptr(scratchBytes);
        const accepting = lib.rl_socket(SOCK.stream | SOCK.reuseAddr, loopback, 0, 0, 0, 0);
        expect(lib.rl_listen(accepting, 64)).toBe(0);
        const acceptingPort = lib.rl_local_port(accepting, scratch);
        const refusing = lib.rl_socket(SOCK.stream | SOCK.reuseAddr, loopback, 0, 0, 0, 0);
        const refusingPort = lib.rl_local_port(refusing, scratch);
        lib.rl_close(refusing); // bound, never listening: nothing there now
        const churnEvents = new Uint8Array(new ArrayBuffer(TCP_EVENT_BYTES * CHURN_SLOTS));
        const churnPtr = ptr(churnEvents);
        const e32 = new Uint32Array(churnEvents.buffer);
        const e16 = new Uint16Array(churnEvents.buffer);
        // One byte from the upstream through rl_send_batch (sendmmsg works on a connected
        // TCP socket; the destination is ignored there); the client reads it with recvmmsg.
        const byte = new Uint8Array(new ArrayBuffer(64));
        const bytePtr = ptr(byte);
        const send = new Uint8Array(new ArrayBuffer(SEND_BYTES));
        const sendPtr = ptr(send);
        const send32 = new Int32Array(send.buffer);
        send.set(loopback);
        new Uint16Array(send.buffer)[SEND.targetPortHalf] = acceptingPort;
        send32[SEND.lengthWord] = 1;

        const freeIds: number[] = [];
        for (let id = CHURN_SLOTS - 1; id >= 0; id--) freeIds.push(id);
        const live = new Uint8Array(CHURN_SLOTS);
        const toAccepting = new Uint8Array(CHURN_SLOTS);
        const clientFd = new Int32Array(CHURN_SLOTS).fill(-1);
        const idByUpstreamPort = new Map<number, number>();
        const reasons = new Map<string, number>();
        const wrong: string[] = [];
        let started = 0;

        /** A client through the relay listener, handed off with an upstream to port. */
        const startOne = async (port: number): Promise<number> => {
          const client = lib.rl_tcp_connect(loopback, listenerPort, 0, anyV4, 0, 0);
          expect(client).toBeGreaterThanOrEqual(0);
          let accepted = -E.EAGAIN;
          for (let tries = 0; tries < 1000 && accepted === -E.EAGAIN; tries++) {
            accepted = lib.rl_tcp_accept(listenerFd, metaPtr);
            if (accepted === -E.EAGAIN) await Bun.sleep(1);
          }
          expect(accepted).toBeGreaterThanOrEqual(0);
          expect(freeIds.length).toBeGreaterThan(0);
          const id = freeIds.pop()!;
          const upstream = connectUpstream(port);
          idByUpstreamPort.set(lib.rl_local_port(upstream, scratch), id);
          toAccepting[id] = port === acceptingPort ? 1 : 0;
          clientFd[id] = client;
          live[id] = 1;
          expect(lib.rl_tcp_engine_add(churn, id, accepted, upstream)).toBe(0);
          started++;
          return id;
        };

        /** Reads the engine's events (ends), frees their ids; returns how many. */
        const readEnds = (): number => {
          const n = lib.rl_tcp_engine_events(churn, churnPtr, CHURN_SLOTS);
          for (let i = 0; i < n; i++) {
            const id = e32[i * (TCP_EVENT_BYTES / 4) + TCP_EVENT.idWord];
            const reason = e16[i * (TCP_EVENT_BYTES / 2) + TCP_EVENT.reasonHalf];
            const key = `${toAccepting[id] ? "accepting" : "refusing"}:${reason}`;
            reasons.set(key, (reasons.get(key) ?? 0) + 1);
            if (toAccepting[id] && reason === TcpEnd.ConnectRefused) {
              wrong.push(`connection to the accepting port (id ${id}) reported refused`);
            }
            if (clientFd[id] >= 0) lib.rl_close(clientFd[id]);
            clientFd[id] = -1;
            live[id] = 0;
            freeIds.push(id);
          }
          return Math.max(n, 0);
        };

        /** X's upstream, accepted here; -1 once X has ended instead. */
        const acceptUpstreamOf = async (x: number): Promise<number> => {
          for (let tries = 0; tries < 5000; tries++) {
            const fd = lib.rl_tcp_accept(accepting, metaPtr);
            if (fd >= 0) {
              const port = new Uint16Array(meta.buffer)[META.sourcePortHalf];
              if (idByUpstreamPort.get(port) === x && live[x]) return fd;
              lib.rl_close(fd); // an upstream of a connection that has ended
              continue;
            }
            readEnds();
            if (!live[x]) return -1;
            await Bun.sleep(1);
          }
          throw new Error(`connection ${x}: no upstream accepted in time`);
        };

        const deadline = performance.now() + 60_000;
        let x = -1;
        try {
          for (let round = 0; round < ROUNDS && performance.now() < deadline; round++) {
            if (x < 0 || !live[x]) x = await startOne(acceptingPort);
            const upstream = await acceptUpstreamOf(x);
            if (upstream < 0) {
              x = -1;
              continue;
            }
            send32[SEND.fdWord] = upstream;
            expect(lib.rl_send_batch(bytePtr, byte.byteLength, sendPtr, 1)).toBe(1);
            let got = 0;
            for (let spins = 0; spins < 1_000_000 && got !== 1; spins++) {
              got = lib.rl_recv_batch(clientFd[x], bytePtr, 64, 1, metaPtr);
            }
            expect(got).toBe(1); // the engine moved it, and now pauses
            lib.rl_tcp_abort(clientFd[x]);
            clientFd[x] = -1;
            await startOne(refusingPort);
            lib.rl_tcp_abort(upstream);
            // X's end, read as soon as it is out; its id goes to the next connection.
            for (let spins = 0; spins < 1_000_000 && live[x]; spins++) readEnds();
            expect(live[x]).toBe(0);
            x = await startOne(acceptingPort);
          }
          // Every connection ends once its client and upstream are gone.
          for (let id = 0; id < CHURN_SLOTS; id++)
            if (clientFd[id] >= 0) lib.rl_close(clientFd[id]);
          for (let k = 0; k < 5000; k++) {
            const fd = lib.rl_tcp_accept(accepting, metaPtr);
            if (fd >= 0) lib.rl_tcp_abort(fd);
            readEnds();
            if (freeIds.length === CHURN_SLOTS) break;
            if (fd < 0) await Bun.sleep(1);
          }
        } finally {
          expect(lib.rl_tcp_engine_close(churn)).toBe(0);
          lib.rl_close(accepting);
          for (const fd of clientFd) if (fd >= 0) lib.rl_close(fd);
        }
        expect(wrong).toEqual([]);
        // The rounds did what they say: most opened connections ended by their client's
        // reset (the first event of the batch), and every id came back.
        expect(reasons.get(`accepting:${TcpEnd.ClientReset}`) ?? 0).toBeGreaterThan(ROUNDS / 2);
        expect(started).toBeGreaterThan(ROUNDS);
        expect(freeIds.length).toBe(CHURN_SLOTS);
      }, 90_000);
  });

describe("TCP splice engine: copy mode, handles, arguments", () => {
  beforeAll(() => {
    // No idle timeout: a stalled connection here waits for the test, not the sweep.
    engine = lib.rl_tcp_engine_open(SLOTS, PIPE_BYTES, 1000, 0, TCP_COPY_BYTES, 0);
    expect(engine).toBeGreaterThanOrEqual(0);
  });

  afterAll(() => {
    if (engine >= 0) expect(lib.rl_tcp_engine_close(engine)).toBe(0);
    engine = -1;
  });

  test("small exchanges both ways are copied: no pipe, counted as copy-only", async () => {
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on("data", (d) => s.write(d));
      s.on("end", () => s.end());
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const before = readStats();
      const { client, fd } = await acceptClient();
      const seen = collect(client);
      const id = nextId++ % SLOTS;
      const upstream = connectUpstream((server.address() as net.AddressInfo).port);
      expect(lib.rl_tcp_engine_add(engine, id, fd, upstream)).toBe(0);
      let expected = "";
      for (const word of ["ping", "pong", "last"]) {
        client.write(word);
        expected += word;
        expect(await pollStats(() => seen.text() === expected)).toBe(true);
      }
      client.end();
      await seen.closed;
      const ev = await nextEvent();
      expect(ev).toMatchObject({ id, reason: TcpEnd.Closed, bytesUp: 12, bytesDown: 12 });
      const after = readStats();
      // Copy mode takes a pipe only on a switch or a full pool: neither happened.
      expect(after[TCP_STATS.copyOnly] - before[TCP_STATS.copyOnly]).toBe(1);
      expect(after[TCP_STATS.spliceSwitches]).toBe(before[TCP_STATS.spliceSwitches]);
      expect(after[TCP_STATS.copyPoolEmpty]).toBe(before[TCP_STATS.copyPoolEmpty]);
      expect(after[TCP_STATS.pipesInUse]).toBe(0);
      expect(after[TCP_STATS.copyBuffersInUse]).toBe(0);
    } finally {
      server.close();
    }
  });

  test("half-close in copy mode: the server's FIN first, the client still sends", async () => {
    let serverGot = "";
    const serverDone = Promise.withResolvers<void>();
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      s.end("banner"); // speaks first, then half-closes
      s.on("data", (d) => (serverGot += d));
      s.on("end", () => serverDone.resolve());
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const before = readStats();
      const { client, fd } = await acceptClient();
      const seen = collect(client);
      client.on("end", () => client.end("late")); // the FIN came: answer, then FIN
      const id = nextId++ % SLOTS;
      const upstream = connectUpstream((server.address() as net.AddressInfo).port);
      expect(lib.rl_tcp_engine_add(engine, id, fd, upstream)).toBe(0);
      await serverDone.promise;
      await seen.closed;
      expect(seen.text()).toBe("banner");
      expect(serverGot).toBe("late");
      const ev = await nextEvent();
      expect(ev).toMatchObject({ id, reason: TcpEnd.Closed, bytesUp: 4, bytesDown: 6 });
      expect(readStats()[TCP_STATS.copyOnly] - before[TCP_STATS.copyOnly]).toBe(1);
    } finally {
      server.close();
    }
  });

  test("bulk both ways through an echo: each direction switches to splice, byte-exact", async () => {
    const server = net.createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const before = readStats();
      const { client, fd } = await acceptClient();
      const seen = collect(client);
      const id = nextId++ % SLOTS;
      const upstream = connectUpstream((server.address() as net.AddressInfo).port);
      expect(lib.rl_tcp_engine_add(engine, id, fd, upstream)).toBe(0);
      const total = 8 << 20;
      client.end(pattern(0, total));
      const chunks: Buffer[] = [];
      client.on("data", (d: Buffer) => chunks.push(d));
      await seen.closed;
      const echoed = Buffer.concat(chunks);
      expect(echoed.length).toBe(total);
      expect(patternMismatch(echoed)).toBe(-1);
      const ev = await nextEvent();
      expect(ev).toMatchObject({ id, reason: TcpEnd.Closed, bytesUp: total, bytesDown: total });
      const after = readStats();
      expect(after[TCP_STATS.spliceSwitches] - before[TCP_STATS.spliceSwitches]).toBe(2);
      expect(after[TCP_STATS.copyOnly]).toBe(before[TCP_STATS.copyOnly]);
      expect(after[TCP_STATS.pipesInUse]).toBe(0);
    } finally {
      server.close();
    }
  });

  test("a peer that does not read: copy mode stalls on one buffer; then bulk behind it arrives in order", async () => {
    const up = smallUpstream();
    let serverFd = -1;
    try {
      const before = readStats();
      const { client, fd } = await acceptClient();
      const seen = collect(client);
      const id = nextId++ % SLOTS;
      expect(lib.rl_tcp_engine_add(engine, id, fd, connectUpstream(up.port))).toBe(0);
      serverFd = await acceptRaw(up.fd);
      const stalled = await stallInCopyMode(engine, client);
      // Back-pressure: the buffer holds what the upstream refused, no pipe was taken,
      // and the relay reads no more from the client while it does.
      let now = readStats();
      expect(now[TCP_STATS.copyBuffersInUse]).toBe(1);
      expect(now[TCP_STATS.pipesInUse]).toBe(0);
      expect(now[TCP_STATS.spliceSwitches]).toBe(before[TCP_STATS.spliceSwitches]);
      expect(now[TCP_STATS.bytesUp] - before[TCP_STATS.bytesUp]).toBeLessThan(stalled);
      // Bulk behind the held bytes: more than a copy buffer waits in the relay's socket,
      // so once the upstream reads, the buffer drains, the next read fills it and the
      // direction splices. The held bytes must still come before every spliced one.
      const bulk = 1 << 20;
      const flushed = new Promise<void>((r) => client.write(pattern(stalled, bulk), () => r()));
      await Promise.race([flushed, Bun.sleep(2000)]);
      client.end();
      const read = await readPattern(serverFd);
      expect(read).toEqual({ got: stalled + bulk, mismatchAt: -1, eof: true });
      now = readStats();
      expect(now[TCP_STATS.spliceSwitches] - before[TCP_STATS.spliceSwitches]).toBe(1);
      lib.rl_close(serverFd); // the upstream's FIN: the connection ends closed
      serverFd = -1;
      const ev = await nextEvent();
      expect(ev).toMatchObject({ id, reason: TcpEnd.Closed, bytesUp: stalled + bulk });
      await seen.closed;
      expect(seen.error()).toBeNull();
    } finally {
      if (serverFd >= 0) lib.rl_close(serverFd);
      lib.rl_close(up.fd);
    }
  }, 60_000);

  test("every copy buffer held: the next direction splices from its first byte", async () => {
    // One slot, so a pool of one buffer: the stalled upload holds it.
    const one = lib.rl_tcp_engine_open(1, PIPE_BYTES, 1000, 0, TCP_COPY_BYTES, 0);
    expect(one).toBeGreaterThanOrEqual(0);
    const up = smallUpstream();
    let serverFd = -1;
    try {
      const { client, fd } = await acceptClient();
      const seen = collect(client);
      expect(lib.rl_tcp_engine_add(one, 0, fd, connectUpstream(up.port))).toBe(0);
      serverFd = await acceptRaw(up.fd);
      await stallInCopyMode(one, client);
      const hello = Buffer.from("hello");
      expect(lib.rl_tcp_send(serverFd, hello, hello.length)).toBe(hello.length);
      expect(await pollStats(() => seen.text() === "hello", 3000, one)).toBe(true);
      const s = readStats(one);
      expect(s[TCP_STATS.copyPoolEmpty]).toBe(1);
      expect(s[TCP_STATS.pipesInUse]).toBe(1);
      expect(s[TCP_STATS.copyBuffersInUse]).toBe(1);
      expect(s[TCP_STATS.spliceSwitches]).toBe(0);
      expect(lib.rl_tcp_engine_abort_all(one)).toBe(0);
      expect(await nextEvent(3000, one)).toMatchObject({ id: 0, reason: TcpEnd.Aborted });
      await seen.closed;
      const end = readStats(one);
      expect(end[TCP_STATS.copyBuffersInUse]).toBe(0);
      expect(end[TCP_STATS.pipesInUse]).toBe(0);
      expect(end[TCP_STATS.copyOnly]).toBe(0);
    } finally {
      expect(lib.rl_tcp_engine_close(one)).toBe(0);
      if (serverFd >= 0) lib.rl_close(serverFd);
      lib.rl_close(up.fd);
    }
  }, 60_000);

  test("a dead engine thread says so: rl_tcp_engine_failed, and a wake-up on its event fd", () => {
    const hooks = loadTestHooks();
    const doomed = lib.rl_tcp_engine_open(2, PIPE_BYTES, 1000, 0, 0, 0);
    expect(doomed).toBeGreaterThanOrEqual(0);
    const poller = lib.rl_poll_open(4);
    try {
      expect(lib.rl_poll_level_triggered(poller)).toBe(0);
      expect(lib.rl_poll_add(poller, lib.rl_tcp_engine_event_fd(doomed), 1)).toBe(0);
      expect(lib.rl_poll_wait(poller, 0)).toBe(0); // nothing to say while it runs
      expect(lib.rl_tcp_engine_failed(doomed)).toBe(0);
      expect(hooks.rl_test_tcp_engine_break(doomed)).toBe(0);
      // The thread's next epoll_wait fails: it records why and wakes the event fd.
      expect(lib.rl_poll_wait(poller, 10_000)).toBe(1);
      expect(lib.rl_tcp_engine_failed(doomed)).toBe(-E.EINVAL);
    } finally {
      expect(lib.rl_poll_stop(poller)).toBe(0);
      expect(lib.rl_tcp_engine_close(doomed)).toBe(0); // joins the thread that has ended
    }
    expect(lib.rl_tcp_engine_failed(doomed)).toBe(-E.EBADF);
  });

  test("engine counters are 64-bit end to end (set past 2^32 by a test hook)", () => {
    const hooks = loadTestHooks();
    const other = lib.rl_tcp_engine_open(2, PIPE_BYTES, 1000, 0, TCP_COPY_BYTES, 0);
    expect(other).toBeGreaterThanOrEqual(0);
    try {
      const past = 2 ** 32 + 5;
      const counters = [
        TCP_STATS.bytesUp,
        TCP_STATS.bytesDown,
        TCP_STATS.eventsLost,
        TCP_STATS.spliceSwitches,
        TCP_STATS.copyOnly,
        TCP_STATS.copyPoolEmpty,
      ];
      for (const which of counters) {
        expect(hooks.rl_test_tcp_engine_stat_set(other, which, past + which)).toBe(0);
      }
      for (const gauge of [TCP_STATS.open, TCP_STATS.copyBuffersInUse]) {
        expect(hooks.rl_test_tcp_engine_stat_set(other, gauge, 1)).toBe(-E.EINVAL);
      }
      expect(lib.rl_tcp_engine_stats(other, statsPtr)).toBe(TCP_STATS.count);
      for (const which of counters) expect(stats[which]).toBe(past + which);
    } finally {
      expect(lib.rl_tcp_engine_close(other)).toBe(0);
    }
  });

  test("bad arguments are refused, and the hand-off's fds are closed anyway", async () => {
    expect(lib.rl_tcp_engine_open(0, PIPE_BYTES, 1000, 0, 0, 0)).toBe(-E.EINVAL);
    expect(lib.rl_tcp_engine_open(4, 100, 1000, 0, 0, 0)).toBe(-E.EINVAL);
    // A copy buffer is 1 KiB at least and no larger than the pipe (the direction's bound).
    for (const copyBytes of [-1, 1023, PIPE_BYTES + 1]) {
      expect(lib.rl_tcp_engine_open(4, PIPE_BYTES, 1000, 0, copyBytes, 0)).toBe(-E.EINVAL);
    }
    for (const copyBytes of [1024, PIPE_BYTES]) {
      const h = lib.rl_tcp_engine_open(4, PIPE_BYTES, 1000, 0, copyBytes, 0);
      expect(h).toBeGreaterThanOrEqual(0);
      expect(lib.rl_tcp_engine_close(h)).toBe(0);
    }
    const { client, fd } = await acceptClient();
    const seen = collect(client);
    expect(lib.rl_tcp_engine_add(engine, SLOTS, fd, -1)).toBe(-E.EINVAL);
    expect(lib.rl_close(fd)).toBe(-E.EBADF); // already closed (with a reset)
    await seen.closed;
    expect(lib.rl_tcp_engine_events(99, eventsPtr, 1)).toBe(-E.EBADF);
    expect(lib.rl_tcp_connect(loopback, 0, 0, anyV4, 0, 0)).toBeLessThan(0);
  });
});

describe("TCP splice engine: inline mode (run by its owner's poller, no thread)", () => {
  /**
   * Drives `which` as the TCP Worker does: its epoll fd in a level-triggered poller, a
   * run whenever that fd is ready, and a run per `tickMs` for the timeouts. Until
   * done() holds or the deadline passes (bounded); returns done().
   */
  async function driveInline(which: number, done: () => boolean, tickMs = 20): Promise<boolean> {
    const poller = lib.rl_poll_open(4);
    expect(poller).toBeGreaterThanOrEqual(0);
    try {
      expect(lib.rl_poll_level_triggered(poller)).toBe(0);
      expect(lib.rl_poll_add(poller, lib.rl_tcp_engine_epoll_fd(which), 1)).toBe(0);
      const end = performance.now() + 5000;
      while (!done() && performance.now() < end) {
        const ready = lib.rl_poll_wait(poller, 0);
        expect(ready).toBeGreaterThanOrEqual(0);
        expect(lib.rl_tcp_engine_run(which, 64)).toBeGreaterThanOrEqual(0);
        await Bun.sleep(ready > 0 ? 0 : tickMs); // node's sockets run on this event loop
      }
      return done();
    } finally {
      expect(lib.rl_poll_stop(poller)).toBe(0);
    }
  }

  /** Whether `fd` is readable now (a one-off level-triggered poll). */
  function readableNow(fd: number): boolean {
    const poller = lib.rl_poll_open(2);
    try {
      expect(lib.rl_poll_level_triggered(poller)).toBe(0);
      expect(lib.rl_poll_add(poller, fd, 1)).toBe(0);
      return lib.rl_poll_wait(poller, 0) > 0;
    } finally {
      expect(lib.rl_poll_stop(poller)).toBe(0);
    }
  }

  test("epoll fd in a poller: echo, half-close, the end event without an event fd write", async () => {
    const inline = lib.rl_tcp_engine_open(2, PIPE_BYTES, 1000, 0, TCP_COPY_BYTES, 1);
    expect(inline).toBeGreaterThanOrEqual(0);
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on("data", (d) => s.write(d));
      s.on("end", () => s.end("bye"));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      expect(lib.rl_tcp_engine_run(inline, 0)).toBe(-E.EINVAL);
      const { client, fd } = await acceptClient();
      const seen = collect(client);
      const port = (server.address() as net.AddressInfo).port;
      // Registered at once: both sockets are in the engine's set before any run.
      expect(lib.rl_tcp_engine_add(inline, 1, fd, connectUpstream(port))).toBe(0);
      expect(readStats(inline)[TCP_STATS.open]).toBe(1);
      client.write("hello");
      client.end();
      let closed = false;
      void seen.closed.then(() => (closed = true));
      let got = 0;
      const ended = await driveInline(inline, () => {
        if (closed && got === 0) got = lib.rl_tcp_engine_events(inline, eventsPtr, 1);
        return got === 1;
      });
      expect(ended).toBe(true);
      expect(seen.text()).toBe("hellobye");
      expect(readEvent()).toMatchObject({ id: 1, reason: TcpEnd.Closed, bytesUp: 5, bytesDown: 8 });
      // The event waited in the ring; the event fd (the threaded engine's wake-up) was
      // never written.
      expect(readableNow(lib.rl_tcp_engine_event_fd(inline))).toBe(false);
      expect(lib.rl_tcp_engine_failed(inline)).toBe(0);
      const s = readStats(inline);
      expect(s[TCP_STATS.open]).toBe(0);
      expect(s[TCP_STATS.bytesUp]).toBe(5);
      expect(s[TCP_STATS.bytesDown]).toBe(8);
    } finally {
      server.close();
      expect(lib.rl_tcp_engine_close(inline)).toBe(0);
    }
  });

  test("connect timeout and idle timeout run from the owner's runs", async () => {
    // An upstream that never answers the SYN: a listener whose accept queue is full
    // (backlog 0 holds one; later SYNs are dropped until the queue has room).
    const full = lib.rl_socket(SOCK.stream | SOCK.reuseAddr, loopback, 0, 0, 0, 0);
    expect(lib.rl_listen(full, 0)).toBe(0);
    const fullPort = lib.rl_local_port(full, ptr(new Uint8Array(new ArrayBuffer(16))));
    const inline = lib.rl_tcp_engine_open(2, PIPE_BYTES, 150, 300, 0, 1);
    let filler: net.Socket | null = null;
    expect(inline).toBeGreaterThanOrEqual(0);
    const server = net.createServer((s) => s.on("data", () => {}));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      // Its handshake complete, the filler holds the queue's one place.
      filler = net.connect({ host: "127.0.0.1", port: fullPort });
      filler.on("error", () => {});
      await new Promise<void>((resolve) => filler?.once("connect", resolve));
      const hanging = await acceptClient();
      collect(hanging.client);
      expect(lib.rl_tcp_engine_add(inline, 0, hanging.fd, connectUpstream(fullPort))).toBe(0);
      const idle = await acceptClient();
      collect(idle.client);
      const port = (server.address() as net.AddressInfo).port;
      expect(lib.rl_tcp_engine_add(inline, 1, idle.fd, connectUpstream(port))).toBe(0);
      const seen: EndEvent[] = [];
      const both = await driveInline(inline, () => {
        while (lib.rl_tcp_engine_events(inline, eventsPtr, 1) === 1) seen.push(readEvent());
        return seen.length === 2;
      });
      expect(both).toBe(true);
      const byId = new Map(seen.map((e) => [e.id, e]));
      expect(byId.get(0)?.reason).toBe(TcpEnd.ConnectTimeout);
      expect(byId.get(0)?.connectMs).toBe(TCP_NEVER_CONNECTED);
      expect(byId.get(1)?.reason).toBe(TcpEnd.IdleTimeout);
    } finally {
      server.close();
      filler?.destroy();
      lib.rl_close(full);
      expect(lib.rl_tcp_engine_close(inline)).toBe(0);
    }
  });

  test("abort_all ends every connection at once, inline; a threaded engine refuses run", async () => {
    const inline = lib.rl_tcp_engine_open(2, PIPE_BYTES, 1000, 0, 0, 1);
    expect(inline).toBeGreaterThanOrEqual(0);
    const threaded = lib.rl_tcp_engine_open(2, PIPE_BYTES, 1000, 0, 0, 0);
    expect(threaded).toBeGreaterThanOrEqual(0);
    const server = net.createServer((s) => s.on("data", () => {}));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      expect(lib.rl_tcp_engine_run(threaded, 64)).toBe(-E.EINVAL);
      const { client, fd } = await acceptClient();
      const seen = collect(client);
      const port = (server.address() as net.AddressInfo).port;
      expect(lib.rl_tcp_engine_add(inline, 0, fd, connectUpstream(port))).toBe(0);
      expect(lib.rl_tcp_engine_abort_all(inline)).toBe(0);
      // No run needed: the end is in the ring when abort_all returns.
      expect(lib.rl_tcp_engine_events(inline, eventsPtr, 1)).toBe(1);
      expect(readEvent().reason).toBe(TcpEnd.Aborted);
      await seen.closed;
      expect(seen.error()).toBe("ECONNRESET");
    } finally {
      server.close();
      expect(lib.rl_tcp_engine_close(threaded)).toBe(0);
      expect(lib.rl_tcp_engine_close(inline)).toBe(0);
    }
  });
});

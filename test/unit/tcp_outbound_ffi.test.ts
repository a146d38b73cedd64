// The C calls a TCP outbound needs (ffi/tcp.c, ffi/poller.c), on loopback without
// privileges: a connect bound to an interface, waiting for its completion through the
// poller armed for writability (one-shot), its result, and non-blocking send/recv.
import { afterAll, describe, expect, test } from "bun:test";
import { ptr } from "bun:ffi";
import { parseAddress } from "../../src/sys/addr.ts";
import { decodeSocketError, E } from "../../src/sys/errno.ts";
import { loadFfi } from "../../src/sys/ffi.ts";
import { WAKE_TOKEN_MASK } from "../../src/sys/poller.ts";

const lib = loadFfi();
const loopback = parseAddress("127.0.0.1")!;
const anyV4 = parseAddress("0.0.0.0")!;
const ENODEV = 19;

const echo = Bun.listen({
  hostname: "127.0.0.1",
  port: 0,
  socket: { data: (s, d) => void s.write(d) },
});
afterAll(() => echo.stop(true));

/** Waits (bounded) for the poller to report a token; returns it. */
async function nextToken(poller: number): Promise<number> {
  const out = new Uint32Array(new ArrayBuffer(16));
  const deadline = performance.now() + 5000;
  while (performance.now() < deadline) {
    const n = lib.rl_poll_wait(poller, 0);
    expect(n).toBeGreaterThanOrEqual(0);
    if (n > 0 && lib.rl_poll_take(poller, ptr(out), 4) > 0) return out[0];
    await Bun.sleep(5); // the echo server runs on this thread's event loop
  }
  throw new Error("no poller event within 5 s");
}

describe("TCP outbound calls", () => {
  test("connect bound to lo, completion by EPOLLOUT, then send and recv", async () => {
    const fd = lib.rl_tcp_connect_via(loopback, echo.port, 0, anyV4, 0, 0, Buffer.from("lo\0"));
    expect(fd).toBeGreaterThanOrEqual(0);
    const poller = lib.rl_poll_open(4);
    try {
      expect(lib.rl_poll_arm_out(poller, fd, 7, 1)).toBe(0);
      expect(await nextToken(poller)).toBe(7);
      expect(lib.rl_tcp_connect_result(fd)).toBe(0);
      const ping = new Uint8Array(new ArrayBuffer(4));
      ping.set(Buffer.from("ping"));
      expect(lib.rl_tcp_send(fd, ptr(ping), 4)).toBe(4);
      expect(lib.rl_poll_rearm(poller, fd, 8)).toBe(0); // readable next
      expect(await nextToken(poller)).toBe(8);
      const got = new Uint8Array(new ArrayBuffer(16));
      expect(lib.rl_tcp_recv(fd, ptr(got), 16)).toBe(4);
      expect(Buffer.from(got.subarray(0, 4)).toString()).toBe("ping");
      expect(lib.rl_tcp_recv(fd, ptr(got), 16)).toBe(-E.EAGAIN);
    } finally {
      lib.rl_close(fd);
      lib.rl_poll_stop(poller);
    }
  });

  test("a refused connect: writable, and its result is -ECONNREFUSED", async () => {
    // A port that was just free: listen, note it, close.
    const closed = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = closed.port;
    closed.stop(true);
    const fd = lib.rl_tcp_connect_via(loopback, port, 0, anyV4, 0, 0, null);
    expect(fd).toBeGreaterThanOrEqual(0);
    const poller = lib.rl_poll_open(4);
    try {
      expect(lib.rl_poll_arm_out(poller, fd, 3, 1)).toBe(0);
      // EPOLLERR comes with it (bit 30 of the token).
      expect((await nextToken(poller)) & WAKE_TOKEN_MASK).toBe(3);
      expect(lib.rl_tcp_connect_result(fd)).toBe(-E.ECONNREFUSED);
    } finally {
      lib.rl_close(fd);
      lib.rl_poll_stop(poller);
    }
  });

  test("an interface that does not exist: the SO_BINDTODEVICE step, ENODEV", () => {
    const rc = lib.rl_tcp_connect_via(loopback, 9, 0, anyV4, 0, 0, Buffer.from("nosuch0\0"));
    expect(decodeSocketError(rc)).toEqual({ step: "SO_BINDTODEVICE", errno: ENODEV });
    const long = Buffer.from("a-name-longer-than-ifnamsiz\0");
    expect(decodeSocketError(lib.rl_tcp_connect_via(loopback, 9, 0, anyV4, 0, 0, long))).toEqual({
      step: "SO_BINDTODEVICE",
      errno: 22,
    });
  });
});

// A dead splice engine is fatal, never silent: TcpRelay calls its onFatal (by default:
// a message and exit code 70, so that a service manager restarts the relay).
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { parseConfig } from "../../src/config/load.ts";
import { TcpRelay } from "../../src/tcp/relay.ts";
import { parseAddress } from "../../src/sys/addr.ts";
import { loadFfi } from "../../src/sys/ffi.ts";
import { SOCK } from "../../src/sys/layout.ts";
import { loadTestHooks } from "../../src/sys/test_hooks.ts";

const lib = loadFfi();

/** A TCP port free on 127.0.0.1 right now (bound once, then released). */
function freePort(): number {
  const loopback = parseAddress("127.0.0.1")!;
  const fd = lib.rl_socket(SOCK.stream, loopback, 0, 0, 0, 0);
  const port = lib.rl_local_port(fd, new Uint8Array(16));
  lib.rl_close(fd);
  return port;
}

function configInput() {
  return {
    listeners: [
      // REDIRECT mode needs no IP_TRANSPARENT: the test runs without privileges too.
      { name: "t", protocol: "tcp", address: "127.0.0.1", port: freePort(), mode: "redirect" },
    ],
    tcp: { connectionsMax: 16 },
  };
}

/** Polls until check() holds or the deadline passes (bounded). */
async function waitFor(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = performance.now() + timeoutMs;
  while (!check() && performance.now() < end) await Bun.sleep(10);
  return check();
}

describe("TCP relay: a dead splice engine", () => {
  test("calls onFatal once, naming the error", async () => {
    const messages: string[] = [];
    const relay = new TcpRelay(lib, parseConfig(configInput()), {
      onFatal: (m) => messages.push(m),
    });
    relay.start();
    try {
      expect(messages).toEqual([]);
      expect(loadTestHooks().rl_test_tcp_engine_break(relay["engine"])).toBe(0);
      expect(await waitFor(() => messages.length > 0, 10_000)).toBe(true);
      expect(messages).toEqual(["TCP splice engine thread stopped: epoll_wait: EINVAL"]);
      // Reported once: later wake-ups and ticks stay quiet.
      expect(await waitFor(() => messages.length > 1, 300)).toBe(false);
    } finally {
      await relay.stop(0);
    }
  });

  test("inline (tcp.dataPlane worker): calls onFatal once, naming the error", async () => {
    const messages: string[] = [];
    const relay = new TcpRelay(lib, parseConfig(configInput()), {
      inline: true,
      onFatal: (m) => messages.push(m),
    });
    relay.start();
    try {
      expect(loadTestHooks().rl_test_tcp_engine_break(relay["engine"])).toBe(0);
      // The next run (a wake-up, or the tick's) finds the broken epoll set.
      expect(await waitFor(() => messages.length > 0, 10_000)).toBe(true);
      expect(messages).toEqual(["TCP splice engine (inline) failed: epoll_wait: EINVAL"]);
      expect(await waitFor(() => messages.length > 1, 300)).toBe(false);
    } finally {
      await relay.stop(0);
    }
  });

  test("by default ends the process with 70 and a message", async () => {
    const root = join(import.meta.dir, "..", "..");
    const script = `
      import { parseConfig } from "${root}/src/config/load.ts";
      import { TcpRelay } from "${root}/src/tcp/relay.ts";
      import { loadFfi } from "${root}/src/sys/ffi.ts";
      import { loadTestHooks } from "${root}/src/sys/test_hooks.ts";
      const relay = new TcpRelay(loadFfi(), parseConfig(${JSON.stringify(configInput())}));
      relay.start();
      loadTestHooks().rl_test_tcp_engine_break(relay["engine"]);
      setTimeout(() => process.exit(3), 10_000); // bounded: never hang the suite
    `;
    const proc = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "pipe" });
    const exitCode = await proc.exited;
    const stderr = await new Response(proc.stderr).text();
    expect(stderr).toContain("[relay] fatal: TCP splice engine thread stopped: epoll_wait: EINVAL");
    expect(exitCode).toBe(70);
  });
});

describe("a dead epoll thread (the poller of the TCP accept path)", () => {
  test("calls onFatal once, naming the error", async () => {
    const messages: string[] = [];
    const input = configInput();
    const relay = new TcpRelay(lib, parseConfig(input), { onFatal: (m) => messages.push(m) });
    relay.start();
    try {
      expect(loadTestHooks().rl_test_poll_break(relay["poller"]["handle"])).toBe(0);
      // The thread waits on the old epoll instance until an event: a connection.
      const client = lib.rl_tcp_connect(
        parseAddress("127.0.0.1")!,
        input.listeners[0].port,
        0,
        parseAddress("0.0.0.0")!,
        0,
        0,
      );
      expect(client).toBeGreaterThanOrEqual(0);
      expect(await waitFor(() => messages.length > 0, 10_000)).toBe(true);
      expect(messages).toHaveLength(1);
      expect(messages[0]).toContain("epoll thread stopped: epoll_wait: EINVAL");
      lib.rl_close(client);
      // Reported once: later ticks stay quiet.
      expect(await waitFor(() => messages.length > 1, 300)).toBe(false);
    } finally {
      await relay.stop(0);
    }
  });
});

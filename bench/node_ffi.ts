// FFI and wake-up costs of the koffi binding on Node.js (issue 15; the numbers are in
// docs/node.md). Bundled for Node and run there:
//
//   node_modules/.bin/bun bench/node_ffi.ts [PARTS]    (bundles itself, then runs on node)
//   node_modules/.bin/bun bench/node_ffi.ts --bun      (the same on Bun, for comparison:
//                                                       bun:ffi, and a threadsafe JSCallback
//                                                       where Node has its pipe; no koffi)
//
// Calls: ns per call of an i32-only function, a pointer passed as a number (uintptr_t), a
// pointer passed as a typed array (the binding asks rl_addr for its address first), and
// rl_addr alone. Wake-ups: µs per round trip "a datagram arrives on a watched socket ->
// JS runs -> JS sends the next one", over loopback, for each way C can wake JS on Node:
//   pipe      the relay's way: the epoll thread writes a byte to a pipe Node watches
//   koffi-cb  the epoll thread calls a koffi-registered callback (queued to the JS
//             thread; the C thread blocks until it ran)
//   worker    a worker_threads Worker blocks in rl_poll_wait and posts to the main thread
//   dgram     node:dgram on Node's own event loop, for reference
import { spawnSync } from "node:child_process";
import { createSocket } from "node:dgram";
import { createRequire } from "node:module";
import { join } from "node:path";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";

const ROUND_TRIPS = 5000;
const CALLS = 2_000_000;

const onBun = process.argv.includes("--bun");
if (process.versions.bun && !onBun && isMainThread) {
  // Under Bun: bundle for Node next to the relay's bundle (two levels below the root).
  const { bundleForNode } = await import("../scripts/node_bundle.ts");
  const root = join(import.meta.dirname, "..");
  const out = join(root, "build", "node-bench");
  await bundleForNode([join(root, "bench", "node_ffi.ts")], out);
  const node = process.env.RELAY_NODE ?? "node";
  const r = spawnSync(node, [join(out, "node_ffi.js"), ...process.argv.slice(2)], {
    stdio: "inherit",
  });
  process.exit(r.status ?? 1);
}

const { loadFfi, ptr } = await import("../src/sys/ffi.ts");
const { parseAddress } = await import("../src/sys/addr.ts");
const { Poller } = await import("../src/sys/poller.ts");
const lib = loadFfi();

function nsPerCall(label: string, f: () => void): void {
  for (let i = 0; i < CALLS / 10; i++) f(); // warm-up (JIT)
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < CALLS; i++) f();
  const ns = Number(process.hrtime.bigint() - t0) / CALLS;
  console.log(`call  ${label.padEnd(34)} ${ns.toFixed(1)} ns`);
}

/** A UDP socket on 127.0.0.1 made by C, and its port. */
function udpSocket(): { fd: number; port: number } {
  const fd = lib.rl_socket(0, parseAddress("127.0.0.1")!, 0, 0, 0, 0);
  const port = lib.rl_local_port(fd, new Uint8Array(new ArrayBuffer(16)));
  return { fd, port };
}

// drain() reads drainBuffer itself: a pointer number alone would not keep it alive.
const drainBuffer = new Uint8Array(new ArrayBuffer(2048));
const drainAt = ptr(drainBuffer);
function drain(fd: number): void {
  while (lib.rl_stream_recv(fd, drainAt, drainBuffer.length) > 0) {}
}

/** Round trips: send, await `arrived`, repeat; returns µs per round trip (median of 5). */
async function roundTrips(
  label: string,
  port: number,
  arm: (arrived: () => void) => void,
): Promise<void> {
  const sender = createSocket("udp4");
  const one = new Uint8Array([1]);
  let waiting: (() => void) | null = null;
  arm(() => {
    const w = waiting;
    waiting = null;
    w?.();
  });
  const runs: number[] = [];
  for (let r = 0; r < 6; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < ROUND_TRIPS / 5; i++) {
      await new Promise<void>((resolve) => {
        waiting = resolve;
        sender.send(one, port, "127.0.0.1");
      });
    }
    if (r > 0) runs.push(Number(process.hrtime.bigint() - t0) / (ROUND_TRIPS / 5) / 1000);
  }
  sender.close();
  runs.sort((a, b) => a - b);
  console.log(`wake  ${label.padEnd(34)} ${runs[2].toFixed(1)} µs per round trip`);
}

/** Only the parts named on the command line (calls pipe koffi-cb worker dgram), or all. */
const only = new Set(process.argv.slice(2).filter((a) => a !== "--bun"));
const wanted = (part: string) => only.size === 0 || only.has(part);

async function main(): Promise<void> {
  const numberArg = new Uint32Array(new ArrayBuffer(64));
  const numberAt = ptr(numberArg);
  if (wanted("calls")) {
    nsPerCall("i32 only (rl_poll_failed)", () => lib.rl_poll_failed(-1));
  nsPerCall("pointer as a number (rl_poll_take)", () => lib.rl_poll_take(-1, numberAt, 1));
  nsPerCall("pointer as a typed array", () => lib.rl_poll_take(-1, numberArg, 1));
  nsPerCall("rl_addr (ptr of a typed array)", () => ptr(numberArg));
  }

  const keepAlive = setInterval(() => {}, 1000);

  // pipe: the relay's threaded Poller on Node.
  if (wanted("pipe")) {
    const { fd, port } = udpSocket();
    let arrived = () => {};
    const poller = new Poller(
      lib,
      (token) => {
        drain(fd);
        poller.rearm(fd, token);
        arrived();
      },
      { tokensMax: 4 },
    );
    poller.start();
    poller.add(fd, 1);
    const how = onBun ? "JSCallback (the relay's way on Bun)" : "pipe (the relay's way)";
    await roundTrips(how, port, (a) => {
      arrived = a;
    });
    poller.stop();
    lib.rl_close(fd);
  }

  // koffi-cb: the same C thread calling a koffi-registered callback (never koffi on Bun).
  if (wanted("koffi-cb") && !onBun) {
    const koffi = createRequire(import.meta.url)("koffi");
    const so = koffi.load(join(import.meta.dirname, "..", "..", "build", "librelay.so"));
    const WakeFn = koffi.proto("void rl_wake_fn(int32_t count)");
    const start = so.func("int32_t rl_poll_start(int32_t, rl_wake_fn *)");
    const { fd, port } = udpSocket();
    const poller = lib.rl_poll_open(4);
    let arrived = () => {};
    const callback = koffi.register(() => {
      drain(fd);
      lib.rl_poll_rearm(poller, fd, 1);
      lib.rl_poll_take(poller, numberAt, 16);
      lib.rl_poll_sleep(poller);
      arrived();
    }, koffi.pointer(WakeFn));
    start(poller, callback);
    lib.rl_poll_add(poller, fd, 1);
    await roundTrips("koffi-cb (koffi.register)", port, (a) => {
      arrived = a;
    });
    // The thread is idle in epoll_wait now (no datagram pending): stopping cannot meet a
    // callback waiting for this thread.
    lib.rl_poll_stop(poller);
    koffi.unregister(callback);
    lib.rl_close(fd);
  }

  // worker: a Worker blocks in rl_poll_wait (inline mode) and posts to the main thread.
  if (wanted("worker")) {
    const { fd, port } = udpSocket();
    const worker = new Worker(new URL(import.meta.url), { workerData: { fd } });
    await new Promise((resolve) => worker.once("message", resolve));
    let arrived = () => {};
    worker.on("message", () => arrived());
    await roundTrips("worker (rl_poll_wait + postMessage)", port, (a) => {
      arrived = a;
    });
    await worker.terminate();
    lib.rl_close(fd);
  }

  // dgram: Node's own UDP socket, for reference.
  if (wanted("dgram")) {
    const socket = createSocket("udp4");
    await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
    let arrived = () => {};
    socket.on("message", () => arrived());
    await roundTrips("dgram (node:dgram, reference)", socket.address().port, (a) => {
      arrived = a;
    });
    socket.close();
  }
  clearInterval(keepAlive);
}

/** In the worker: wait in epoll_wait, drain, tell the main thread. */
function workerLoop(fd: number): void {
  const poller = lib.rl_poll_open(4);
  lib.rl_poll_level_triggered(poller);
  lib.rl_poll_add(poller, fd, 1);
  parentPort!.postMessage("ready");
  const loop = () => {
    if (lib.rl_poll_wait(poller, 20) > 0) {
      lib.rl_poll_take(poller, drainAt, drainBuffer.length / 4);
      drain(fd);
      parentPort!.postMessage(1);
    }
    setImmediate(loop);
  };
  loop();
}

if (isMainThread) await main();
else workerLoop((workerData as { fd: number }).fd);

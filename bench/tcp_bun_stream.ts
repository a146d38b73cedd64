// The pure-Bun TCP relay that bench/tcp.ts measures as a baseline: the same TPROXY
// listener (made by the C helper, IP_TRANSPARENT), adopted with Bun.listen({fd}); each
// accepted socket's local address is the original destination, Bun.connect() opens the
// upstream, and bytes cross JavaScript with backpressure (a peer that cannot take more
// pauses the other side; at most one pending chunk list per direction).
//
// It is the baseline behind the design (src/tcp/relay.ts): bench/tcp.ts measures it
// beside the relay's C splice engine, for throughput and for CPU per byte and per
// connection. Not a product path: no SO_MARK (its upstream traffic is only exempt
// from interception because the bench intercepts fixed ports), no limits, timeouts,
// resets or metrics.
//
//   node_modules/.bin/bun bench/tcp_bun_stream.ts ADDRESS PORT
import type { Socket } from "bun";
import { parseAddress } from "../src/sys/addr.ts";
import { loadFfi } from "../src/sys/ffi.ts";
import { SOCK } from "../src/sys/layout.ts";

interface Side {
  peer: Socket<Side> | null;
  /** Bytes the peer could not take yet (copied: Bun reuses its receive buffers). */
  pending: Uint8Array[];
  /** Ended by its source before the peer existed or drained. */
  ending: boolean;
}

const [address, portText] = process.argv.slice(2);
const addr = parseAddress(address ?? "");
if (!addr || !portText) throw new Error("usage: bun bench/tcp_bun_stream.ts ADDRESS PORT");
const lib = loadFfi();
const ipv6 = address!.includes(":");
const fd = lib.rl_socket(SOCK.stream | SOCK.transparent | SOCK.reuseAddr | SOCK.freeBind |
  (ipv6 ? SOCK.ipv6 | SOCK.v6Only : 0), addr, Number(portText), 0, 0, 0);
if (fd < 0) throw new Error(`listener: ${fd}`);
if (lib.rl_listen(fd, 1024) < 0) throw new Error("listen");

/** Writes to `to`; what does not fit waits in to.data.pending and pauses `from`. */
function forward(from: Socket<Side>, to: Socket<Side>, bytes: Uint8Array): void {
  const state = to.data;
  if (state.pending.length > 0) {
    state.pending.push(bytes.slice());
    return;
  }
  const written = to.write(bytes);
  if (written < bytes.length) {
    state.pending.push(bytes.slice(written));
    from.pause();
  }
}

function drain(to: Socket<Side>): void {
  const state = to.data;
  while (state.pending.length > 0) {
    const head = state.pending[0];
    const written = to.write(head);
    if (written < head.length) {
      state.pending[0] = head.subarray(written);
      return;
    }
    state.pending.shift();
  }
  to.data.peer?.resume();
  if (state.ending) to.end();
}

function finish(to: Socket<Side> | null): void {
  if (!to) return;
  if (to.data.pending.length > 0) to.data.ending = true;
  else to.end();
}

// `fd` works at run time (DESIGN.md "TCP") but bun-types 1.4.5 does not declare it.
const adopt = { fd } as unknown as { hostname: string; port: number };
Bun.listen<Side>({
  ...adopt,
  socket: {
    open(client) {
      client.data = { peer: null, pending: [], ending: false };
      client.pause(); // nothing to forward to until the upstream is connected
      Bun.connect<Side>({
        hostname: client.localAddress,
        port: client.localPort,
        socket: {
          open(upstream) {
            upstream.data = { peer: client, pending: [], ending: false };
            client.data.peer = upstream;
            client.resume();
          },
          data(upstream, bytes) {
            forward(upstream, client, bytes);
          },
          drain(upstream) {
            drain(upstream);
          },
          end(upstream) {
            finish(client);
            void upstream;
          },
          close() {
            finish(client);
          },
          connectError() {
            client.terminate();
          },
        },
      }).catch(() => client.terminate());
    },
    data(client, bytes) {
      const upstream = client.data.peer;
      if (upstream) forward(client, upstream, bytes);
    },
    drain(client) {
      drain(client);
    },
    end(client) {
      finish(client.data.peer);
    },
    close(client) {
      finish(client.data.peer);
    },
  },
});
console.log(JSON.stringify({ event: "ready", pid: process.pid }));
// Keeps the process alive (the adopted listener alone may not).
setInterval(() => {}, 1 << 30);

// SOCKS5 UDP associations (RFC 1928 §7) for the UDP data path: one per client endpoint
// (ip:port) and socks5 outbound, carried by that endpoint's upstream socket (so every
// destination of the client shares it: endpoint-independent), and held open by a TCP
// control connection to the proxy, opened here with the non-blocking Socks5Handshake.
//
// States: Connecting (TCP connect in progress) -> Handshaking (greeting, maybe RFC 1929
// authentication, UDP ASSOCIATE) -> Ready (the proxy's relay address is known). The
// control connection is watched for its end: EOF or an error ends the association, and
// the relay ends its sessions. The relay holds a session's datagrams until Ready.
//
// Indexed by the upstream socket's index (src/egress/upstream_pool.ts): at most one
// association per upstream socket.
import { type Pointer, ptr, type RelayLib } from "../sys/ffi.ts";
import type { UdpCounters } from "../metrics.ts";
import type { OutboundConfig } from "../policy/config.ts";
import { assert } from "../sys/assert.ts";
import { E, errnoName } from "../sys/errno.ts";
import { CMD_UDP_ASSOCIATE, Socks5Handshake } from "./socks5.ts";

export const enum AssociationState {
  None = 0,
  Connecting = 1,
  Handshaking = 2,
  Ready = 3,
}

/** What an event on a control connection changed. */
export const enum AssociationEvent {
  /** Nothing the sessions need to know. */
  None = 0,
  /** Now ready: send the held datagrams. */
  Ready = 1,
  /** Failed or ended: its sessions end (the caller closes it through them). */
  Ended = 2,
}

type Socks5Outbound = Extract<OutboundConfig, { type: "socks5" }>;

const READ_BYTES = 512;

export class Socks5Associations {
  private readonly state: Uint8Array;
  private readonly controlFd: Int32Array;
  private readonly controlToken: Int32Array;
  private readonly startedMs: Float64Array;
  private readonly timeoutMs: Float64Array;
  private readonly runtime: Int16Array;
  /** The proxy's UDP relay address (4 words, the session key's layout) and port. */
  readonly boundWords: Uint32Array;
  private readonly boundBytes: Uint8Array;
  private readonly boundPtr: Pointer;
  readonly boundPort: Uint16Array;
  private readonly handshakes: Array<Socks5Handshake | null>;
  /** Upstream indexes with an association, dense (swap-remove), and each one's place. */
  private readonly open: Int32Array;
  private readonly place: Int32Array;
  private openCount = 0;
  /** Associations per outbound runtime (for associationsMax). */
  private readonly perRuntime = new Map<number, number>();
  private readonly readBuffer = new Uint8Array(new ArrayBuffer(READ_BYTES));
  private readonly readPtr: Pointer = ptr(this.readBuffer);
  private readonly noSource = new Uint8Array(new ArrayBuffer(16));
  /** Why the last association ended (for the log). */
  lastError = "";

  constructor(
    private readonly lib: RelayLib,
    capacity: number,
    private readonly counters: UdpCounters,
    private readonly mark: number,
    /** Registers a control connection with the poller: its token, or -1. */
    private readonly register: (fd: number, upstream: number) => number,
    private readonly unregister: (token: number) => void,
    private readonly armOut: (fd: number, token: number) => void,
    private readonly readsOnly: (fd: number, token: number) => void,
  ) {
    this.state = new Uint8Array(capacity);
    this.controlFd = new Int32Array(capacity).fill(-1);
    this.controlToken = new Int32Array(capacity).fill(-1);
    this.startedMs = new Float64Array(capacity);
    this.timeoutMs = new Float64Array(capacity);
    this.runtime = new Int16Array(capacity).fill(-1);
    this.boundWords = new Uint32Array(capacity * 4);
    this.boundBytes = new Uint8Array(this.boundWords.buffer);
    this.boundPtr = ptr(this.boundBytes);
    this.boundPort = new Uint16Array(capacity);
    this.handshakes = new Array<Socks5Handshake | null>(capacity).fill(null);
    this.open = new Int32Array(capacity);
    this.place = new Int32Array(capacity).fill(-1);
  }

  get count(): number {
    return this.openCount;
  }

  /** Pointer to the 16-byte address of upstream's proxy UDP relay (for the send). */
  boundAddrPtr(upstream: number): Pointer {
    return (this.boundPtr + upstream * 16) as Pointer;
  }

  stateOf(upstream: number): AssociationState {
    return this.state[upstream];
  }

  /** Whether runtime `runtime` may open one more association. */
  mayOpen(runtime: number, o: Socks5Outbound): boolean {
    return (this.perRuntime.get(runtime) ?? 0) < o.associationsMax;
  }

  /**
   * Opens the association of upstream socket `upstream` through outbound `o`: the TCP
   * connect starts now. False (lastError says why) when it could not even start.
   */
  begin(upstream: number, runtime: number, o: Socks5Outbound, now: number): boolean {
    assert(this.state[upstream] === AssociationState.None, "association opened twice");
    const fd = this.lib.rl_tcp_connect(
      o.server.addr,
      o.server.port,
      0,
      this.noSource,
      0,
      this.mark,
    );
    if (fd < 0) {
      const errno = -fd & 0xffff; // -(step << 16 | errno), as rl_socket
      this.lastError = `connect to ${o.server.address}:${o.server.port}: ${errnoName(errno)}`;
      return false;
    }
    const token = this.register(fd, upstream);
    if (token < 0) {
      this.lib.rl_close(fd);
      this.lastError = "control connection: the poller refused it";
      return false;
    }
    this.armOut(fd, token);
    const v4 = o.server.addr[10] === 0xff && o.server.addr[11] === 0xff;
    const any = new Uint8Array(16);
    if (v4) any[10] = any[11] = 0xff;
    this.handshakes[upstream] = new Socks5Handshake({
      command: CMD_UDP_ASSOCIATE,
      // Where our datagrams will come from: unknown before they leave (RFC 1928 §6).
      address: { kind: "ip", addr: any, port: 0 },
      username: o.username,
      password: o.password,
    });
    this.state[upstream] = AssociationState.Connecting;
    this.controlFd[upstream] = fd;
    this.controlToken[upstream] = token;
    this.startedMs[upstream] = now;
    this.timeoutMs[upstream] = o.connectTimeoutMs;
    this.runtime[upstream] = runtime;
    this.boundBytes.set(o.server.addr, upstream * 16); // a 0.0.0.0 reply means the server
    this.boundPort[upstream] = 0;
    this.place[upstream] = this.openCount;
    this.open[this.openCount++] = upstream;
    this.perRuntime.set(runtime, (this.perRuntime.get(runtime) ?? 0) + 1);
    this.counters.socks5AssociationsOpened++;
    return true;
  }

  /** The control connection of `upstream` is ready (readable, writable or in error). */
  onEvent(upstream: number): AssociationEvent {
    const fd = this.controlFd[upstream];
    const token = this.controlToken[upstream];
    const state = this.state[upstream];
    if (state === AssociationState.Connecting) {
      const err = this.lib.rl_socket_error(fd);
      if (err < 0) return this.fail(`connect: ${errnoName(-err)}`);
      this.state[upstream] = AssociationState.Handshaking;
    }
    if (this.state[upstream] === AssociationState.Handshaking) {
      const h = this.handshakes[upstream]!;
      const out = h.output();
      if (out.length > 0) {
        const n = this.lib.rl_stream_send(fd, out, out.length);
        if (n < 0 && -n !== E.EAGAIN) return this.fail(`send: ${errnoName(-n)}`);
        if (n > 0) h.written(n);
      }
      for (;;) {
        const n = this.lib.rl_stream_recv(fd, this.readPtr, READ_BYTES);
        if (n === -E.EAGAIN) break;
        if (n < 0) return this.fail(`receive: ${errnoName(-n)}`);
        if (n === 0) {
          h.closed();
          return this.fail(h.error ?? "closed");
        }
        if (h.received(this.readBuffer.slice(0, n))) break;
      }
      if (h.failed) return this.fail(h.error ?? "failed");
      if (h.done) {
        const bound = h.bound!;
        if (bound.kind !== "ip") return this.fail("the proxy named its UDP relay by a name");
        // 0.0.0.0 / :: : "the address the client connected to" (the server's).
        if (bound.addr.some((b, i) => b !== 0 && !(i >= 10 && i < 12 && b === 0xff))) {
          this.boundBytes.set(bound.addr, upstream * 16);
        }
        this.boundPort[upstream] = bound.port;
        this.state[upstream] = AssociationState.Ready;
        this.handshakes[upstream] = null;
        this.readsOnly(fd, token);
        return AssociationEvent.Ready;
      }
      if (h.output().length > 0) this.armOut(fd, token);
      else this.readsOnly(fd, token);
      return AssociationEvent.None;
    }
    // Ready: the proxy sends nothing more; EOF or an error is the association's end.
    for (;;) {
      const n = this.lib.rl_stream_recv(fd, this.readPtr, READ_BYTES);
      if (n === -E.EAGAIN) break;
      if (n <= 0) {
        this.lastError = n === 0 ? "the proxy closed the control connection" : errnoName(-n);
        this.counters.socks5ControlLost++;
        return AssociationEvent.Ended;
      }
    }
    this.readsOnly(fd, token);
    return AssociationEvent.None;
  }

  /** Associations still setting up past their outbound's connectTimeoutMs, into `out`. */
  overdue(now: number, out: number[]): void {
    for (let k = 0; k < this.openCount; k++) {
      const u = this.open[k];
      if (this.state[u] === AssociationState.Ready) continue;
      if (this.startedMs[u] + this.timeoutMs[u] <= now) out.push(u);
    }
  }

  /** Counts a set-up that timed out (the caller ends its sessions). */
  timedOut(): void {
    this.lastError = "connect and handshake did not finish within connectTimeoutMs";
    this.counters.socks5AssociationsFailed++;
  }

  /** Closes the association of `upstream` (its last session ended), if it has one. */
  close(upstream: number): void {
    if (this.state[upstream] === AssociationState.None) return;
    this.unregister(this.controlToken[upstream]);
    this.lib.rl_close(this.controlFd[upstream]);
    this.controlFd[upstream] = -1;
    this.controlToken[upstream] = -1;
    this.state[upstream] = AssociationState.None;
    this.handshakes[upstream] = null;
    const k = this.place[upstream];
    const last = this.open[--this.openCount];
    this.open[k] = last;
    this.place[last] = k;
    this.place[upstream] = -1;
    const runtime = this.runtime[upstream];
    this.perRuntime.set(runtime, (this.perRuntime.get(runtime) ?? 1) - 1);
  }

  private fail(message: string): AssociationEvent {
    this.lastError = message;
    this.counters.socks5AssociationsFailed++;
    return AssociationEvent.Ended;
  }
}

// The io_uring UDP data plane (issue 14; ffi/uring.c; docs/io_uring.md): the Worker's
// loop makes one io_uring_enter per round, which submits the sends queued by the last
// round and waits for completions. Each UDP socket has a multishot recvmsg armed in the
// ring; its datagrams are handed over in rl_recv_batch's layout (slab slots + rl_meta),
// so UdpRelay's batch handling is the epoll path's. The sockets that are not UDP data
// (the address watch, SOCKS5 control connections) stay on the epoll Poller, whose fd the
// ring watches: when it is readable, the Poller's ready sockets are handled in-line.
//
// udp.ioBackend picks the plane at start-up: "auto" probes (rl_uring_probe: a ring, a
// buffer ring, a multishot recvmsg on a socket pair) and falls back to epoll when the
// kernel refuses (kernel.io_uring_disabled, seccomp, an old kernel).
import type { UdpIoBackendSetting } from "../config/schema.ts";
import type { Poller } from "../sys/poller.ts";
import { errnoName } from "../sys/errno.ts";
import { type Pointer, ptr, type RelayLib } from "../sys/ffi.ts";
import { faultUringProbe } from "../sys/test_faults.ts";

export type UdpIoBackend = "epoll" | "io_uring";

/** rl_uring_stats() slots (RL_URING_STAT_* in ffi/relay.h). */
export const URING_STATS = {
  enters: 0,
  completions: 1,
  noBuffers: 2,
  sendsQueued: 3,
  sendsDirect: 4,
  count: 5,
} as const;

/** RL_URING_WATCH_TOKEN: the epoll fd of the non-UDP sockets is readable. */
const WATCH_TOKEN = 0x3fffffff;
/** Tokens taken per wait (as the Poller's TAKE_COUNT_MAX). */
const TAKE_COUNT_MAX = 256;
/**
 * The epoll watch is a multishot poll (a wake-up per new event): a socket of the epoll
 * set left ready without a new event is caught by a pollNow() at least this often.
 */
const EPOLL_RECHECK_MS = 20;
/** Submission queue entries: a round's sends and re-arms fit without an extra submit. */
const SQ_ENTRIES = 1024;
/** Provided buffers: a power of two, at least this many, up to BUFFERS_MAX. */
const BUFFERS_MIN = 256;
const BUFFERS_MAX = 4096;
/** Bytes of provided buffers at most (a 64 KiB datagramBytesMax gets fewer buffers). */
const BUFFER_BYTES_MAX = 16 << 20;
/** A buffer's bytes before its payload: the recvmsg header, name, control data (rounded). */
const BUFFER_HEADER_BYTES = 128;

/** The plane chosen at start-up, and why (for the log). */
export interface BackendChoice {
  backend: UdpIoBackend;
  reason: string;
}

/**
 * udp.ioBackend at start-up. Throws (naming the field and why) when "io_uring" is asked
 * for and cannot run.
 */
export function chooseIoBackend(
  lib: RelayLib,
  setting: UdpIoBackendSetting,
  inline: boolean,
): BackendChoice {
  if (setting === "epoll") return { backend: "epoll", reason: "udp.ioBackend epoll" };
  if (!inline) {
    if (setting === "io_uring") {
      throw new Error(
        'udp.ioBackend "io_uring" needs udp.dataPlane "worker" (the ring is waited on ' +
          "by the data path's own thread)",
      );
    }
    return { backend: "epoll", reason: 'udp.dataPlane "callback"' };
  }
  const rc = faultUringProbe() || lib.rl_uring_probe();
  if (rc === 0) return { backend: "io_uring", reason: `udp.ioBackend ${setting}` };
  const why = `io_uring unavailable: ${errnoName(-rc)}${probeHint(-rc)}`;
  if (setting === "io_uring") throw new Error(`udp.ioBackend "io_uring": ${why}`);
  return { backend: "epoll", reason: `${why}; udp.ioBackend auto falls back to epoll` };
}

function probeHint(errno: number): string {
  // EPERM: kernel.io_uring_disabled = 2 (or 1 outside io_uring_group); ENOSYS: seccomp
  // or a kernel built without it; EINVAL/EOPNOTSUPP: older than multishot recvmsg (6.0).
  if (errno === 1) return " (kernel.io_uring_disabled, or a seccomp filter)";
  if (errno === 38) return " (a seccomp filter, or a kernel without io_uring)";
  if (errno === 22 || errno === 95) return " (a kernel older than 6.0)";
  return "";
}

export interface UringPlaneOptions {
  tokensMax: number;
  slotBytes: number;
  /** Send slots: datagrams in flight at once (more are sent by sendmsg at once). */
  sendSlots: number;
  /** The epoll Poller of the non-UDP sockets (inline mode; never started). */
  poller: Poller;
  onToken: (token: number) => void;
  onRoundEnd: () => void;
  onError: (err: unknown) => void;
  /** A send completion: its direction (1: to a target) and result (bytes or -errno). */
  onSendResult: (toTarget: number, result: number) => void;
}

export class UringPlane {
  private readonly lib: RelayLib;
  private readonly handle: number;
  private readonly options: UringPlaneOptions;
  // Each on its own ArrayBuffer so the cached pointers stay valid (see UdpRelay).
  private readonly ready = new Uint32Array(new ArrayBuffer(TAKE_COUNT_MAX * 4));
  private readonly readyPtr: Pointer;
  private readonly completions: Int32Array;
  private readonly completionsPtr: Pointer;
  private readonly slotsOut = new Int32Array(new ArrayBuffer(256 * 4));
  private readonly slotsOutPtr: Pointer;
  /** Per send slot in flight: its direction, for the counters at its completion. */
  private readonly slotToTarget: Uint8Array;
  private readonly stats = new Float64Array(new ArrayBuffer(URING_STATS.count * 8));
  private readonly statsPtr: Pointer;
  private readonly passBound = (waitMs: number): number => this.pass(waitMs);
  private closed = false;
  /** When the epoll set was last looked at (performance.now()). */
  private epollCheckedMs = 0;

  constructor(lib: RelayLib, options: UringPlaneOptions) {
    this.lib = lib;
    this.options = options;
    this.readyPtr = ptr(this.ready);
    this.completions = new Int32Array(new ArrayBuffer((1 + 2 * options.sendSlots) * 4));
    this.completionsPtr = ptr(this.completions);
    this.slotsOutPtr = ptr(this.slotsOut);
    this.statsPtr = ptr(this.stats);
    this.slotToTarget = new Uint8Array(options.sendSlots);
    let buffers = BUFFERS_MIN;
    const bufferBytes = options.slotBytes + BUFFER_HEADER_BYTES;
    while (buffers < BUFFERS_MAX && buffers * 2 * bufferBytes <= BUFFER_BYTES_MAX) {
      buffers *= 2;
    }
    const handle = lib.rl_uring_open(
      SQ_ENTRIES,
      options.tokensMax,
      buffers,
      options.slotBytes,
      options.sendSlots,
    );
    if (handle < 0) throw new Error(`io_uring set-up failed: ${errnoName(-handle)}`);
    this.handle = handle;
  }

  /** Arms the socket's multishot receive; 0 or -errno (the registry's contract). */
  add(fd: number, token: number): number {
    return this.lib.rl_uring_add(this.handle, fd, token);
  }

  /** Cancels the socket's receive and submits what is queued (the caller closes next). */
  remove(token: number): void {
    if (this.closed) return;
    const rc = this.lib.rl_uring_del(this.handle, token);
    if (rc < 0 && rc !== -2) throw new Error(`rl_uring_del: ${errnoName(-rc)}`);
  }

  /** The token's datagrams into slab slots, as rl_recv_batch: count, 0, or -errno. */
  recv(token: number, slab: Pointer, slotBytes: number, count: number, meta: Pointer): number {
    return this.lib.rl_uring_recv(this.handle, token, slab, slotBytes, count, meta);
  }

  /**
   * Queues a SendQueue's entries as SQEs (submitted by the next wait). After it,
   * queued(k) says whether entry k's result comes later, with its completion.
   */
  send(slab: Pointer, slabBytes: number, sends: Pointer, count: number): void {
    const rc = this.lib.rl_uring_send_batch(
      this.handle,
      slab,
      slabBytes,
      sends,
      count,
      this.slotsOutPtr,
    );
    if (rc < 0) throw new Error(`rl_uring_send_batch: ${errnoName(-rc)}`);
  }

  /** Whether entry k of the last send() is in flight; records its direction if so. */
  queued(k: number, toTarget: number): boolean {
    const slot = this.slotsOut[k];
    if (slot < 0) return false;
    this.slotToTarget[slot] = toTarget;
    return true;
  }

  start(): void {
    const rc = this.lib.rl_uring_watch(this.handle, this.options.poller.fd);
    if (rc < 0) throw new Error(`io_uring poll on the epoll fd: ${errnoName(-rc)}`);
    // The Poller's inline loop (timers, notices of messages, event-loop turns) with the
    // ring's wait in the place of epoll_wait.
    this.options.poller.startWith(this.passBound);
  }

  stop(): void {
    if (this.closed) return;
    // The last round's sends, queued for a wait that will not come.
    this.lib.rl_uring_submit(this.handle);
    this.readStats();
    this.closed = true;
    this.lib.rl_uring_close(this.handle);
  }

  /** A counter (URING_STATS), live; after stop(), its final value. */
  stat(which: number): number {
    if (!this.closed) this.readStats();
    return this.stats[which];
  }

  private readStats(): void {
    const rc = this.lib.rl_uring_stats(this.handle, this.statsPtr);
    if (rc !== URING_STATS.count) throw new Error(`rl_uring_stats: ${rc}`);
  }

  /**
   * One pass of the Poller's inline loop: the round's one io_uring_enter (submits the last
   * round's sends, waits up to waitMs), then the round. The UDP sockets it found ready (0:
   * nothing; send completions and the epoll set are not traffic), or -1 when it failed
   * (reported).
   */
  private pass(waitMs: number): number {
    const o = this.options;
    const n = this.lib.rl_uring_wait(
      this.handle,
      Math.min(waitMs, EPOLL_RECHECK_MS),
      this.readyPtr,
      TAKE_COUNT_MAX,
      this.completionsPtr,
    );
    if (n < 0) {
      o.onError(new Error(`io_uring_enter: ${errnoName(-n)}`));
      return -1;
    }
    let epollSeen = false;
    try {
      this.completed();
      for (let k = 0; k < n; k++) {
        const token = this.ready[k];
        if (token === WATCH_TOKEN) {
          o.poller.pollNow();
          epollSeen = true;
        } else o.onToken(token);
        if (this.closed) return 0; // a handler stopped the data path
      }
      if (n > 0) o.onRoundEnd();
      const now = performance.now();
      if (epollSeen) this.epollCheckedMs = now;
      else if (now - this.epollCheckedMs >= EPOLL_RECHECK_MS) {
        this.epollCheckedMs = now;
        o.poller.pollNow();
      }
    } catch (err) {
      o.onError(err);
    }
    // The epoll set's token is not traffic (notices of messages come through it).
    return epollSeen ? n - 1 : n;
  }

  /** Counts the send completions the last wait collected. */
  private completed(): void {
    const c = this.completions;
    const count = c[0];
    for (let k = 0; k < count; k++) {
      this.options.onSendResult(this.slotToTarget[c[1 + 2 * k]], c[2 + 2 * k]);
    }
  }
}

// The epoll thread's bridge to JavaScript (ffi/poller.c).
//
// C runs epoll_wait on every data socket (EPOLLONESHOT), pushes each ready socket's
// token into a ring, and wakes us (a threadsafe JSCallback under Bun, a byte in a pipe
// under Node: src/sys/ffi.ts startPollThread) only when we said we are idle. run() then
// takes tokens in rounds: for each, onToken() drains the socket and re-arms it (in its
// own `finally`: a socket not re-armed would stall forever); onRoundEnd() lets the
// caller send what the round produced in one batch. When the ring is empty we tell C
// we are going idle (rl_poll_sleep), closing the race with a token pushed meanwhile.
import { errnoName } from "./errno.ts";
import { type PollThread, type Pointer, ptr, type RelayLib, startPollThread } from "./ffi.ts";

/** rl_poll_stats() output slots (RL_POLL_STAT_* in ffi/relay.h). */
export const POLL_STATS = { wakes: 0, events: 1, overflows: 2, count: 3 } as const;

/** Set on the token by the C thread when epoll reported EPOLLERR (ICMP error queued). */
export const WAKE_ERROR_FLAG = 0x40000000;
export const WAKE_TOKEN_MASK = 0x3fffffff;

/** Tokens taken from the ring per call. */
const TAKE_COUNT_MAX = 256;
/** Rounds per callback before yielding to the event loop (timers, signals, TCP). */
const ROUNDS_MAX = 64;

/**
 * Inline mode: the thread's slice. It waits in epoll_wait and handles what is ready,
 * again and again, for up to this long, and only then lets its event loop turn once
 * (messages from the main thread, timers). Turning it after every wake-up cost a second
 * poll (Bun's own epoll_pwait2) and the loop's bookkeeping per round: under load that is
 * a system call per round that a C relay does not make. Also the longest a message or a
 * timer waits, idle or busy.
 */
const INLINE_SLICE_MS = 20;

export interface PollerOptions {
  /**
   * Inline mode: no epoll thread. The calling thread (a Worker's, which may block) waits
   * in epoll_wait itself: one wake-up per packet burst instead of two (kernel to the
   * epoll thread, then the epoll thread to JS), the difference measured in bench/udp.ts.
   */
  inline?: boolean;
  /** Sockets registered at most (sizes the C ring). */
  tokensMax: number;
  /** Called after each round of tokens. */
  onRoundEnd?: () => void;
  /**
   * An exception from onToken/onRoundEnd: a bug on the data path. The owner ends the
   * process (default: rethrow, so it ends as an uncaught exception with its stack).
   */
  onError?: (err: unknown) => void;
}

export class Poller {
  private readonly lib: RelayLib;
  private readonly handle: number;
  private thread: PollThread | null = null;
  private readonly inline: boolean;
  private readonly inlineBound = () => this.inlineLoop();
  // On its own ArrayBuffer so the cached pointer stays valid (see UdpRelay's buffers).
  private readonly ready = new Uint32Array(new ArrayBuffer(TAKE_COUNT_MAX * 4));
  private readonly readyPtr: Pointer;
  // 64-bit counters arrive as doubles (exact to 2^53): nothing wraps on the way.
  private readonly stats = new Float64Array(new ArrayBuffer(POLL_STATS.count * 8));
  private readonly statsPtr: Pointer;
  private readonly onToken: (token: number) => void;
  private readonly onRoundEnd: () => void;
  private readonly onError: (err: unknown) => void;
  private readonly runBound = () => this.run();
  private running = false;
  private closed = false;
  /** The epoll thread died (check()): no more rounds; stop() still joins and closes. */
  private dead = false;

  constructor(lib: RelayLib, onToken: (token: number) => void, options: PollerOptions) {
    this.lib = lib;
    this.onToken = onToken;
    this.onRoundEnd = options.onRoundEnd ?? (() => {});
    this.onError =
      options.onError ??
      ((err) => {
        throw err;
      });
    this.readyPtr = ptr(this.ready);
    this.statsPtr = ptr(this.stats);
    const handle = lib.rl_poll_open(options.tokensMax);
    if (handle < 0) throw new Error(`epoll_create1/eventfd failed: ${-handle}`);
    this.handle = handle;
    this.inline = options.inline === true;
    if (this.inline) {
      // One thread waits and drains: level-triggered, and rearm() costs nothing.
      const rc = lib.rl_poll_level_triggered(handle);
      if (rc < 0) throw new Error(`rl_poll_level_triggered: ${-rc}`);
    }
  }

  add(fd: number, token: number): number {
    return this.lib.rl_poll_add(this.handle, fd, token);
  }

  rearm(fd: number, token: number): number {
    if (this.inline) return 0; // level-triggered: epoll reports the socket again by itself
    return this.lib.rl_poll_rearm(this.handle, fd, token);
  }

  /**
   * Arms fd for writability (a connect in progress, a full send buffer), one-shot like
   * the rest unless level-triggered; `add` registers it first. rearm() / readsOnly() arm
   * it for reading again.
   */
  armOut(fd: number, token: number, add = false): number {
    return this.lib.rl_poll_arm_out(this.handle, fd, token, add ? 1 : 0);
  }

  /** Arms fd (registered) for reading and writing at once; one-shot like the rest. */
  armBoth(fd: number, token: number): number {
    return this.lib.rl_poll_arm_both(this.handle, fd, token);
  }

  /** Back to reads only after armOut(), in either mode (level-triggered too). */
  readsOnly(fd: number, token: number): number {
    return this.lib.rl_poll_rearm(this.handle, fd, token);
  }

  remove(fd: number): number {
    return this.lib.rl_poll_del(this.handle, fd);
  }

  /** The epoll descriptor (the io_uring plane watches it: src/udp/uring_plane.ts). */
  get fd(): number {
    return this.lib.rl_poll_fd(this.handle);
  }

  /**
   * Inline mode driven by another loop (the io_uring plane), never start()ed: handles
   * what is ready now, without waiting.
   */
  pollNow(): void {
    const n = this.lib.rl_poll_wait(this.handle, 0);
    if (n < 0) throw new Error(`epoll_wait: ${errnoName(-n)}`);
    if (n > 0) this.rounds();
  }

  /** Wake calls from the C thread (each may carry many ready sockets). */
  get wakes(): number {
    return this.stat(POLL_STATS.wakes);
  }

  /** Ready events the C thread reported. */
  get events(): number {
    return this.stat(POLL_STATS.events);
  }

  /** Ring overflows: an invariant says 0. */
  get overflows(): number {
    return this.stat(POLL_STATS.overflows);
  }

  /** A counter, live; after stop(), its final value. */
  private stat(which: number): number {
    if (!this.closed) this.readStats();
    return this.stats[which];
  }

  private readStats(): void {
    const rc = this.lib.rl_poll_stats(this.handle, this.statsPtr);
    if (rc !== POLL_STATS.count) throw new Error(`rl_poll_stats: ${rc}`);
  }

  start(): void {
    if (this.inline) {
      this.running = true;
      setImmediate(this.inlineBound);
      return;
    }
    const thread = startPollThread(this.lib, this.handle, this.runBound);
    if (typeof thread === "number") throw new Error(`poll thread did not start: ${-thread}`);
    this.thread = thread;
    this.running = true;
  }

  /**
   * Inline mode: wait and handle what is ready until the slice (INLINE_SLICE_MS) is
   * over or a wait finds nothing, then let the event loop turn once, and repeat.
   */
  private inlineLoop(): void {
    if (this.closed) return;
    const sliceEnd = performance.now() + INLINE_SLICE_MS;
    let waitMs = INLINE_SLICE_MS;
    // Bounded: each pass waits or handles, and the slice's end stops it.
    for (;;) {
      const n = this.lib.rl_poll_wait(this.handle, waitMs);
      if (n < 0) {
        // epoll_wait itself failed: the data path cannot go on. Never spin on it silently.
        this.onError(new Error(`epoll_wait: ${errnoName(-n)}`));
        return;
      }
      if (n === 0) break; // nothing for the rest of the slice
      this.rounds();
      if (this.closed) return; // a handler stopped the data path
      waitMs = Math.ceil(sliceEnd - performance.now());
      if (waitMs <= 0) break;
    }
    setImmediate(this.inlineBound);
  }

  /** Threaded mode: takes ready tokens in rounds until the ring is empty, then goes idle. */
  private run(): void {
    if (this.closed) return;
    if (!this.check()) return;
    if (this.rounds()) return; // idle: C will call us
    // Still busy: let the event loop turn (timers, signals), then go on. We hold the
    // "awake" flag, so C does not call us meanwhile.
    setImmediate(this.runBound);
  }

  /** Up to ROUNDS_MAX rounds; true when the ring ran empty (and, threaded, we went idle). */
  private rounds(): boolean {
    for (let round = 0; round < ROUNDS_MAX; round++) {
      const n = this.lib.rl_poll_take(this.handle, this.readyPtr, TAKE_COUNT_MAX);
      if (n <= 0) {
        if (this.inline) return true;
        if (this.lib.rl_poll_sleep(this.handle) === 0) return true;
        continue;
      }
      for (let k = 0; k < n; k++) {
        try {
          this.onToken(this.ready[k]);
        } catch (err) {
          this.onError(err);
        }
      }
      try {
        this.onRoundEnd();
      } catch (err) {
        this.onError(err);
      }
    }
    return false;
  }

  /**
   * Threaded mode: whether the epoll thread is alive. When it died (epoll_wait failed),
   * reports it through onError (the owner ends the process) and returns false. The
   * thread wakes us once when it dies; owners also call this from their timers.
   */
  check(): boolean {
    if (this.inline || this.closed) return true;
    if (this.dead) return false;
    const failed = this.lib.rl_poll_failed(this.handle);
    if (failed === 0) return true;
    this.dead = true;
    this.onError(new Error(`epoll thread stopped: epoll_wait: ${errnoName(-failed)}`));
    return false;
  }

  /** Joins the thread, then closes what woke us (calling a closed callback segfaults). */
  stop(): void {
    if (this.closed) return;
    this.readStats(); // the counters' final values outlive the C poller
    this.closed = true;
    const rc = this.lib.rl_poll_stop(this.handle);
    if (rc < 0) throw new Error(`poll thread did not stop: ${-rc}`);
    this.running = false;
    this.thread?.close();
    this.thread = null;
  }

  get isRunning(): boolean {
    return this.running;
  }
}

// The epoll thread's bridge to JavaScript (ffi/poller.c).
//
// C runs epoll_wait on every data socket (EPOLLONESHOT), pushes each ready socket's
// token into a ring, and wakes us (a threadsafe JSCallback under Bun, a byte in a pipe
// under Node: src/sys/ffi.ts startPollThread) only when we said we are idle. run() then
// takes tokens in rounds: for each, onToken() drains the socket and re-arms it (in its
// own `finally`: a socket not re-armed would stall forever); onRoundEnd() lets the
// caller send what the round produced in one batch. When the ring is empty we tell C
// we are going idle (rl_poll_sleep), closing the race with a token pushed meanwhile.
import { assert } from "./assert.ts";
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
 * Inline mode: the longest the loop runs without letting its event loop turn. It does
 * not need to turn it at all while traffic flows: its timers run from the loop
 * (every()/after()) and a message from the main thread comes with a notice in the same
 * epoll set (notify(), RL_POLL_NOTIFY_RING_TOKEN), after which the loop turns the event
 * loop until the message was handled. Turning it after every wake-up, as this loop first
 * did, cost a second poll (Bun's own epoll_pwait2) and the loop's bookkeeping per round:
 * a system call per round that a C relay does not make. This bound is only a safety net
 * for an event-loop task nobody announced (none is known).
 */
const INLINE_TURN_INTERVAL_MS = 1000;

/**
 * Inline mode, while an announced message is not yet handled: the longest a wait blocks
 * between two event-loop turns (a message being delivered, or a request that awaits
 * timers, like the TCP stop's grace period).
 */
const PENDING_WAIT_MS = 1;

/** Ring token of a notice (RL_POLL_NOTIFY_RING_TOKEN in ffi/relay.h); never a socket's. */
const NOTIFY_RING_TOKEN = 0x3fffffff;

/** Inline timers at most (the UDP relay uses two: its tick and the hold timer). */
const INLINE_TIMERS_MAX = 16;

/** Cancels a timer of every()/after(); calling it twice, or after it fired, is harmless. */
export type CancelTimer = () => void;

interface InlineTimer {
  dueMs: number;
  /** 0: once (after()). */
  periodMs: number;
  fn: () => void;
}

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
   * Inline mode: busy polling (udp.busyPollUs). For this long after the last wait that
   * found work, waits do not block: the thread stays on its core and sees the next
   * packet without a wake-up. 0: every wait may block.
   */
  busyPollUs?: number;
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
  /** Inline mode: timers the loop runs itself (no event-loop turn), due first or not. */
  private readonly timers: InlineTimer[] = [];
  /** Inline mode: messages announced (notify) and not yet handled (messageHandled). */
  private messagesPending = 0;
  /**
   * Inline mode: one wait and its rounds (epoll's, or startWith()'s): the sockets it
   * found ready (0: none; notices do not count), or -1 when it failed (reported
   * through onError).
   */
  private inlinePass: (waitMs: number) => number = (waitMs) => this.epollPass(waitMs);
  /** Inline mode: busy polling's window (setBusyPoll), in ms; 0 when off. */
  private busyPollMs = 0;
  /** Inline mode: when the last wait found work (performance.now()). */
  private busyAtMs = Number.NEGATIVE_INFINITY;
  /** Inline mode: waits that did not block because of busy polling, and found nothing. */
  private busyPollsEmpty = 0;
  /** Socket tokens handled by rounds() (not notices): what a wait found to do. */
  private tokensHandled = 0;
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
    this.setBusyPoll(options.busyPollUs ?? 0);
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
   * Inline mode under startWith() (the io_uring plane): handles what is ready on this
   * poller's own sockets now, without waiting.
   */
  pollNow(): void {
    const n = this.lib.rl_poll_wait(this.handle, 0);
    if (n < 0) throw new Error(`epoll_wait: ${errnoName(-n)}`);
    if (n > 0) this.rounds();
  }

  /**
   * Busy polling's window in µs (inline mode; a reload may change it). Threaded mode has
   * no wait of its own to shorten: it must be 0 there.
   */
  setBusyPoll(us: number): void {
    assert(Number.isInteger(us) && us >= 0, "busyPollUs is a non-negative integer");
    assert(us === 0 || this.inline, "busy polling needs inline mode");
    this.busyPollMs = us / 1000;
  }

  /** Waits that did not block because of busy polling and found nothing (spins). */
  get busyPolls(): number {
    return this.busyPollsEmpty;
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
   * Inline mode: wait and handle what is ready, run the timers that are due, and go on,
   * without turning the event loop, until a message was announced (it needs the event
   * loop to be delivered) or INLINE_TURN_INTERVAL_MS passed; then let the event loop turn
   * once, and repeat. While a message is pending the waits do not block.
   */
  private inlineLoop(): void {
    if (this.closed) return;
    const turnAtMs = performance.now() + INLINE_TURN_INTERVAL_MS;
    // Bounded: each pass waits at most until the next timer or turnAtMs.
    for (;;) {
      let now = performance.now();
      if (this.timers.length > 0 && this.runTimers(now)) now = performance.now();
      if (this.closed) return; // a timer stopped the data path
      const dueMs = this.messagesPending > 0 ? now + PENDING_WAIT_MS : turnAtMs;
      // Busy polling: within its window of the last work, a wait does not block.
      const spin = now - this.busyAtMs < this.busyPollMs;
      const waitMs = spin ? 0 : Math.max(0, Math.ceil(this.nextDueMs(dueMs) - now));
      const found = this.inlinePass(waitMs);
      if (found < 0) return; // failed: reported through onError
      if (found > 0) {
        if (this.busyPollMs > 0) this.busyAtMs = performance.now();
      } else if (spin) this.busyPollsEmpty++;
      if (this.closed) return; // a handler stopped the data path
      if (this.messagesPending > 0 || performance.now() >= turnAtMs) break;
    }
    setImmediate(this.inlineBound);
  }

  /** Inline mode's wait by default: epoll_wait, then the rounds of what it found. */
  private epollPass(waitMs: number): number {
    const n = this.lib.rl_poll_wait(this.handle, waitMs);
    if (n < 0) {
      // epoll_wait itself failed: the data path cannot go on. Never spin on it silently.
      this.onError(new Error(`epoll_wait: ${errnoName(-n)}`));
      return -1;
    }
    // Sockets handled, not notices: a control message is no sign of traffic to come.
    const before = this.tokensHandled;
    if (n > 0) this.rounds();
    return this.tokensHandled - before;
  }

  /**
   * Inline mode with another wait in the loop (the io_uring plane: src/udp/uring_plane.ts):
   * `pass(waitMs)` waits at most waitMs and handles what it finds (this poller's own
   * sockets through pollNow()); it returns what it found (0: nothing), or -1 when it
   * failed (reported through onError). The loop, its timers, the notices and busy
   * polling stay this poller's.
   */
  startWith(pass: (waitMs: number) => number): void {
    assert(this.inline, "startWith needs inline mode");
    this.inlinePass = pass;
    this.start();
  }

  /** The earliest timer's due time, or `otherwise` when that is sooner. */
  private nextDueMs(otherwise: number): number {
    let due = otherwise;
    for (const t of this.timers) if (t.dueMs < due) due = t.dueMs;
    return due;
  }

  /** Runs the timers due at `now`; true when one ran. */
  private runTimers(now: number): boolean {
    // Every pass of the loop asks; nothing is allocated unless a timer is due.
    if (this.nextDueMs(Number.POSITIVE_INFINITY) > now) return false;
    let ran = false;
    // Index loop over a list a callback may change (after()/cancel): each timer is
    // looked at once per call; one added meanwhile waits for the next pass.
    const count = this.timers.length;
    const due: InlineTimer[] = [];
    for (let i = 0; i < count; i++) if (this.timers[i].dueMs <= now) due.push(this.timers[i]);
    for (const t of due) {
      const index = this.timers.indexOf(t);
      if (index < 0) continue; // cancelled by an earlier callback of this pass
      if (t.periodMs > 0) {
        // No catch-up burst after a long round: the next one is a period from now.
        t.dueMs = Math.max(t.dueMs + t.periodMs, now + 1);
      } else {
        this.timers.splice(index, 1);
      }
      ran = true;
      try {
        t.fn();
      } catch (err) {
        this.onError(err);
      }
      if (this.closed) return ran;
    }
    return ran;
  }

  /**
   * Runs fn every periodMs: inline, from the loop (no event-loop turn); threaded, on a
   * setInterval (the event loop runs between rounds there anyway).
   */
  every(periodMs: number, fn: () => void): CancelTimer {
    if (!this.inline) {
      const timer = setInterval(fn, periodMs);
      return () => clearInterval(timer);
    }
    return this.addTimer({ dueMs: performance.now() + periodMs, periodMs, fn });
  }

  /** Runs fn once, delayMs from now; inline from the loop, else a setTimeout. */
  after(delayMs: number, fn: () => void): CancelTimer {
    if (!this.inline) {
      const timer = setTimeout(fn, delayMs);
      return () => clearTimeout(timer);
    }
    return this.addTimer({ dueMs: performance.now() + delayMs, periodMs: 0, fn });
  }

  private addTimer(t: InlineTimer): CancelTimer {
    assert(this.timers.length < INLINE_TIMERS_MAX, "inline timers bounded");
    this.timers.push(t);
    return () => {
      const index = this.timers.indexOf(t);
      if (index >= 0) this.timers.splice(index, 1);
    };
  }

  /**
   * Inline mode, from another thread: a message for this poller's thread is on its way.
   * Call it BEFORE posting the message: the loop then turns its event loop until the
   * message was handled (messageHandled()), and the poller cannot have been stopped by a
   * message that was not posted yet. -errno when the poller is gone.
   */
  static notify(lib: RelayLib, handle: number): number {
    return lib.rl_poll_notify(handle);
  }

  /** The handle another thread passes to Poller.notify(). */
  get notifyHandle(): number {
    return this.handle;
  }

  /** Inline mode: a message announced by notify() was handled on this thread. */
  messageHandled(): void {
    if (this.messagesPending > 0) this.messagesPending--;
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
        if (this.ready[k] === NOTIFY_RING_TOKEN) {
          this.messagesPending += this.lib.rl_poll_notified(this.handle);
          continue;
        }
        this.tokensHandled++;
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
